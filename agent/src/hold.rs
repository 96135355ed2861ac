//! The legal hold (SPEC §10): while it is set, retention deletes nothing —
//! backups, VM backups, snapshots, audit records — its decisions are still
//! computed and reported as held. One small file in `state_dir`
//! (`legal-hold.json`, 0600, replaced atomically), read by every duty that
//! deletes. A leaf: setting and releasing it (audited, with the reason) is
//! the CLI's.

use crate::fsx;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A hold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Why (a case or ticket reference), as given.
    pub reason: String,
    /// When it was set, RFC 3339.
    pub since: String,
    /// Who set it (audit actor).
    pub by: String,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("legal-hold.json")
}

/// The hold in force, if any. An unreadable hold file holds (fail closed:
/// a damaged file must never let retention delete).
pub fn current(state_dir: &Path) -> anyhow::Result<Option<Hold>> {
    let p = path(state_dir);
    match fsx::open_read(&p) {
        Ok(f) => {
            let h: Hold =
                serde_json::from_reader(std::io::Read::take(f, 64 * 1024)).with_context(|| {
                    format!(
                        "{} is damaged; retention holds until it is fixed or released",
                        p.display()
                    )
                })?;
            Ok(Some(h))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Whether retention must hold: a hold is set, or its file cannot be read.
pub fn holding(state_dir: &Path) -> bool {
    !matches!(current(state_dir), Ok(None))
}

/// Set (or replace) the hold.
pub fn set(state_dir: &Path, hold: &Hold) -> anyhow::Result<()> {
    fsx::ensure_private_dir(state_dir)?;
    fsx::write_atomic(&path(state_dir), &serde_json::to_vec_pretty(hold)?, 0o600)
}

/// Release the hold; false when none was set.
pub fn release(state_dir: &Path) -> anyhow::Result<bool> {
    let p = path(state_dir);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            fsx::sync_dir(state_dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_set_read_and_released_and_a_damaged_file_holds() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(current(d.path()).unwrap(), None);
        assert!(!holding(d.path()));
        let h = Hold {
            reason: "case 42".into(),
            since: "2026-12-02T00:00:00Z".into(),
            by: "cli:root".into(),
        };
        set(d.path(), &h).unwrap();
        assert_eq!(current(d.path()).unwrap(), Some(h));
        assert!(release(d.path()).unwrap());
        assert!(!release(d.path()).unwrap());
        std::fs::write(d.path().join("legal-hold.json"), "{").unwrap();
        assert!(current(d.path()).is_err());
        assert!(holding(d.path()), "a damaged hold file holds");
    }
}
