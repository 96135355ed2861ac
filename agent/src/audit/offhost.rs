//! The copy of the audit log off the host (SPEC §11): sealed segments, the
//! checkpoint lines and every signing public key, shipped in order to each
//! `[audit] destinations` entry under
//! `{prefix}/audit/{host_id}/{segments,checkpoints,keys}/`, and the
//! verification of that copy alone and of the local log against it.
//!
//! Shipping is outbox-like without a second copy of the data: the local log
//! and its checkpoints file are the queue, and `state_dir/audit-offhost/{name}.json`
//! records per destination the last checkpoint confirmed there. A pass ships
//! every newer checkpoint in order (its key, then the segment it seals, then
//! the checkpoint line) and moves the mark after each one, so a destination
//! down for a day resumes where it stopped. Objects are written with
//! `put_new` (never over an object; S3 Object Lock applies where the
//! destination locks); an object already there with the same bytes counts as
//! shipped (a pass cut short), with other bytes it is an error, never overwritten.
//! Shipping reads the log without the writers' lock (it only reads sealed
//! records), so it never blocks an append.

use super::checkpoint::Checkpoint;
use super::files::{chain_with_first_seq, read_lines, LogFiles};
use super::record::{sha256_hex, Head};
use super::verify::{self, Keys, Problem, Report};
use crate::store::{Cause, Destination};
use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most checkpoints one pass ships before it writes its progress and
/// reads the next batch (bounds the memory of a long catch-up).
const BATCH: usize = 256;

/// The largest segment or checkpoint object read back.
const OBJECT_LIMIT: u64 = 1 << 30;

/// One destination the log is shipped to.
#[derive(Clone)]
pub struct Target {
    /// The configured destination name.
    pub name: String,
    /// Its key prefix (may be empty).
    pub prefix: String,
    /// The opened destination.
    pub store: Arc<dyn Destination>,
}

/// `{prefix}/audit/{host_id}/`.
pub fn base(prefix: &str, host_id: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        format!("audit/{host_id}/")
    } else {
        format!("{p}/audit/{host_id}/")
    }
}

/// The object holding records `first..=last`.
pub fn segment_key(base: &str, first: u64, last: u64) -> String {
    format!("{base}segments/{first:020}-{last:020}.jsonl")
}

/// The object holding the checkpoint of `seq`.
pub fn checkpoint_key(base: &str, seq: u64) -> String {
    format!("{base}checkpoints/{seq:020}.json")
}

/// The object holding the public key `kid`.
pub fn key_key(base: &str, kid: &str) -> String {
    format!("{base}keys/{kid}.pem")
}

/// What one destination has confirmed (`state_dir/audit-offhost/{name}.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The newest checkpoint seq confirmed off the host (0: none).
    pub seq: u64,
    /// Its `ts`.
    #[serde(default)]
    pub ts: Option<String>,
    /// Public keys confirmed there.
    #[serde(default)]
    pub keys: BTreeSet<String>,
}

/// Where a destination's progress is kept.
pub fn progress_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("audit-offhost").join(format!("{name}.json"))
}

/// The progress of destination `name` (nothing confirmed when absent).
pub fn progress(state_dir: &Path, name: &str) -> Progress {
    crate::fsx::read_json_or_default(&progress_path(state_dir, name))
}

/// What a pass did for one destination.
#[derive(Debug, Clone, Default)]
pub struct Shipped {
    /// Checkpoints (with their segments) shipped by this pass.
    pub checkpoints: u64,
    /// The progress after the pass.
    pub progress: Progress,
    /// The `ts` of the oldest local checkpoint not yet confirmed there.
    pub oldest_pending_ts: Option<String>,
}

