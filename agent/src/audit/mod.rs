//! The tamper-evident audit log (SPEC §7): one JSON object per line, each
//! carrying the SHA-256 of the previous line's exact bytes.
//!
//! Owns: the file format, appending (any process: the daemon and one-shot CLI
//! runs serialise on an exclusive `flock` of the log itself), and the chain.
//! Never: decides what is audited — the runner and the API hand records here.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// `prev_hash` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller hands to the log; `seq`, `ts` and `prev_hash` are added here.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Client certificate SAN, `schedule`, or `cli:<unix user>`.
    pub actor: String,
    /// Peer address for API requests.
    pub source_ip: Option<String>,
    /// HTTP method for API requests.
    pub method: Option<String>,
    /// Request path for API requests (job path for jobs).
    pub path: Option<String>,
    /// HTTP status for API requests.
    pub status: Option<u16>,
    /// `X-Request-Id` or a generated id; the job id for job records.
    pub request_id: Option<String>,
    /// HTTP User-Agent.
    pub user_agent: Option<String>,
    /// Time the action took.
    pub duration_ms: Option<u64>,
    /// Dotted action name, e.g. `job.start`, `backup.retention.delete`.
    pub action: String,
    /// Action-specific detail.
    pub detail: serde_json::Value,
}

/// One line of the log, in field order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// 1, 2, 3, … continuous across restarts and rotations.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub ts: String,
    /// See [`AuditEntry`].
    pub actor: String,
    /// See [`AuditEntry`].
    pub source_ip: Option<String>,
    /// See [`AuditEntry`].
    pub method: Option<String>,
    /// See [`AuditEntry`].
    pub path: Option<String>,
    /// See [`AuditEntry`].
    pub status: Option<u16>,
    /// See [`AuditEntry`].
    pub request_id: Option<String>,
    /// See [`AuditEntry`].
    pub user_agent: Option<String>,
    /// See [`AuditEntry`].
    pub duration_ms: Option<u64>,
    /// See [`AuditEntry`].
    pub action: String,
    /// See [`AuditEntry`].
    pub detail: serde_json::Value,
    /// Lowercase hex SHA-256 of the previous line's bytes (without newline).
    pub prev_hash: String,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The audit log at one path.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log described by the configuration.
    pub fn new(cfg: &crate::config::AuditConfig) -> Self {
        AuditLog {
            path: cfg.path.clone(),
        }
    }

    /// Append one record (blocking: call from `spawn_blocking` in async code).
    pub fn append(&self, entry: AuditEntry) -> anyhow::Result<u64> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
            .with_context(|| format!("opening audit log {}", self.path.display()))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking audit log {}: {e}", self.path.display()))?;
        let (seq, prev_hash) = match last_line(&mut file)? {
            None => (1, GENESIS.to_owned()),
            Some(line) => {
                let prev: Record = serde_json::from_slice(&line).with_context(|| {
                    format!(
                        "the last line of {} is not a whole audit record (torn write?)",
                        self.path.display()
                    )
                })?;
                (prev.seq + 1, sha256_hex(&line))
            }
        };
        let rec = Record {
            seq,
            ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            actor: entry.actor,
            source_ip: entry.source_ip,
            method: entry.method,
            path: entry.path,
            status: entry.status,
            request_id: entry.request_id,
            user_agent: entry.user_agent,
            duration_ms: entry.duration_ms,
            action: entry.action,
            detail: entry.detail,
            prev_hash,
        };
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        Ok(seq)
    }
}

/// The last line of a file (without its newline), or None when empty.
fn last_line(f: &mut std::fs::File) -> anyhow::Result<Option<Vec<u8>>> {
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let mut end = len;
    let mut tail = Vec::new();
    // Read backwards in blocks until the newline that starts the last line.
    loop {
        let start = end.saturating_sub(4096);
        let mut buf = vec![0; usize::try_from(end - start)?];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&tail);
        tail = buf;
        let body = if tail.last() == Some(&b'\n') && start + (tail.len() as u64) == len {
            &tail[..tail.len() - 1]
        } else {
            &tail[..]
        };
        if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(body[i + 1..].to_vec()));
        }
        if start == 0 {
            return Ok(Some(body.to_vec()));
        }
        end = start;
    }
}

/// Start the daemon task that seals the head in signed checkpoints
/// every `checkpoint_interval_seconds` (not built yet).
pub fn start_checkpointer(_runner: std::sync::Arc<crate::runner::Runner>) {}

/// `audit verify` (not built yet: exit 2).
pub fn cli_verify(_config: Option<PathBuf>) -> u8 {
    eprintln!("cloudnx-agent: audit verify is not built yet");
    crate::cli::EXIT_USAGE
}

/// `audit public-key` (not built yet: exit 2).
pub fn cli_public_key(_config: Option<PathBuf>) -> u8 {
    eprintln!("cloudnx-agent: audit public-key is not built yet");
    crate::cli::EXIT_USAGE
}
