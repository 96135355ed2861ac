//! VM backup retention on every destination (SPEC §12, §10): per guest the
//! rules of database backups ([`crate::jobs::backup::retention::plan`]: the
//! newest `keep_min` complete backups always kept, complete ones older than
//! `retention_days` deleted once this run's backup of the guest reached the
//! destination, incomplete leftovers of this agent cleaned), Object Lock
//! respected (a refused delete keeps the backup), the legal hold (nothing
//! deleted, what would go reported), and retired guests: a guest no longer
//! on this node — judged only from a successful guest listing on a run over
//! every guest — is kept `retention_days` after its newest backup, then
//! deleted whole, audited, and its series leave the metrics file.

use super::manifest::{self, MANIFEST};
use crate::jobs::backup::retention::{parse_stamp, plan, Found, Verdict};
use crate::jobs::context::JobContext;
use crate::store::{Deleted, Destination};
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What retention works with.
pub struct Env<'a> {
    /// The job (audit, cancellation, state_dir).
    pub ctx: &'a JobContext,
    /// The destinations.
    pub dests: &'a [Arc<dyn Destination>],
    /// Their prefixes by name.
    pub prefixes: &'a BTreeMap<String, String>,
    /// This agent instance's writer id.
    pub writer: &'a str,
    /// `[vm_backup] retention_days`.
    pub retention_days: u32,
    /// `[vm_backup] keep_min`.
    pub keep_min: u32,
}

impl Env<'_> {
    fn prefix(&self, dest: &str) -> &str {
        self.prefixes.get(dest).map_or("", String::as_str)
    }
}

/// A guest this run backed up (or tried to).
pub struct ThisRun<'a> {
    /// Guest id.
    pub vmid: u32,
    /// The stamp it wrote under, if it got that far.
    pub stamp: Option<&'a str>,
    /// Destinations that have this run's backup (object and manifest).
    pub reached: Vec<&'a str>,
}

/// How long an incomplete backup of another writer is left alone (an upload in flight).
const FOREIGN_GRACE_HOURS: i64 = 24;

/// What retention did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Complete backups kept, per (vmid, destination).
    pub retained: BTreeMap<(u32, String), usize>,
    /// Deleted backups (one entry per stamp).
    pub deleted: Vec<Value>,
    /// Backups the legal hold kept that would have been deleted.
    pub held: Vec<Value>,
    /// Retired guests whose every backup is gone from every destination.
    pub retired: Vec<u32>,
    /// Retention errors (fail the job).
    pub errors: Vec<String>,
}

/// Stamps of one guest on one destination: stamp → (complete, keys).
type Stamps = BTreeMap<String, (bool, Vec<String>)>;

/// What a retired guest's backups should become, given its newest complete stamp.
pub fn retired_expired(
    stamps: &[Found],
    now: chrono::DateTime<chrono::Utc>,
    retention_days: u32,
) -> bool {
    let newest = stamps
        .iter()
        .filter(|f| f.complete)
        .filter_map(|f| parse_stamp(&f.stamp))
        .max();
    match newest {
        Some(t) => t + chrono::Duration::days(i64::from(retention_days)) < now,
        // Only leftovers: gone once old enough.
        None => stamps
            .iter()
            .filter_map(|f| parse_stamp(&f.stamp))
            .all(|t| t + chrono::Duration::days(i64::from(retention_days)) < now),
    }
}

