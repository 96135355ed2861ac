//! The layout of backups on a destination and the manifest (SPEC §4).
//!
//! ```text
//! {prefix}/postgres/{database}/{stamp}/{database}.dump.pgp
//! {prefix}/postgres/{database}/{stamp}/manifest.json      # written last
//! ```
//! The cluster's globals (roles, tablespaces: `pg_dumpall --globals-only`, plain
//! SQL) live under the reserved database name [`GLOBALS`], which PostgreSQL
//! databases backed up by the agent may not use.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest's `format`.
pub const FORMAT: &str = "cloudnx-backup/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// Reserved "database" name of the globals backup.
pub const GLOBALS: &str = "_globals";

/// What a backup object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// `pg_dump --format=custom` of one database.
    Database,
    /// `pg_dumpall --globals-only` (plain SQL).
    Globals,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Host that made the backup.
    pub host_id: String,
    /// Database name ([`GLOBALS`] for the globals).
    pub database: String,
    /// What the object holds.
    pub content: Content,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// `server_version` of the source.
    pub server_version: String,
    /// Version of the pg_dump (or pg_dumpall) that wrote the dump.
    pub pg_dump_version: String,
    /// Object file name, beside the manifest.
    pub object: String,
    /// Object size.
    pub size_bytes: u64,
    /// SHA-256 of the object (hex).
    pub sha256: String,
    /// Size of the dump before encryption.
    pub plaintext_size_bytes: u64,
    /// SHA-256 of the dump (hex).
    pub plaintext_sha256: String,
    /// OpenPGP primary-key fingerprints the object is encrypted to.
    pub recipients: Vec<String>,
    /// Schema fingerprint inside the dumped snapshot (None for globals).
    pub schema_sha256: Option<String>,
    /// Exact row counts inside the dumped snapshot (None: not counted).
    pub row_counts: Option<BTreeMap<String, i64>>,
    /// True when row counting was switched off for this database.
    #[serde(default)]
    pub row_counts_skipped: bool,
    /// `pg_dump --compress` level.
    pub compression_level: Option<u8>,
}

/// The directory of all backups of a database: `{prefix}/postgres/{database}/`.
pub fn database_dir(prefix: &str, database: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        format!("postgres/{database}/")
    } else {
        format!("{p}/postgres/{database}/")
    }
}

/// The object key of a backup.
pub fn object_key(prefix: &str, database: &str, stamp: &str) -> String {
    format!(
        "{}{stamp}/{}",
        database_dir(prefix, database),
        object_name(database)
    )
}

/// The manifest key of a backup.
pub fn manifest_key(prefix: &str, database: &str, stamp: &str) -> String {
    format!("{}{stamp}/{MANIFEST}", database_dir(prefix, database))
}

/// `{database}.dump.pgp`.
pub fn object_name(database: &str) -> String {
    format!("{database}.dump.pgp")
}

/// Why a database name cannot be used in the layout, if it cannot.
pub fn unusable_name(database: &str) -> Option<&'static str> {
    if database == GLOBALS {
        Some("it is reserved for the globals backup")
    } else if database.is_empty() || database.starts_with('.') {
        Some("it is empty or starts with '.'")
    } else if database.contains('/') || database.contains('\0') {
        Some("it contains '/'")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_spec_layout() {
        assert_eq!(
            object_key("hel1", "app", "20261123T120000Z"),
            "hel1/postgres/app/20261123T120000Z/app.dump.pgp"
        );
        assert_eq!(
            manifest_key("", "app", "20261123T120000Z"),
            "postgres/app/20261123T120000Z/manifest.json"
        );
        assert_eq!(database_dir("/a/b/", "x"), "a/b/postgres/x/");
    }

    #[test]
    fn names_that_break_the_layout_are_refused() {
        assert!(unusable_name("app").is_none());
        assert!(unusable_name("ünïcode db").is_none());
        for bad in [GLOBALS, "", ".hidden", "a/b"] {
            assert!(unusable_name(bad).is_some(), "{bad}");
        }
    }
}
