//! The durable event outbox: events are appended (fsync) to `state_dir` before
//! a job is reported done, and removed only once the control plane took them.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How urgent an event is. `Page` wakes on-call and is never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine (job succeeded, heartbeat, checkpoint).
    Info,
    /// Needs attention (job failed, drift).
    Warning,
    /// Wake someone (restore drill failed).
    Page,
}

/// One event for the control plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unique id (the control plane de-duplicates on it).
    pub id: String,
    /// RFC 3339 UTC.
    pub ts: String,
    /// The host.
    pub host_id: String,
    /// e.g. `job.finished`, `luks.drift`, `audit.checkpoint`, `heartbeat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Urgency.
    pub severity: Severity,
    /// Event-specific body.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event with a fresh id and the current time.
    pub fn new(host_id: &str, kind: &str, severity: Severity, data: serde_json::Value) -> Self {
        Event {
            id: crate::util::new_id(),
            ts: crate::util::now_rfc3339(),
            host_id: host_id.to_owned(),
            kind: kind.to_owned(),
            severity,
            data,
        }
    }
}

/// The outbox file in `state_dir`.
#[derive(Debug, Clone)]
pub struct Outbox {
    path: PathBuf,
}

impl Outbox {
    /// The outbox of a state directory.
    pub fn new(state_dir: &Path) -> Self {
        Outbox {
            path: state_dir.join("outbox.jsonl"),
        }
    }

    /// Append one event durably (blocking; any process may call it).
    pub fn push(&self, ev: &Event) -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("opening outbox {}", self.path.display()))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking outbox {}: {e}", self.path.display()))?;
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))
    }

    /// Events waiting, in order (skipping a torn last line).
    pub fn pending(&self) -> anyhow::Result<Vec<Event>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(b
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(|l| serde_json::from_slice(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }
}