/// The lag of SPEC §11 at `now` (unix seconds): 0 when every local checkpoint
/// is confirmed off the host; otherwise the age of the newest confirmed
/// checkpoint (of the oldest pending one when none is confirmed yet).
pub fn lag_seconds(s: &Shipped, now: i64) -> f64 {
    let Some(pending) = &s.oldest_pending_ts else {
        return 0.0;
    };
    let ts = s.progress.ts.as_deref().unwrap_or(pending);
    chrono::DateTime::parse_from_rfc3339(ts).map_or(0.0, |t| (now - t.timestamp()).max(0) as f64)
}

/// Where destination `name` stands without shipping anything: its progress
/// and the oldest local checkpoint it has not confirmed (blocking).
pub fn standing(files: &LogFiles, state_dir: &Path, name: &str) -> anyhow::Result<Shipped> {
    let progress = progress(state_dir, name);
    let oldest_pending_ts = read_checkpoints(files)?
        .into_iter()
        .find(|(c, _)| c.seq > progress.seq)
        .map(|(c, _)| c.ts);
    Ok(Shipped {
        checkpoints: 0,
        progress,
        oldest_pending_ts,
    })
}

/// The local checkpoints, parsed, with their exact line bytes.
pub fn read_checkpoints(files: &LogFiles) -> anyhow::Result<Vec<(Checkpoint, Vec<u8>)>> {
    let path = files.checkpoints();
    let f = match crate::fsx::open_read(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        // A torn last write has no newline; split() yields it too, so parse
        // failures of the very last piece are skipped by the caller's order check.
        match serde_json::from_slice::<Checkpoint>(&line) {
            Ok(c) => out.push((c, line)),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Write `body` at `key` unless it is there; the same bytes already there
/// count as written, other bytes are an error (never overwritten).
async fn put_once(store: &dyn Destination, key: &str, body: Bytes) -> anyhow::Result<()> {
    match store.put_new(key, body.clone()).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.cause(), Cause::Exists { .. }) => {
            let there = store
                .get(key, body.len() as u64 + 1)
                .await
                .with_context(|| format!("{}: reading back {key}", store.name()))?;
            if there == body {
                Ok(())
            } else {
                anyhow::bail!(
                    "{}: {key} already exists with other bytes (sha256 {} there, {} here): \
                     the off-host copy and the local log disagree; run `cloudnx-agent audit verify --destination {}`",
                    store.name(),
                    sha256_hex(&there),
                    sha256_hex(&body),
                    store.name()
                )
            }
        }
        Err(e) => Err(anyhow::Error::new(e))
            .with_context(|| format!("shipping the audit log to {}", store.name())),
    }
}

/// Ship every local checkpoint newer than the destination's progress, in
/// order. Only one pass per state_dir at a time (`audit-offhost/.lock`);
/// `Ok(None)` when another pass holds it.
pub async fn ship(
    files: &LogFiles,
    host_id: &str,
    state_dir: &Path,
    t: &Target,
) -> anyhow::Result<Option<Shipped>> {
    let dir = state_dir.join("audit-offhost");
    crate::fsx::ensure_private_dir(&dir)?;
    let lock_path = dir.join(format!("{}.lock", t.name));
    let (lock_file, _) = crate::fsx::open_append(&lock_path, 0o600)?;
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()))
            }
        };
    let base = base(&t.prefix, host_id);
    let mut prog = progress(state_dir, &t.name);
    let mut shipped = 0u64;
    loop {
        let (files2, seq) = (files.clone(), prog.seq);
        let (batch, lines, keys) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let all = read_checkpoints(&files2)?;
            let batch: Vec<(Checkpoint, Vec<u8>)> = all
                .into_iter()
                .filter(|(c, _)| c.seq > seq)
                .take(BATCH)
                .collect();
            let lines = match batch.last() {
                Some((c, _)) => read_lines(&files2, seq + 1, c.seq)?,
                None => vec![],
            };
            let keys = super::key::published(&files2.keys_dir())?;
            Ok((batch, lines, keys))
        })
        .await
        .context("reading the audit log to ship")??;
        if batch.is_empty() {
            break;
        }
        let mut lines = lines.into_iter();
        for (cp, line) in batch {
            let kid = match &cp.kid {
                Some(k) => Some(k.clone()),
                None if keys.len() == 1 => keys.keys().next().cloned(),
                None => None,
            };
            if let Some(kid) = kid.filter(|k| !prog.keys.contains(k)) {
                let vk = keys.get(&kid).with_context(|| {
                    format!(
                        "the public key {kid} that signed checkpoint seq {} is not in {}",
                        cp.seq,
                        files.keys_dir().display()
                    )
                })?;
                let pem = super::key::public_pem(vk)?;
                put_once(&*t.store, &key_key(&base, &kid), Bytes::from(pem)).await?;
                prog.keys.insert(kid);
            }
            let n = usize::try_from(cp.seq - prog.seq).unwrap_or(usize::MAX);
            let seg: Vec<u8> = lines.by_ref().take(n).flatten().collect();
            let head = seg[..seg.len().saturating_sub(1)]
                .rsplit(|b| *b == b'\n')
                .next()
                .map(sha256_hex);
            if head.as_deref() != Some(cp.hash.as_str()) {
                anyhow::bail!(
                    "the local record seq {} does not have the hash its checkpoint sealed: \
                     the local log was changed; run `cloudnx-agent audit verify`",
                    cp.seq
                );
            }
            put_once(
                &*t.store,
                &segment_key(&base, prog.seq + 1, cp.seq),
                Bytes::from(seg),
            )
            .await?;
            let mut body = line;
            body.push(b'\n');
            put_once(&*t.store, &checkpoint_key(&base, cp.seq), Bytes::from(body)).await?;
            prog.seq = cp.seq;
            prog.ts = Some(cp.ts.clone());
            shipped += 1;
            crate::fsx::write_json_private(&progress_path(state_dir, &t.name), &prog)?;
        }
    }
    let (files2, state2, name) = (files.clone(), state_dir.to_owned(), t.name.clone());
    let mut s = tokio::task::spawn_blocking(move || standing(&files2, &state2, &name))
        .await
        .context("reading the audit checkpoints")??;
    s.checkpoints = shipped;
    Ok(Some(s))
}

