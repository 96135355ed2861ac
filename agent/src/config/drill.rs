//! `[restore_drill]`: which backups to prove restorable, and how.

use super::common::check_secret;
use super::problem::Check;
use super::schema::{fragment, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[restore_drill]` as written in one file.
    raw RawDrill;
    /// Validated `[restore_drill]`.
    #[derive(Debug, Clone)]
    pub struct DrillConfig {
        /// When the daemon runs the drill.
        schedule: Schedule = ("0 4 * * 0"),
        /// Destination name to fetch from.
        destination: String = required,
        /// Drill another host's backups (their prefix); None = this host's.
        source_host_id: String = optional,
        /// Databases to drill; empty = every database with a complete backup.
        databases: Vec<String> = (vec![]),
        /// Armored OpenPGP secret key (a secret file).
        decryption_key: PathBuf = required,
        /// PostgreSQL binaries for the throwaway cluster; None = by the dump's major version.
        pg_bin_dir: PathBuf = optional,
        /// `pg_restore --jobs`.
        jobs: u32 = (4),
        /// OS user owning the throwaway cluster when the agent runs as root.
        run_as: String = ("postgres"),
        /// `pg_amcheck --heapallindexed` (default off: it re-verifies the index
        /// builds the restore just did, one extra heap pass per index).
        heapallindexed: bool = (false),
        /// SQL probes, each must return true.
        probes: Vec<String> = (vec![]),
        /// Alertmanager base URL for direct paging on failure.
        alertmanager_url: String = optional,
        /// Hard limit for the whole drill.
        timeout_minutes: u32 = (120),
        /// Parent of the drill's private directory (default: /var/tmp; must be
        /// traversable by `run_as`, so not the 0700 state_dir).
        spool_dir: PathBuf = optional,
        /// Let the drill spool decrypted data on a disk that is neither dm-crypt
        /// nor tmpfs (refused by default: SPEC §10).
        allow_unencrypted_spool: bool = (false),
    }
}

impl Rules for RawDrill {
    fn rules(&self, c: &mut Check) {
        check_secret(c, "decryption_key", &self.decryption_key, false);
        if let Some(j) = &self.jobs {
            if *j.get_ref() == 0 {
                c.err(
                    j.span(),
                    "jobs must be at least 1",
                    "jobs = 4 restores four tables at once",
                );
            }
        }
    }
}
