//! `[backup]`: what to dump, where to, how long to keep it.

use super::problem::Check;
use super::schema::{fragment, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[backup]` as written in one file.
    raw RawBackup;
    /// Validated `[backup]`.
    #[derive(Debug, Clone)]
    pub struct BackupConfig {
        /// When the daemon runs the job.
        schedule: Schedule = ("30 2 * * *"),
        /// libpq conninfo for the source cluster.
        connection: String = ("host=/var/run/postgresql user=postgres"),
        /// Databases to dump; empty = every connectable non-template database.
        databases: Vec<String> = (vec![]),
        /// Databases never dumped when `databases` is empty.
        exclude_databases: Vec<String> = (vec![]),
        /// Destination names (all must exist in `[[destinations]]`).
        destinations: Vec<String> = required,
        /// Complete backups older than this are pruned.
        retention_days: u32 = (14),
        /// The newest this-many complete backups are always kept, whatever their age (≥ 1).
        keep_min: u32 = (1),
        /// Armored OpenPGP public keys to encrypt to.
        encrypt_to: Vec<PathBuf> = required,
        /// Where pg_dump lives; None = /usr/lib/postgresql/{server major}/bin, then PATH.
        pg_bin_dir: PathBuf = optional,
        /// `pg_dump --compress` level (0–9).
        compression_level: u8 = (1),
        /// Also back up roles and tablespaces (`pg_dumpall --globals-only`).
        globals: bool = (true),
        /// Count rows exactly in the dump's snapshot (for the drill to compare).
        row_counts: bool = (true),
        /// Databases whose rows are not counted (huge tables); the manifest says so.
        skip_row_counts: Vec<String> = (vec![]),
        /// Initial multipart part size; grows so a stream never needs 10 000 parts.
        part_size_mib: u32 = (8),
        /// Parts in flight per destination (memory ≈ part size × in-flight × destinations).
        max_in_flight_parts: u32 = (2),
    }
}

impl Rules for RawBackup {
    fn rules(&self, c: &mut Check) {
        if let Some(keys) = &self.encrypt_to {
            if c.other_files {
                for k in keys.get_ref().iter().filter(|k| k.is_absolute()) {
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
}
