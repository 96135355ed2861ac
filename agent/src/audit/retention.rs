//! Local retention of the audit log (SPEC §11): rotated files whose newest
//! record is older than `retention_days` are removed whole, oldest first,
//! and only once every `[audit] destinations` entry has confirmed them off
//! the host, and never while a legal hold is in force. The active file is
//! never removed. `{path}.retained` names the first file and seq kept (written
//! before the file goes, so a crash leaves a stray file, never a hole), and
//! each removal is an `audit.retention` record in the chain itself.

use super::files::{chain_with_first_seq, peek_last_line, Retained};
use super::log::AuditLog;
use super::record::{sha256_hex, AuditEntry, Record};
use anyhow::Context;
use std::path::Path;

/// The action of a retention record.
pub const RETENTION: &str = "audit.retention";

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files removed: (path, first seq, last seq).
    pub removed: Vec<(String, u64, u64)>,
    /// Why nothing (more) was removed, for humans.
    pub kept_because: Option<String>,
}

/// Remove what retention allows at `now` (unix seconds; blocking).
pub fn prune(
    log: &AuditLog,
    state_dir: &Path,
    destinations: &[String],
    retention_days: u32,
    now: i64,
) -> anyhow::Result<Pruned> {
    let mut out = Pruned::default();
    if destinations.is_empty() {
        out.kept_because =
            Some("no [audit] destinations: nothing is confirmed off the host".into());
        return Ok(out);
    }
    match crate::hold::current(state_dir) {
        Ok(None) => {}
        Ok(Some(h)) => {
            out.kept_because = Some(format!("a legal hold is in force ({})", h.reason));
            return Ok(out);
        }
        Err(e) => {
            out.kept_because = Some(format!("the legal hold cannot be read ({e:#}): holding"));
            return Ok(out);
        }
    }
    let confirmed = destinations
        .iter()
        .map(|d| super::offhost::progress(state_dir, d).seq)
        .min()
        .unwrap_or(0);
    let cutoff = now - i64::from(retention_days) * 86_400;
    let mut locked = log.lock()?;
    let files = log.files();
    let chain = chain_with_first_seq(files)?;
    let rotated: Vec<u64> = files.rotated_numbers()?;
    for (i, (path, first)) in chain.iter().enumerate() {
        let Some((_, next_first)) = chain.get(i + 1) else {
            break; // the newest file (usually the active one) stays
        };
        if *path == files.active {
            break;
        }
        let last = next_first - 1;
        if last > confirmed {
            out.kept_because = Some(format!(
                "{} (seq {first}..={last}) is not yet confirmed off the host (up to seq {confirmed})",
                path.display()
            ));
            break;
        }
        let line = peek_last_line(path)
            .with_context(|| format!("reading {}", path.display()))?
            .with_context(|| format!("{} holds no whole record", path.display()))?;
        let rec = Record::parse_canonical(&line)
            .map_err(|e| anyhow::anyhow!("{}: its last line is {e}", path.display()))?;
        let ts = chrono::DateTime::parse_from_rfc3339(&rec.ts)
            .map_err(|e| anyhow::anyhow!("{}: seq {} has a bad ts ({e})", path.display(), rec.seq))?
            .timestamp();
        if ts >= cutoff {
            out.kept_because = Some(format!(
                "{} (seq {first}..={last}) holds records younger than {retention_days} days",
                path.display()
            ));
            break;
        }
        let n = rotated
            .iter()
            .copied()
            .find(|n| files.rotated(*n) == *path)
            .with_context(|| format!("{} is not a rotated file", path.display()))?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let marker = Retained {
            first_file: n + 1,
            first_seq: last + 1,
        };
        crate::fsx::write_atomic(&files.retained(), &serde_json::to_vec(&marker)?, 0o640)?;
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        crate::fsx::sync_dir(crate::fsx::parent_of(path))?;
        locked.append(AuditEntry {
            actor: "agent".into(),
            action: RETENTION.into(),
            detail: serde_json::json!({
                "file": path, "first_seq": first, "last_seq": last,
                "sha256": sha256_hex(&bytes), "retention_days": retention_days,
                "confirmed_off_host": destinations,
            }),
            ..Default::default()
        })?;
        out.removed.push((path.display().to_string(), *first, last));
    }
    Ok(out)
}
