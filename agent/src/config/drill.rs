//! `[restore_drill]`: which backups to prove restorable, and how.

use super::common::*;
use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;

/// `[restore_drill]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    schedule: Opt<String>,
    destination: Opt<String>,
    source_host_id: Opt<String>,
    databases: Opt<Vec<String>>,
    decryption_key: Opt<PathBuf>,
    pg_bin_dir: Opt<PathBuf>,
    jobs: Opt<u32>,
    run_as: Opt<String>,
    heapallindexed: Opt<bool>,
    probes: Opt<Vec<String>>,
    alertmanager_url: Opt<String>,
    timeout_minutes: Opt<u32>,
    spool_dir: Opt<PathBuf>,
}

/// Validated `[restore_drill]`.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// When the daemon runs the drill.
    pub schedule: Schedule,
    /// Destination name to fetch from.
    pub destination: String,
    /// Drill another host's backups (their prefix); None = this host's.
    pub source_host_id: Option<String>,
    /// Databases to drill; empty = every database with a complete backup.
    pub databases: Vec<String>,
    /// Armored OpenPGP secret key (a secret file).
    pub decryption_key: PathBuf,
    /// PostgreSQL binaries for the throwaway cluster; None = by the dump's major version.
    pub pg_bin_dir: Option<PathBuf>,
    /// `pg_restore --jobs`.
    pub jobs: u32,
    /// OS user owning the throwaway cluster when the agent runs as root.
    pub run_as: String,
    /// `pg_amcheck --heapallindexed` (default off: it re-verifies the index
    /// builds the restore just did, one extra heap pass per index).
    pub heapallindexed: bool,
    /// SQL probes, each must return true.
    pub probes: Vec<String>,
    /// Alertmanager base URL for direct paging on failure.
    pub alertmanager_url: Option<String>,
    /// Hard limit for the whole drill.
    pub timeout_minutes: u32,
    /// Parent of the drill's private directory (default: /var/tmp; must be
    /// traversable by `run_as`, so not the 0700 state_dir).
    pub spool_dir: Option<PathBuf>,
}

impl RawDrill {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        check_cron(c, &self.schedule);
        check_secret(c, "decryption_key", &self.decryption_key, false);
        check_abs(c, "pg_bin_dir", &self.pg_bin_dir);
        check_abs(c, "spool_dir", &self.spool_dir);
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

    /// Merge a later fragment over this one.
    pub fn merge(&mut self, o: RawDrill) {
        merge_fields!(self, o; schedule, destination, source_host_id, databases, decryption_key, pg_bin_dir,
            jobs, run_as, heapallindexed, probes, alertmanager_url, timeout_minutes, spool_dir);
    }

    /// Build the validated section.
    pub fn build(self, problems: &mut Vec<Problem>) -> Option<DrillConfig> {
        let schedule = Schedule::parse(&or(self.schedule, "0 4 * * 0".into())).ok()?;
        let destination = required(self.destination, "restore_drill", "destination", problems);
        let key = required(
            self.decryption_key,
            "restore_drill",
            "decryption_key",
            problems,
        );
        Some(DrillConfig {
            schedule,
            destination: destination?,
            source_host_id: self.source_host_id.map(toml::Spanned::into_inner),
            databases: or(self.databases, vec![]),
            decryption_key: key?,
            pg_bin_dir: self.pg_bin_dir.map(toml::Spanned::into_inner),
            jobs: or(self.jobs, 4),
            run_as: or(self.run_as, "postgres".into()),
            heapallindexed: or(self.heapallindexed, false),
            probes: or(self.probes, vec![]),
            alertmanager_url: self.alertmanager_url.map(toml::Spanned::into_inner),
            timeout_minutes: or(self.timeout_minutes, 120),
            spool_dir: self.spool_dir.map(toml::Spanned::into_inner),
        })
    }
}