/// Apply retention after the guests of this run. `on_node`: the guests this
/// node owns (None when the run did not look at every guest: no retirement).
pub async fn apply(run: &Env<'_>, reports: &[ThisRun<'_>], on_node: Option<&[u32]>) -> Summary {
    let mut s = Summary::default();
    let held = match crate::hold::current(&run.ctx.config.state_dir) {
        Ok(None) => None,
        Ok(Some(h)) => Some(h.reason),
        Err(e) => Some(format!("{e:#}")),
    };
    let now = chrono::Utc::now();
    let mut retired_everywhere: BTreeMap<u32, bool> = BTreeMap::new();
    for d in run.dests {
        if run.ctx.cancel.is_cancelled() {
            break;
        }
        let root = manifest::vm_root(run.prefix(d.name()));
        let objects = match d.list(&root).await {
            Ok(o) => o,
            Err(e) => {
                s.errors
                    .push(format!("retention on {}: listing {root}: {e}", d.name()));
                continue;
            }
        };
        let mut guests: BTreeMap<u32, Stamps> = BTreeMap::new();
        for o in objects {
            let Some(rest) = o.key.strip_prefix(&root) else {
                continue;
            };
            let mut it = rest.splitn(3, '/');
            let (Some(vmid), Some(stamp), Some(file)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Ok(vmid) = vmid.parse::<u32>() else {
                continue;
            };
            let e = guests
                .entry(vmid)
                .or_default()
                .entry(stamp.to_owned())
                .or_default();
            if file == MANIFEST {
                e.0 = true;
            }
            e.1.push(o.key.clone());
        }
        for (vmid, stamps) in guests {
            let report = reports.iter().find(|r| r.vmid == vmid);
            let retired = on_node.is_some_and(|n| !n.contains(&vmid)) && report.is_none();
            let found: Vec<Found> = stamps
                .iter()
                .map(|(st, (c, _))| Found {
                    stamp: st.clone(),
                    complete: *c,
                })
                .collect();
            let mut doomed: Vec<(String, &'static str)> = Vec::new();
            if retired {
                if retired_expired(&found, now, run.retention_days) {
                    doomed.extend(found.iter().map(|f| (f.stamp.clone(), "retired")));
                }
            } else {
                let current = report.and_then(|r| r.stamp);
                let succeeded = report.is_some_and(|r| r.reached.contains(&d.name()));
                let verdicts = plan(&found, now, run.retention_days, run.keep_min, current);
                for (f, v) in found.iter().zip(verdicts) {
                    match v {
                        Verdict::DeleteExpired if succeeded => {
                            doomed.push((f.stamp.clone(), "expired"))
                        }
                        Verdict::CleanIncomplete => {
                            let old = parse_stamp(&f.stamp).is_some_and(|t| {
                                t < now - chrono::Duration::hours(FOREIGN_GRACE_HOURS)
                            });
                            let dir = manifest::stamp_dir(run.prefix(d.name()), vmid, &f.stamp);
                            let ours = matches!(d.writer(&dir).await, Ok(Some(w)) if w.split_whitespace().next() == Some(run.writer));
                            if old || ours {
                                doomed.push((f.stamp.clone(), "incomplete"));
                            }
                        }
                        _ => {}
                    }
                }
            }
            let mut remaining: BTreeSet<String> = stamps
                .iter()
                .filter(|(_, (c, _))| *c)
                .map(|(st, _)| st.clone())
                .collect();
            let mut all_gone = true;
            for (stamp, reason) in &doomed {
                let keys = &stamps[stamp].1;
                let detail = json!({"destination": d.name(), "vmid": vmid, "stamp": stamp, "reason": reason});
                if let Some(why) = &held {
                    let mut h = detail.clone();
                    h["held"] = json!(why);
                    s.held.push(h);
                    all_gone = false;
                    continue;
                }
                match delete_stamp(run, d.as_ref(), keys, &detail).await {
                    Ok(true) => {
                        remaining.remove(stamp);
                        s.deleted.push(detail);
                    }
                    Ok(false) => all_gone = false,
                    Err(e) => {
                        all_gone = false;
                        s.errors
                            .push(format!("retention of guest {vmid} on {}: {e:#}", d.name()));
                    }
                }
            }
            if retired {
                let gone = all_gone && doomed.len() == stamps.len();
                let e = retired_everywhere.entry(vmid).or_insert(true);
                *e = *e && gone;
                if !gone {
                    s.retained
                        .insert((vmid, d.name().to_owned()), remaining.len());
                }
            } else {
                s.retained
                    .insert((vmid, d.name().to_owned()), remaining.len());
            }
        }
    }
    s.retired = retired_everywhere
        .into_iter()
        .filter(|(_, g)| *g)
        .map(|(v, _)| v)
        .collect();
    s
}

/// Delete one backup, manifest first (a run killed half-way leaves an
/// incomplete leftover, never a manifest without its object); every
/// deletion audited as it happens. Ok(false): Object Lock refused, kept.
async fn delete_stamp(
    run: &Env<'_>,
    d: &dyn Destination,
    keys: &[String],
    detail: &Value,
) -> anyhow::Result<bool> {
    for key in crate::jobs::backup::retention::deletion_order(keys, MANIFEST) {
        match d.delete(key).await? {
            Deleted::Locked => {
                tracing::info!(destination = d.name(), key, "kept: under object lock");
                return Ok(false);
            }
            Deleted::Deleted => {
                let mut a = detail.clone();
                a["key"] = json!(key);
                run.ctx
                    .audit("vm_backup.retention.delete", a)
                    .await
                    .context("auditing a retention deletion")?;
            }
            Deleted::Absent => {}
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn vm_backup_a_retired_guest_is_kept_retention_days_after_its_newest_backup() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 20, 0, 0, 0).unwrap();
        let f = |s: &str, c: bool| Found {
            stamp: s.into(),
            complete: c,
        };
        let found = vec![f("20261101T030000Z", true), f("20261210T030000Z", true)];
        assert!(!retired_expired(&found, now, 14), "newest is 10 days old");
        assert!(retired_expired(&found, now, 7));
        // An incomplete newer leftover does not extend the stay.
        let found = vec![f("20261101T030000Z", true), f("20261219T030000Z", false)];
        assert!(retired_expired(&found, now, 14));
    }
}