/// What `audit verify --destination` found.
#[derive(Debug, Clone, Default)]
pub struct OffhostReport {
    /// The off-host copy verified as a log of its own.
    pub copy: Report,
    /// Segments read.
    pub segments: u64,
    /// Keys published there.
    pub keys: Vec<String>,
    /// The newest off-host checkpoint.
    pub offhost_head: Option<Head>,
    /// The local log's head, when it was compared.
    pub local_head: Option<Head>,
    /// The first problem (of the copy, or of the local log against it).
    pub problem: Option<Problem>,
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".jsonl")?.split_once('-')?;
    (a.len() == 20 && b.len() == 20).then_some(())?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn parse_seq_name(name: &str, ext: &str) -> Option<u64> {
    let s = name.strip_suffix(ext)?;
    (s.len() == 20).then_some(())?;
    s.parse().ok()
}

/// Download the copy of `host_id` into `work` (a private scratch dir) as a
/// log of its own (`work/log`, `.checkpoints`, `.keys/`), verify it, and
/// compare `local` (when given) against it.
pub async fn verify_offhost(
    t: &Target,
    host_id: &str,
    local: Option<&LogFiles>,
    work: &Path,
) -> anyhow::Result<OffhostReport> {
    let base = base(&t.prefix, host_id);
    let listed = t
        .store
        .list(&base)
        .await
        .with_context(|| format!("listing {base} on {}", t.name))?;
    let mut segs = Vec::new();
    let mut cps = Vec::new();
    let mut keys = Vec::new();
    for o in listed {
        let rel = &o.key[base.len()..];
        if let Some(n) = rel.strip_prefix("segments/") {
            match parse_segment_name(n) {
                Some(r) => segs.push((r, o.key.clone())),
                None => anyhow::bail!(
                    "{}: {} is not a segment name ({{first:020}}-{{last:020}}.jsonl)",
                    t.name,
                    o.key
                ),
            }
        } else if let Some(n) = rel.strip_prefix("checkpoints/") {
            match parse_seq_name(n, ".json") {
                Some(s) => cps.push((s, o.key.clone())),
                None => anyhow::bail!(
                    "{}: {} is not a checkpoint name ({{seq:020}}.json)",
                    t.name,
                    o.key
                ),
            }
        } else if let Some(n) = rel
            .strip_prefix("keys/")
            .and_then(|n| n.strip_suffix(".pem"))
        {
            keys.push((n.to_owned(), o.key.clone()));
        }
    }
    segs.sort();
    cps.sort();
    let files = LogFiles::new(&work.join("log"));
    let keys_dir = files.keys_dir();
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;
    let mut report = OffhostReport::default();
    for (kid, key) in &keys {
        let pem = t
            .store
            .get(key, 64 << 10)
            .await
            .with_context(|| format!("reading {key} on {}", t.name))?;
        std::fs::write(keys_dir.join(format!("{kid}.pem")), &pem)?;
        report.keys.push(kid.clone());
    }
    let mut log = std::fs::File::create(&files.active)?;
    let mut next = 1u64;
    for ((first, last), key) in &segs {
        if *first != next || last < first {
            report.problem = Some(Problem {
                seq: next,
                what: format!(
                    "{}: the off-host copy has segment {key} where records from seq {next} belong: \
                     records {next}..={} are missing off the host",
                    t.name,
                    first.saturating_sub(1).max(next)
                ),
            });
            return Ok(report);
        }
        let body = t
            .store
            .get(key, OBJECT_LIMIT)
            .await
            .with_context(|| format!("reading {key} on {}", t.name))?;
        let count = body.iter().filter(|b| **b == b'\n').count() as u64;
        if count != last - first + 1 || body.last() != Some(&b'\n') {
            report.problem = Some(Problem {
                seq: *first,
                what: format!(
                    "{}: segment {key} holds {count} whole lines, not the {} its name says (cut or padded)",
                    t.name,
                    last - first + 1
                ),
            });
            return Ok(report);
        }
        log.write_all(&body)?;
        next = last + 1;
        report.segments += 1;
    }
    log.sync_all()?;
    let mut cpf = std::fs::File::create(files.checkpoints())?;
    for (seq, key) in &cps {
        let body = t
            .store
            .get(key, 64 << 10)
            .await
            .with_context(|| format!("reading {key} on {}", t.name))?;
        let cp: Checkpoint = serde_json::from_slice(body.strip_suffix(b"\n").unwrap_or(&body))
            .map_err(|e| anyhow::anyhow!("{}: {key} is not a checkpoint ({e})", t.name))?;
        if cp.seq != *seq {
            report.problem = Some(Problem {
                seq: *seq,
                what: format!(
                    "{}: {key} holds the checkpoint of seq {}, not {seq}",
                    t.name, cp.seq
                ),
            });
            return Ok(report);
        }
        cpf.write_all(&body)?;
        if body.last() != Some(&b'\n') {
            cpf.write_all(b"\n")?;
        }
        report.offhost_head = Some(Head {
            seq: cp.seq,
            hash: cp.hash,
        });
    }
    cpf.sync_all()?;
    drop((log, cpf));
    let vkeys = Keys::local(&files, None)?;
    let host = host_id.to_owned();
    let f2 = files.clone();
    report.copy = tokio::task::spawn_blocking(move || verify::verify(&f2, &host, &vkeys))
        .await
        .context("verifying the off-host copy")??;
    if let Some(p) = &report.copy.problem {
        report.problem = Some(Problem {
            seq: p.seq,
            what: format!(
                "{}: the off-host copy: {}",
                t.name,
                p.what.replace(&*work.to_string_lossy(), "")
            ),
        });
        return Ok(report);
    }
    let Some(local) = local else {
        return Ok(report);
    };
    let (local, copy) = (local.clone(), files.active.clone());
    let head = report.offhost_head.clone();
    let (local_head, problem) =
        tokio::task::spawn_blocking(move || compare(&local, &copy, head.as_ref()))
            .await
            .context("comparing the local log")??;
    report.local_head = local_head;
    report.problem = problem;
    Ok(report)
}

