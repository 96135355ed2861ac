//! The snapshot duty's decisions, free of I/O: which guests, what name, what a
//! task's exit status means, which of our snapshots to prune. Table-tested.

use crate::pve::{ClusterGuest, GuestType, SnapshotEntry};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// First word of the line that marks a snapshot as ours in its description.
pub const MARK: &str = "cloudnx-agent:";

/// A guest this node's agent snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Guest id.
    pub vmid: u32,
    /// VM or container.
    pub guest_type: GuestType,
    /// Display name, when known.
    pub name: Option<String>,
}

/// A guest deliberately not snapshotted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// Guest id.
    pub vmid: u32,
    /// Why, in words.
    pub reason: String,
}

/// What to snapshot this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Guests to snapshot, by VMID.
    pub targets: Vec<Target>,
    /// Guests on purpose left alone (templates, excluded, owned by another node).
    pub skipped: Vec<Skip>,
    /// Included VMIDs the API does not show (no such guest, or no VM.Audit for the token).
    pub not_visible: Vec<u32>,
}

/// Choose the guests of `node`: all of them (or `include`), minus `exclude`,
/// minus templates. Ownership comes from `/cluster/resources`, so a guest that
/// migrated away is left to its new node's agent and one that arrived is taken.
pub fn select(guests: &[ClusterGuest], node: &str, include: &[u32], exclude: &[u32]) -> Selection {
    let mut sorted: Vec<&ClusterGuest> = guests.iter().collect();
    sorted.sort_by_key(|g| g.vmid);
    let mut sel = Selection::default();
    for g in sorted {
        let included = include.contains(&g.vmid);
        if !include.is_empty() && !included {
            continue;
        }
        if g.node != node {
            // Only worth a word when the operator named this guest.
            if included {
                sel.skipped.push(Skip {
                    vmid: g.vmid,
                    reason: format!("owned by node {} (its agent snapshots it)", g.node),
                });
            }
            continue;
        }
        if exclude.contains(&g.vmid) {
            sel.skipped.push(Skip {
                vmid: g.vmid,
                reason: "excluded by configuration".into(),
            });
        } else if g.template {
            sel.skipped.push(Skip {
                vmid: g.vmid,
                reason: "template (cannot be snapshotted)".into(),
            });
        } else {
            sel.targets.push(Target {
                vmid: g.vmid,
                guest_type: g.guest_type,
                name: g.name.clone(),
            });
        }
    }
    let mut missing: Vec<u32> = include
        .iter()
        .copied()
        .filter(|id| !guests.iter().any(|g| g.vmid == *id) && !exclude.contains(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    sel.not_visible = missing;
    sel
}

/// `{prefix}-YYYYMMDDhhmmss` (UTC).
pub fn snapshot_name(prefix: &str, at: DateTime<Utc>) -> String {
    format!("{prefix}-{}", at.format("%Y%m%d%H%M%S"))
}

/// Whether Proxmox accepts `name` as a snapshot name: `^[a-z][a-z0-9_-]{1,39}$`.
pub fn valid_snapshot_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=40).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && name != "current"
        && name != "pending"
}

/// The description of a snapshot we take: the mark line first, then words for humans.
pub fn description(host_id: &str, job_id: &str, retention_days: u32) -> String {
    format!(
        "{MARK} host={host_id} job={job_id}\nTaken by cloudnx-agent; pruned automatically after {retention_days} days."
    )
}

/// Ours = our name pattern (`{prefix}-` + 14 digits) AND our mark line in the
/// description. Either alone is not enough: a human may use the same prefix,
/// or copy a description. The host is not part of the test, so a guest that
/// migrated keeps being pruned by its new node's agent.
pub fn is_ours(s: &SnapshotEntry, prefix: &str) -> bool {
    let stamp_ok = s
        .name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| r.len() == 14 && r.bytes().all(|c| c.is_ascii_digit()));
    let marked = s
        .description
        .lines()
        .any(|l| l.trim_start().starts_with(&format!("{MARK} host=")));
    stamp_ok && marked && !s.is_current()
}

