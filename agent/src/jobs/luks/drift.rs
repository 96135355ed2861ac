//! Drift: what changed since the last run. The previous run's findings live in
//! `{state_dir}/luks/last.json`; [`diff`] is pure. A failing check that was
//! not failing last run (or a first run that finds failures), a new LUKS UUID
//! or header id, or a new unencrypted mount under a data path is drift and is
//! reported once, not every five minutes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What one volume looked like at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMemory {
    /// Failing checks.
    pub failed: BTreeSet<String>,
    /// LUKS UUID, when there was a header.
    pub uuid: Option<String>,
    /// Header id, when there was a header.
    pub header_id: Option<String>,
}

/// The last run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// By volume name.
    pub volumes: BTreeMap<String, VolumeMemory>,
    /// Unencrypted mountpoints under data paths.
    #[serde(default)]
    pub unencrypted: BTreeSet<PathBuf>,
}

/// One volume's drift.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Checks failing now that were not failing before.
    pub new_failures: Vec<String>,
    /// (before, now) header ids, when the header changed.
    pub header_changed: Option<(String, String)>,
    /// (before, now) UUIDs, when the volume was reformatted or replaced.
    pub uuid_changed: Option<(String, String)>,
}

impl Drift {
    /// Whether anything drifted.
    pub fn is_empty(&self) -> bool {
        self.new_failures.is_empty() && self.header_changed.is_none() && self.uuid_changed.is_none()
    }
}

/// Compare a volume's state now with the last run.
pub fn diff(before: Option<&VolumeMemory>, now: &VolumeMemory) -> Drift {
    let empty = VolumeMemory::default();
    let b = before.unwrap_or(&empty);
    let new_failures = now.failed.difference(&b.failed).cloned().collect();
    let changed = |x: &Option<String>, y: &Option<String>| match (x, y) {
        (Some(x), Some(y)) if x != y => Some((x.clone(), y.clone())),
        _ => None,
    };
    let uuid_changed = changed(&b.uuid, &now.uuid);
    let header_changed = if uuid_changed.is_some() {
        None
    } else {
        changed(&b.header_id, &now.header_id)
    };
    Drift {
        new_failures,
        header_changed,
        uuid_changed,
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("luks").join("last.json")
}

/// The last run's memory (empty when there is none or it is unreadable: that
/// only makes this run report its findings as new).
pub fn load(state_dir: &Path) -> Memory {
    crate::fsx::read_json_or_default(&path(state_dir))
}

/// Replace the memory atomically.
pub fn save(state_dir: &Path, m: &Memory) -> anyhow::Result<()> {
    crate::fsx::write_json_private(&path(state_dir), m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(failed: &[&str], uuid: Option<&str>, id: Option<&str>) -> VolumeMemory {
        VolumeMemory {
            failed: failed.iter().map(|s| (*s).to_owned()).collect(),
            uuid: uuid.map(Into::into),
            header_id: id.map(Into::into),
        }
    }

    #[test]
    fn drift_table() {
        let u = Some("u1");
        let cases = [
            (
                "first run, compliant",
                None,
                mem(&[], u, Some("3")),
                vec![],
                None,
                None,
            ),
            (
                "first run, failing",
                None,
                mem(&["cipher"], u, Some("3")),
                vec!["cipher"],
                None,
                None,
            ),
            (
                "same failures again",
                Some(mem(&["cipher"], u, Some("3"))),
                mem(&["cipher"], u, Some("3")),
                vec![],
                None,
                None,
            ),
            (
                "one more failure",
                Some(mem(&["cipher"], u, Some("3"))),
                mem(&["cipher", "keyslots"], u, Some("3")),
                vec!["keyslots"],
                None,
                None,
            ),
            (
                "repaired",
                Some(mem(&["not_open"], u, Some("3"))),
                mem(&[], u, Some("3")),
                vec![],
                None,
                None,
            ),
            (
                "keyslot added",
                Some(mem(&[], u, Some("3"))),
                mem(&[], u, Some("5")),
                vec![],
                Some(("3", "5")),
                None,
            ),
            (
                "reformatted",
                Some(mem(&[], u, Some("3"))),
                mem(&[], Some("u2"), Some("1")),
                vec![],
                None,
                Some(("u1", "u2")),
            ),
            (
                "device vanished",
                Some(mem(&[], u, Some("3"))),
                mem(&["missing_device"], None, None),
                vec!["missing_device"],
                None,
                None,
            ),
        ];
        for (name, before, now, fails, hdr, uuid) in cases {
            let d = diff(before.as_ref(), &now);
            let fails: Vec<String> = fails.into_iter().map(Into::into).collect();
            assert_eq!(d.new_failures, fails, "{name}");
            assert_eq!(
                d.header_changed,
                hdr.map(|(a, b)| (a.to_owned(), b.to_owned())),
                "{name}"
            );
            assert_eq!(
                d.uuid_changed,
                uuid.map(|(a, b)| (a.to_owned(), b.to_owned())),
                "{name}"
            );
        }
    }

    #[test]
    fn memory_round_trips_and_garbage_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Memory::default());
        let mut m = Memory::default();
        m.volumes
            .insert("v".into(), mem(&["pbkdf"], Some("u"), Some("9")));
        save(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()), m);
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert_eq!(load(dir.path()), Memory::default());
    }
}