/// Compare the local log with the off-host copy's lines (the file `copy`):
/// every record both hold must be the same bytes, and the local log must
/// reach the newest off-host checkpoint.
pub fn compare(
    local: &LogFiles,
    copy: &Path,
    offhost_head: Option<&Head>,
) -> anyhow::Result<(Option<Head>, Option<Problem>)> {
    let mut theirs = BufReader::new(std::fs::File::open(copy)?);
    let mut their_seq = 0u64;
    let mut their = Vec::new();
    let mut differ: Option<(u64, u64)> = None;
    let mut head: Option<Head> = None;
    for (path, first) in chain_with_first_seq(local)? {
        let mut r = BufReader::new(crate::fsx::open_read(&path)?);
        let mut seq = first;
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                break;
            }
            while their_seq < seq {
                their.clear();
                if theirs.read_until(b'\n', &mut their)? == 0 {
                    their.clear();
                    their_seq = u64::MAX;
                    break;
                }
                their_seq += 1;
            }
            if their_seq == seq && their != line {
                differ = Some(differ.map_or((seq, seq), |(a, _)| (a, seq)));
            }
            head = Some(Head {
                seq,
                hash: sha256_hex(&line[..line.len() - 1]),
            });
            seq += 1;
        }
    }
    let _ = theirs.read_to_end(&mut Vec::new());
    if let Some((a, b)) = differ {
        return Ok((
            head,
            Some(Problem {
                seq: a,
                what: format!(
                    "the local log differs from the off-host copy at records {a}..={b}: the local log was rewritten"
                ),
            }),
        ));
    }
    if let Some(off) = offhost_head {
        let have = head.as_ref().map_or(0, |h| h.seq);
        if have < off.seq {
            return Ok((
                head,
                Some(Problem {
                    seq: have + 1,
                    what: format!(
                        "the local log ends at seq {have} but the off-host copy holds signed records up to seq {}: \
                         records {}..={} were removed locally (truncated)",
                        off.seq,
                        have + 1,
                        off.seq
                    ),
                }),
            ));
        }
    }
    Ok((head, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_follow_the_spec_layout() {
        let b = base("pfx/", "h1");
        assert_eq!(b, "pfx/audit/h1/");
        assert_eq!(base("", "h1"), "audit/h1/");
        assert_eq!(
            segment_key(&b, 1, 42),
            "pfx/audit/h1/segments/00000000000000000001-00000000000000000042.jsonl"
        );
        assert_eq!(
            checkpoint_key(&b, 42),
            "pfx/audit/h1/checkpoints/00000000000000000042.json"
        );
        assert_eq!(key_key(&b, "abcd"), "pfx/audit/h1/keys/abcd.pem");
        assert_eq!(
            parse_segment_name("00000000000000000001-00000000000000000042.jsonl"),
            Some((1, 42))
        );
        assert_eq!(parse_segment_name("1-42.jsonl"), None);
        assert_eq!(
            parse_seq_name("00000000000000000042.json", ".json"),
            Some(42)
        );
    }

    #[test]
    fn lag_is_zero_when_all_is_off_the_host_else_the_age_of_the_newest_confirmed() {
        let mut s = Shipped::default();
        assert_eq!(lag_seconds(&s, 1000), 0.0);
        s.oldest_pending_ts = Some("1970-01-01T00:10:00Z".into());
        assert_eq!(lag_seconds(&s, 1000), 400.0);
        s.progress.ts = Some("1970-01-01T00:05:00Z".into());
        assert_eq!(lag_seconds(&s, 1000), 700.0);
    }
}
