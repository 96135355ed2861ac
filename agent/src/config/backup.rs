//! `[backup]`: what to dump, where to, how long to keep it.

use super::common::*;
use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;

/// `[backup]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    schedule: Opt<String>,
    connection: Opt<String>,
    databases: Opt<Vec<String>>,
    exclude_databases: Opt<Vec<String>>,
    destinations: Opt<Vec<String>>,
    retention_days: Opt<u32>,
    keep_min: Opt<u32>,
    encrypt_to: Opt<Vec<PathBuf>>,
    pg_bin_dir: Opt<PathBuf>,
    compression_level: Opt<u8>,
    globals: Opt<bool>,
    row_counts: Opt<bool>,
    skip_row_counts: Opt<Vec<String>>,
    part_size_mib: Opt<u32>,
    max_in_flight_parts: Opt<u32>,
}

/// Validated `[backup]`.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// When the daemon runs the job.
    pub schedule: Schedule,
    /// libpq conninfo for the source cluster.
    pub connection: String,
    /// Databases to dump; empty = every connectable non-template database.
    pub databases: Vec<String>,
    /// Databases never dumped when `databases` is empty.
    pub exclude_databases: Vec<String>,
    /// Destination names (all must exist in `[[destinations]]`).
    pub destinations: Vec<String>,
    /// Complete backups older than this are pruned.
    pub retention_days: u32,
    /// The newest this-many complete backups are always kept, whatever their age (≥ 1).
    pub keep_min: u32,
    /// Armored OpenPGP public keys to encrypt to.
    pub encrypt_to: Vec<PathBuf>,
    /// Where pg_dump lives; None = /usr/lib/postgresql/{server major}/bin, then PATH.
    pub pg_bin_dir: Option<PathBuf>,
    /// `pg_dump --compress` level (0–9).
    pub compression_level: u8,
    /// Also back up roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: bool,
    /// Count rows exactly in the dump's snapshot (for the drill to compare).
    pub row_counts: bool,
    /// Databases whose rows are not counted (huge tables); the manifest says so.
    pub skip_row_counts: Vec<String>,
    /// Initial multipart part size; grows so a stream never needs 10 000 parts.
    pub part_size_mib: u32,
    /// Parts in flight per destination (memory ≈ part size × in-flight × destinations).
    pub max_in_flight_parts: u32,
}

impl RawBackup {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        check_cron(c, &self.schedule);
        check_abs(c, "pg_bin_dir", &self.pg_bin_dir);
        if let Some(keys) = &self.encrypt_to {
            if c.other_files {
                for k in keys.get_ref() {
                    if let Err(e) = std::fs::metadata(k) {
                        c.err(
                            keys.span(),
                            format!("`encrypt_to`: cannot read public key {}: {e}", k.display()),
                            "export it with gpg --export --armor FPR > FILE",
                        );
                    }
                }
            }
            if keys.get_ref().is_empty() {
                c.err(
                    keys.span(),
                    "`encrypt_to` is empty: backups must be encrypted",
                    "list at least one armored OpenPGP public key file",
                );
            }
        }
        if let Some(l) = &self.compression_level {
            if *l.get_ref() > 9 {
                c.err(
                    l.span(),
                    format!("compression_level {} is out of range", l.get_ref()),
                    "use 0 (none) to 9 (smallest)",
                );
            }
        }
        if let Some(k) = &self.keep_min {
            if *k.get_ref() == 0 {
                c.err(
                    k.span(),
                    "keep_min = 0 would let retention delete the last good backup",
                    "use keep_min = 1 or more",
                );
            }
        }
        for (key, v) in [
            ("part_size_mib", &self.part_size_mib),
            ("max_in_flight_parts", &self.max_in_flight_parts),
        ] {
            if let Some(n) = v {
                if *n.get_ref() == 0 {
                    c.err(
                        n.span(),
                        format!("`{key}` must be at least 1"),
                        "remove the key to use the default",
                    );
                }
            }
        }
        if let Some(p) = &self.part_size_mib {
            if *p.get_ref() < 5 {
                c.err(
                    p.span(),
                    "S3 requires parts of at least 5 MiB",
                    "use part_size_mib = 5 or more",
                );
            }
        }
    }

    /// Merge a later fragment over this one.
    pub fn merge(&mut self, o: RawBackup) {
        merge_fields!(self, o; schedule, connection, databases, exclude_databases, destinations,
            retention_days, keep_min, encrypt_to, pg_bin_dir, compression_level, globals, row_counts,
            skip_row_counts, part_size_mib, max_in_flight_parts);
    }

    /// Build the validated section.
    pub fn build(self, problems: &mut Vec<Problem>) -> Option<BackupConfig> {
        let schedule = Schedule::parse(&or(self.schedule, "30 2 * * *".into())).ok()?;
        let encrypt_to = required(self.encrypt_to, "backup", "encrypt_to", problems);
        let destinations = required(self.destinations, "backup", "destinations", problems);
        Some(BackupConfig {
            schedule,
            connection: or(
                self.connection,
                "host=/var/run/postgresql user=postgres".into(),
            ),
            databases: or(self.databases, vec![]),
            exclude_databases: or(self.exclude_databases, vec![]),
            destinations: destinations?,
            retention_days: or(self.retention_days, 14),
            keep_min: or(self.keep_min, 1),
            encrypt_to: encrypt_to?,
            pg_bin_dir: self.pg_bin_dir.map(toml::Spanned::into_inner),
            compression_level: or(self.compression_level, 1),
            globals: or(self.globals, true),
            row_counts: or(self.row_counts, true),
            skip_row_counts: or(self.skip_row_counts, vec![]),
            part_size_mib: or(self.part_size_mib, 8),
            max_in_flight_parts: or(self.max_in_flight_parts, 2),
        })
    }
}
