//! Since when things have been pending, remembered across runs in
//! `{state_dir}/posture/state.json`.
//!
//! A security update's clock starts the first time a run sees the package
//! with a newer version from a security origin, and stops only when no newer
//! version is pending any more: a newer version of the same package (1.1
//! replaced by 1.2 before anyone installed 1.1) keeps the clock, so "patched
//! within 48 hours" is measured from the first fix the host could have had.
//! A required reboot's clock starts at the earliest evidence (the flag file,
//! the newer kernel's installation) or the first run that saw it. Pure.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What the last run remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Security updates pending, by package: first seen pending (Unix seconds).
    #[serde(default)]
    pub security_since: BTreeMap<String, i64>,
    /// Since when a reboot has been required (Unix seconds).
    #[serde(default)]
    pub reboot_required_since: Option<i64>,
}

/// The clocks of the security updates pending now: kept for packages already
/// pending, started at `now` for new ones; packages no longer pending drop out.
pub fn track_security(
    before: &BTreeMap<String, i64>,
    pending_now: &BTreeSet<String>,
    now: i64,
) -> BTreeMap<String, i64> {
    pending_now
        .iter()
        .map(|p| (p.clone(), before.get(p).copied().unwrap_or(now).min(now)))
        .collect()
}

/// Seconds the longest-waiting one has waited (0 when none is pending).
pub fn oldest_age(since: &BTreeMap<String, i64>, now: i64) -> i64 {
    since.values().min().map_or(0, |t| (now - t).max(0))
}

/// Since when a reboot has been required: None when it is not; else the
/// earlier of what was remembered and the evidence, never after `now`.
pub fn track_reboot(
    before: Option<i64>,
    required: bool,
    evidence: Option<i64>,
    now: i64,
) -> Option<i64> {
    if !required {
        return None;
    }
    let seen = before.unwrap_or(now);
    Some(seen.min(evidence.unwrap_or(now)).min(now))
}

/// Where the memory lives (read and replaced with [`crate::fsx::read_json_or_default`]
/// and [`crate::fsx::write_json_private`]; a lost file only restarts the clocks,
/// which can only delay an alert).
pub fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("posture").join("state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn clocks(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn posture_pending_since_table() {
        // (name, before, pending now, now, after, oldest age)
        let cases = [
            (
                "first run, nothing pending",
                clocks(&[]),
                set(&[]),
                100,
                clocks(&[]),
                0,
            ),
            (
                "first sight starts the clock",
                clocks(&[]),
                set(&["a"]),
                100,
                clocks(&[("a", 100)]),
                0,
            ),
            (
                "still pending (a newer version of it or not): the clock runs on",
                clocks(&[("a", 100)]),
                set(&["a"]),
                400,
                clocks(&[("a", 100)]),
                300,
            ),
            (
                "a second package has its own clock; the oldest counts",
                clocks(&[("a", 100)]),
                set(&["a", "b"]),
                500,
                clocks(&[("a", 100), ("b", 500)]),
                400,
            ),
            (
                "installed: its clock stops, the other runs on",
                clocks(&[("a", 100), ("b", 500)]),
                set(&["b"]),
                600,
                clocks(&[("b", 500)]),
                100,
            ),
            (
                "pending again later: a new clock",
                clocks(&[]),
                set(&["a"]),
                900,
                clocks(&[("a", 900)]),
                0,
            ),
            (
                "a remembered time in the future (clock stepped back) is capped at now",
                clocks(&[("a", 2000)]),
                set(&["a"]),
                1000,
                clocks(&[("a", 1000)]),
                0,
            ),
        ];
        for (name, before, now_pending, now, after, oldest) in cases {
            let got = track_security(&before, &now_pending, now);
            assert_eq!(got, after, "{name}");
            assert_eq!(oldest_age(&got, now), oldest, "{name}");
        }
    }

    #[test]
    fn posture_reboot_since_table() {
        let cases = [
            ("not required", Some(5), false, Some(1), 100, None),
            (
                "first seen, no evidence time",
                None,
                true,
                None,
                100,
                Some(100),
            ),
            (
                "evidence older than the first sight",
                None,
                true,
                Some(40),
                100,
                Some(40),
            ),
            (
                "remembered and older evidence",
                Some(60),
                true,
                Some(40),
                100,
                Some(40),
            ),
            (
                "remembered, newer evidence",
                Some(60),
                true,
                Some(90),
                100,
                Some(60),
            ),
            (
                "evidence in the future",
                None,
                true,
                Some(500),
                100,
                Some(100),
            ),
        ];
        for (name, before, required, evidence, now, want) in cases {
            assert_eq!(
                track_reboot(before, required, evidence, now),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn posture_memory_round_trips_and_garbage_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        let load = || crate::fsx::read_json_or_default::<Memory>(&f);
        assert_eq!(load(), Memory::default());
        let m = Memory {
            security_since: clocks(&[("openssl", 1_700_000_000)]),
            reboot_required_since: Some(1_700_000_100),
        };
        crate::fsx::write_json_private(&f, &m).unwrap();
        assert_eq!(load(), m);
        std::fs::write(&f, b"{not json").unwrap();
        assert_eq!(load(), Memory::default());
    }
}