/// A snapshot a create or delete left half-done (`snapstate` prepare/delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// Snapshot name.
    pub name: String,
    /// `prepare` or `delete`.
    pub snapstate: String,
    /// Whether it is one of ours.
    pub ours: bool,
}

/// What retention decided for one guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Our snapshots to delete, oldest first.
    pub delete: Vec<String>,
    /// Our snapshots kept.
    pub keep: Vec<String>,
    /// Snapshots not ours: never touched.
    pub foreign: Vec<String>,
    /// Half-done snapshots (never deleted by us; reported for a human).
    pub leftovers: Vec<Leftover>,
}

/// Prune our own complete snapshots older than `retention_days`, always keeping
/// the newest `keep_min` (at least 1) of ours whatever their age.
pub fn retention(
    snaps: &[SnapshotEntry],
    prefix: &str,
    now_unix: i64,
    retention_days: u32,
    keep_min: u32,
) -> RetentionPlan {
    let mut plan = RetentionPlan::default();
    let mut ours: Vec<&SnapshotEntry> = Vec::new();
    for s in snaps.iter().filter(|s| !s.is_current()) {
        let mine = is_ours(s, prefix);
        if let Some(state) = &s.snapstate {
            plan.leftovers.push(Leftover {
                name: s.name.clone(),
                snapstate: state.clone(),
                ours: mine,
            });
        } else if mine {
            ours.push(s);
        } else {
            plan.foreign.push(s.name.clone());
        }
    }
    // Newest first; the name's stamp breaks ties in snaptime.
    ours.sort_by(|a, b| (b.snaptime, &b.name).cmp(&(a.snaptime, &a.name)));
    let cutoff = now_unix - i64::from(retention_days) * 86_400;
    let keep_min = keep_min.max(1) as usize;
    for (i, s) in ours.iter().enumerate() {
        if i >= keep_min && s.snaptime.unwrap_or(0) < cutoff {
            plan.delete.push(s.name.clone());
        } else {
            plan.keep.push(s.name.clone());
        }
    }
    plan.delete.reverse();
    plan
}

/// What a finished task's `exitstatus` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskVerdict {
    /// `OK`.
    Ok,
    /// `WARNINGS: N`: done, but something deserves a look (e.g. fs-freeze failed).
    Warnings(u32),
    /// The guest is locked by another operation (backup, migrate, snapshot, …); try later.
    Locked(String),
    /// The guest's storage cannot snapshot.
    Unsupported,
    /// A delete refused because replication still needs the snapshot.
    NeededByReplication,
    /// Anything else.
    Failed(String),
}

/// Read a task exit status the way Proxmox writes it.
pub fn classify(exitstatus: &str) -> TaskVerdict {
    let s = exitstatus.trim();
    if s == "OK" {
        return TaskVerdict::Ok;
    }
    if let Some(n) = s.strip_prefix("WARNINGS:") {
        return TaskVerdict::Warnings(n.trim().parse().unwrap_or(1));
    }
    if let Some(rest) = s.split_once(" is locked (").map(|x| x.1) {
        return TaskVerdict::Locked(rest.split(')').next().unwrap_or(rest).to_owned());
    }
    // lock_config timing out on the config file lock: another operation holds it.
    if s.starts_with("can't lock file") && s.contains("got timeout") {
        return TaskVerdict::Locked("config file".into());
    }
    if s.contains("snapshot feature is not available") {
        return TaskVerdict::Unsupported;
    }
    if s.contains("needed by replication job") {
        return TaskVerdict::NeededByReplication;
    }
    TaskVerdict::Failed(s.to_owned())
}

/// The wait before retry `attempt` (0-based) of a locked guest: 1 s, 2 s, 4 s … up to 30 s.
pub fn lock_backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

