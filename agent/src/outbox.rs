//! The durable event outbox (a leaf: imports only `fsx` and `util`): events are appended (fsync) to `state_dir` before
//! a job is reported done, and removed only once the control plane took them.
//!
//! Owns: the file `state_dir/outbox.jsonl` (one event per line, append order =
//! delivery order), its lock, compaction and the size bound. Any process may
//! append (the daemon, CLI one-shots); only the daemon's pusher compacts.
//! Appenders and the compactor serialise on an exclusive `flock` of the file
//! itself. Compaction replaces the file by rename, so an appender that waited
//! on the lock re-checks after locking that it holds the file still at the
//! path (same inode) and re-opens otherwise: no event is ever written into a
//! replaced file.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
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

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compacted {
    /// The events still waiting, in order.
    pub pending: Vec<Event>,
    /// Delivered events removed.
    pub removed: usize,
    /// Undelivered events dropped to keep the bound (never a page).
    pub dropped: usize,
}

type Locked = nix::fcntl::Flock<std::fs::File>;

impl Outbox {
    /// The outbox of a state directory.
    pub fn new(state_dir: &Path) -> Self {
        Outbox {
            path: state_dir.join("outbox.jsonl"),
        }
    }

    /// Where the outbox lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open and lock the file at the path, re-opening while a compaction
    /// replaced it under us.
    fn lock(&self) -> anyhow::Result<Locked> {
        loop {
            let (file, _) = crate::fsx::open_append(&self.path, 0o600)
                .with_context(|| format!("opening the outbox {}", self.path.display()))?;
            let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking outbox {}: {e}", self.path.display()))?;
            let held = file.metadata()?.ino();
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() == held => return Ok(file),
                // Replaced (or removed) while we waited: take the new file.
                _ => continue,
            }
        }
    }

    /// Append one event from async code (the fsync runs on the blocking pool).
    pub async fn push_async(&self, ev: Event) -> anyhow::Result<()> {
        let outbox = self.clone();
        tokio::task::spawn_blocking(move || outbox.push(&ev)).await?
    }

    /// Append one event durably (blocking; any process may call it).
    pub fn push(&self, ev: &Event) -> anyhow::Result<()> {
        let mut file = self.lock()?;
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))
    }

    /// Events waiting, in order (skipping a torn last line).
    pub fn pending(&self) -> anyhow::Result<Vec<Event>> {
        match crate::fsx::open_read(&self.path).and_then(|mut f| {
            let mut b = Vec::new();
            f.read_to_end(&mut b).map(|_| b)
        }) {
            Ok(b) => Ok(parse(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Under the appenders' lock: remove the `delivered` events, drop what
    /// exceeds `max_events` (see [`select_drops`]), and return what is left.
    /// The file is rewritten (temp file, fsync, rename, fsync dir) only when
    /// something changed.
    pub fn compact(
        &self,
        delivered: &HashSet<String>,
        max_events: u64,
    ) -> anyhow::Result<Compacted> {
        let mut file = self.lock()?;
        let mut bytes = Vec::new();
        std::io::Read::by_ref(&mut *file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let all = parse(&bytes);
        let torn = bytes.last().is_some_and(|&b| b != b'\n');
        let mut kept: Vec<Event> = all
            .iter()
            .filter(|e| !delivered.contains(&e.id))
            .cloned()
            .collect();
        let removed = all.len() - kept.len();
        let meta: Vec<(bool, Severity)> = kept
            .iter()
            .map(|e| (e.kind == HEARTBEAT, e.severity))
            .collect();
        let drops = select_drops(&meta, usize::try_from(max_events).unwrap_or(usize::MAX));
        let dropped = drops.iter().filter(|d| **d).count();
        if dropped > 0 {
            let mut it = drops.iter();
            kept.retain(|_| !it.next().copied().unwrap_or(false));
            tracing::warn!(
                dropped,
                max_events,
                "event outbox over its bound: dropped the oldest heartbeats/low-severity events"
            );
        }
        if removed > 0 || dropped > 0 || torn {
            let mut out = Vec::with_capacity(bytes.len());
            for e in &kept {
                out.extend(serde_json::to_vec(e)?);
                out.push(b'\n');
            }
            // Rename while holding the lock on the old file: waiting appenders
            // notice the inode change and re-open (see `lock`).
            crate::fsx::write_atomic(&self.path, &out, 0o600)
                .with_context(|| format!("compacting {}", self.path.display()))?;
        }
        drop(file);
        Ok(Compacted {
            pending: kept,
            removed,
            dropped,
        })
    }
}

/// The `type` of heartbeat events, the first to go when the outbox is full.
pub const HEARTBEAT: &str = "heartbeat";

fn parse(b: &[u8]) -> Vec<Event> {
    b.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Which events to drop so that at most `max` remain: `events` is
/// (is_heartbeat, severity) in append order; the answer marks drops.
/// Oldest heartbeats go first, then the oldest other `info`, then the oldest
/// `warning`; a `page` is never dropped, even if the bound stays exceeded.
pub fn select_drops(events: &[(bool, Severity)], max: usize) -> Vec<bool> {
    let mut drop = vec![false; events.len()];
    let mut excess = events.len().saturating_sub(max);
    type Class<'a> = &'a dyn Fn(&(bool, Severity)) -> bool;
    let classes: [Class; 3] = [
        &|e| e.0 && e.1 != Severity::Page,
        &|e| !e.0 && e.1 == Severity::Info,
        &|e| !e.0 && e.1 == Severity::Warning,
    ];
    for class in classes {
        for (i, e) in events.iter().enumerate() {
            if excess == 0 {
                return drop;
            }
            if !drop[i] && class(e) {
                drop[i] = true;
                excess -= 1;
            }
        }
    }
    drop
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::*;

    const HB: (bool, Severity) = (true, Info);
    const INFO: (bool, Severity) = (false, Info);
    const WARN: (bool, Severity) = (false, Warning);
    const PAGE: (bool, Severity) = (false, Page);

    #[test]
    fn bound_drops_oldest_heartbeats_first_then_info_then_warning_never_pages() {
        type Row<'a> = (&'a [(bool, Severity)], usize, &'a [bool]);
        let table: &[Row] = &[
            (&[HB, INFO, HB], 3, &[false, false, false]),
            (&[HB, INFO, HB], 2, &[true, false, false]),
            (&[HB, INFO, HB], 1, &[true, false, true]),
            (&[INFO, HB, WARN, PAGE], 1, &[true, true, true, false]),
            (&[WARN, INFO, HB, WARN], 2, &[false, true, true, false]),
            (&[PAGE, PAGE, HB], 1, &[false, false, true]),
            (&[PAGE, PAGE], 0, &[false, false]),
            (&[], 0, &[]),
        ];
        for (events, max, want) in table {
            assert_eq!(
                select_drops(events, *max),
                want.to_vec(),
                "{events:?} max {max}"
            );
        }
    }

    fn ev(kind: &str, sev: Severity) -> Event {
        Event::new("h", kind, sev, serde_json::json!({}))
    }

    #[test]
    fn compaction_removes_delivered_keeps_order_and_later_appends_survive() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::new(d.path());
        let evs: Vec<Event> = (0..5).map(|_| ev("job.finished", Info)).collect();
        evs.iter().for_each(|e| ob.push(e).unwrap());
        let delivered: HashSet<String> = evs[..2].iter().map(|e| e.id.clone()).collect();
        let c = ob.compact(&delivered, 100).unwrap();
        assert_eq!(c.removed, 2);
        assert_eq!(c.pending, evs[2..].to_vec());
        let late = ev("luks.drift", Warning);
        ob.push(&late).unwrap();
        let mut want = evs[2..].to_vec();
        want.push(late);
        assert_eq!(ob.pending().unwrap(), want);
    }

    #[test]
    fn concurrent_appenders_lose_nothing_while_the_compactor_rewrites() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::new(d.path());
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let ob = ob.clone();
                std::thread::spawn(move || {
                    (0..150)
                        .map(|_| {
                            let e = ev("job.finished", Warning);
                            ob.push(&e).unwrap();
                            e.id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Deliver (remove) whatever is there, over and over, while they append.
        let mut delivered: HashSet<String> = HashSet::new();
        while !writers.iter().all(std::thread::JoinHandle::is_finished) {
            let now: HashSet<String> = ob.pending().unwrap().into_iter().map(|e| e.id).collect();
            ob.compact(&now, 1_000_000).unwrap();
            delivered.extend(now);
        }
        let pushed: Vec<String> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let left: HashSet<String> = ob.pending().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(pushed.len(), 600);
        for id in &pushed {
            assert!(
                delivered.contains(id) ^ left.contains(id),
                "event {id} lost or duplicated"
            );
        }
    }

    #[test]
    fn torn_last_line_is_cut_by_compaction_and_appends_stay_readable() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::new(d.path());
        let a = ev("job.finished", Info);
        ob.push(&a).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(ob.path())
            .unwrap();
        f.write_all(b"{\"id\":\"tor").unwrap();
        ob.compact(&HashSet::new(), 100).unwrap();
        let b = ev("job.finished", Page);
        ob.push(&b).unwrap();
        assert_eq!(ob.pending().unwrap(), vec![a, b]);
    }
}