/// The wait before retry `attempt` (1-based count of attempts so far) of a
/// locked guest, or None when waiting would end after the run-wide window.
pub fn lock_retry(attempt: u32, window_ends: std::time::Instant) -> Option<Duration> {
    let wait = lock_backoff(attempt.saturating_sub(1));
    (std::time::Instant::now() + wait <= window_ends).then_some(wait)
}

/// How a guest is named in messages: "VM 101 (web)", "CT 102", "guest 7".
pub fn guest_label(t: Option<GuestType>, vmid: u32, name: Option<&str>) -> String {
    let noun = t.map_or("guest", GuestType::noun);
    match name {
        Some(n) => format!("{noun} {vmid} ({n})"),
        None => format!("{noun} {vmid}"),
    }
}

/// A guest's result this run (the `result` label of `cloudnx_snapshot_last_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestResult {
    /// Snapshot taken.
    Ok,
    /// Snapshot taken with warnings.
    Degraded,
    /// No snapshot: an error.
    Failed,
    /// No snapshot: the guest stayed locked for the whole retry window.
    Locked,
    /// No snapshot: the guest's storage cannot snapshot.
    Unsupported,
}

impl GuestResult {
    /// Every result, for complete metric families.
    pub const ALL: [GuestResult; 5] = [
        GuestResult::Ok,
        GuestResult::Degraded,
        GuestResult::Failed,
        GuestResult::Locked,
        GuestResult::Unsupported,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestResult::Ok => "ok",
            GuestResult::Degraded => "degraded",
            GuestResult::Failed => "failed",
            GuestResult::Locked => "locked",
            GuestResult::Unsupported => "unsupported",
        }
    }

    /// Whether a snapshot now exists.
    pub fn taken(self) -> bool {
        matches!(self, GuestResult::Ok | GuestResult::Degraded)
    }

    /// Whether this result fails the job. Locked-for-good and unsupported are
    /// conditions of the guest, reported (metric + result) but not job failures.
    pub fn fails_job(self) -> bool {
        self == GuestResult::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn g(vmid: u32, t: GuestType, node: &str, template: bool) -> ClusterGuest {
        ClusterGuest {
            vmid,
            guest_type: t,
            node: node.into(),
            name: Some(format!("g{vmid}")),
            status: Some("running".into()),
            template,
        }
    }

    #[test]
    fn selection_takes_this_nodes_guests_minus_templates_and_excludes() {
        use GuestType::*;
        let guests = [
            g(103, Lxc, "a", false),
            g(100, Qemu, "a", false),
            g(101, Qemu, "a", true),
            g(102, Qemu, "b", false),
            g(104, Qemu, "a", false),
        ];
        struct Case {
            include: &'static [u32],
            exclude: &'static [u32],
            targets: &'static [u32],
            skipped: &'static [(u32, &'static str)],
            not_visible: &'static [u32],
        }
        let cases = [
            Case {
                include: &[],
                exclude: &[],
                targets: &[100, 103, 104],
                skipped: &[(101, "template")],
                not_visible: &[],
            },
            Case {
                include: &[],
                exclude: &[104],
                targets: &[100, 103],
                skipped: &[(101, "template"), (104, "excluded")],
                not_visible: &[],
            },
            Case {
                include: &[102, 103],
                exclude: &[],
                targets: &[103],
                skipped: &[(102, "owned by node b")],
                not_visible: &[],
            },
            Case {
                include: &[100, 999],
                exclude: &[],
                targets: &[100],
                skipped: &[],
                not_visible: &[999],
            },
            Case {
                include: &[100],
                exclude: &[100],
                targets: &[],
                skipped: &[(100, "excluded")],
                not_visible: &[],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let s = select(&guests, "a", c.include, c.exclude);
            let t: Vec<u32> = s.targets.iter().map(|t| t.vmid).collect();
            assert_eq!(t, c.targets, "case {i}");
            assert_eq!(
                s.skipped.len(),
                c.skipped.len(),
                "case {i}: {:?}",
                s.skipped
            );
            for (sk, (vmid, why)) in s.skipped.iter().zip(c.skipped) {
                assert_eq!(sk.vmid, *vmid, "case {i}");
                assert!(sk.reason.starts_with(why), "case {i}: {}", sk.reason);
            }
            assert_eq!(s.not_visible, c.not_visible, "case {i}");
        }
        assert_eq!(select(&guests, "a", &[], &[]).targets[1].guest_type, Lxc);
    }

    #[test]
    fn names_are_prefix_and_utc_stamp_and_always_valid() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 1, 2, 3).unwrap();
        assert_eq!(snapshot_name("cnx", at), "cnx-20261123010203");
        assert!(valid_snapshot_name(&snapshot_name(
            "a2345678901234567890",
            at
        )));
        let table = [
            ("cnx-20261123010203", true),
            ("a1", true),
            ("a", false),
            ("1cnx", false),
            ("Cnx-1", false),
            ("cnx 1", false),
            ("current", false),
            ("pending", false),
            ("a234567890123456789012345678901234567890", true),
            ("a2345678901234567890123456789012345678901", false),
        ];
        for (n, ok) in table {
            assert_eq!(valid_snapshot_name(n), ok, "{n}");
        }
    }

    fn snap(name: &str, desc: &str, t: i64) -> SnapshotEntry {
        SnapshotEntry {
            name: name.into(),
            description: desc.into(),
            snaptime: Some(t),
            vmstate: false,
            parent: None,
            snapstate: None,
        }
    }

    #[test]
    fn ours_needs_both_the_name_pattern_and_the_mark() {
        let mark = description("h1", "j1", 7);
        let table = [
            (snap("cnx-20261101000000", &mark, 1), true),
            (
                snap("cnx-20261101000000", "cloudnx-agent: host=other job=x", 1),
                true,
            ),
            (snap("cnx-20261101000000", "made by hand", 1), false),
            (snap("cnx-before-upgrade", &mark, 1), false),
            (snap("cnxx-20261101000000", &mark, 1), false),
            (snap("cnx-2026110100000", &mark, 1), false),
            (snap("current", &mark, 1), false),
        ];
        for (s, want) in table {
            assert_eq!(is_ours(&s, "cnx"), want, "{} / {:?}", s.name, s.description);
        }
    }

    #[test]
    fn retention_prunes_only_our_old_snapshots_and_keeps_the_newest() {
        let day = 86_400;
        let now = 100 * day;
        let m = description("h", "j", 7);
        let ours = |d: i64| {
            snap(
                &format!("cnx-{:014}", 20260000000000i64 + d),
                &m,
                now - d * day,
            )
        };
        let current = SnapshotEntry {
            name: "current".into(),
            description: "You are here!".into(),
            snaptime: None,
            vmstate: false,
            parent: None,
            snapstate: None,
        };
        let mut half = ours(20);
        half.snapstate = Some("delete".into());
        let snaps = vec![
            ours(0),
            ours(3),
            ours(8),
            ours(30),
            snap("cnx-20250101000000", "made by hand", now - 90 * day),
            snap("before-upgrade", "", now - 60 * day),
            half,
            current,
        ];
        let p = retention(&snaps, "cnx", now, 7, 1);
        assert_eq!(p.delete, vec![ours(30).name, ours(8).name], "oldest first");
        assert_eq!(p.keep, vec![ours(0).name, ours(3).name]);
        assert_eq!(
            p.foreign,
            vec!["cnx-20250101000000".to_owned(), "before-upgrade".to_owned()]
        );
        assert_eq!(p.leftovers.len(), 1);
        assert!(p.leftovers[0].ours);

        // keep_min keeps the newest N whatever their age; 0 still keeps one.
        let old = vec![ours(10), ours(20), ours(30)];
        let table: [(u32, u32, usize); 4] = [(7, 1, 1), (7, 2, 2), (7, 0, 1), (40, 1, 3)];
        for (days, keep_min, kept) in table {
            let p = retention(&old, "cnx", now, days, keep_min);
            assert_eq!(p.keep.len(), kept, "days {days} keep_min {keep_min}");
            assert_eq!(p.keep[0], ours(10).name);
            assert_eq!(p.keep.len() + p.delete.len(), 3);
        }
    }

    proptest::proptest! {
        #[test]
        fn retention_never_touches_foreign_keeps_the_newest_and_deletes_only_old(
            ages in proptest::collection::vec((0i64..60, proptest::bool::ANY), 0..20),
            days in 0u32..30,
            keep_min in 0u32..4,
        ) {
            let now = 1_000 * 86_400;
            let mark = description("h", "j", 7);
            let snaps: Vec<SnapshotEntry> = ages.iter().enumerate().map(|(i, (age, mine))| {
                let t = now - age * 86_400 - i as i64;
                if *mine { snap(&format!("cnx-{:014}", t), &mark, t) } else { snap(&format!("other-{i}"), "", t) }
            }).collect();
            let p = retention(&snaps, "cnx", now, days, keep_min);
            let ours: Vec<&SnapshotEntry> = snaps.iter().filter(|s| is_ours(s, "cnx")).collect();
            proptest::prop_assert_eq!(p.keep.len() + p.delete.len(), ours.len());
            proptest::prop_assert!(p.delete.iter().all(|d| d.starts_with("cnx-")));
            let newest = ours.iter().map(|s| s.snaptime).max();
            for d in &p.delete {
                let s = snaps.iter().find(|s| &s.name == d).unwrap();
                proptest::prop_assert!(s.snaptime.unwrap() < now - i64::from(days) * 86_400);
                proptest::prop_assert!(Some(s.snaptime) != newest);
            }
            proptest::prop_assert!(p.keep.len() >= ours.len().min(keep_min.max(1) as usize));
        }
    }

    #[test]
    fn task_exit_statuses_are_classified() {
        let table = [
            ("OK", TaskVerdict::Ok),
            ("WARNINGS: 2", TaskVerdict::Warnings(2)),
            (
                "VM is locked (backup)",
                TaskVerdict::Locked("backup".into()),
            ),
            (
                "CT is locked (snapshot-delete)",
                TaskVerdict::Locked("snapshot-delete".into()),
            ),
            (
                "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
                TaskVerdict::Locked("config file".into()),
            ),
            (
                "snapshot feature is not available",
                TaskVerdict::Unsupported,
            ),
            (
                "snapshot 'cnx-1' needed by replication job '100-0' - run replication first",
                TaskVerdict::NeededByReplication,
            ),
            (
                "snapshot name 'cnx-1' already used",
                TaskVerdict::Failed("snapshot name 'cnx-1' already used".into()),
            ),
            (
                "zfs error: out of space",
                TaskVerdict::Failed("zfs error: out of space".into()),
            ),
        ];
        for (s, want) in table {
            assert_eq!(classify(s), want, "{s}");
        }
    }

    #[test]
    fn lock_backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..8).map(|a| lock_backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn only_failed_guests_fail_the_job() {
        let failing: Vec<&str> = GuestResult::ALL
            .iter()
            .filter(|r| r.fails_job())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(failing, ["failed"]);
        let taken: Vec<&str> = GuestResult::ALL
            .iter()
            .filter(|r| r.taken())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(taken, ["ok", "degraded"]);
    }

    #[test]
    fn lock_retry_waits_only_inside_the_window_and_labels_name_the_guest() {
        let now = std::time::Instant::now();
        assert_eq!(
            lock_retry(1, now + Duration::from_secs(60)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            lock_retry(3, now + Duration::from_secs(60)),
            Some(Duration::from_secs(4))
        );
        assert_eq!(lock_retry(3, now + Duration::from_secs(2)), None);
        assert_eq!(
            guest_label(Some(GuestType::Lxc), 7, Some("dns")),
            "CT 7 (dns)"
        );
        assert_eq!(guest_label(None, 7, None), "guest 7");
    }
}
