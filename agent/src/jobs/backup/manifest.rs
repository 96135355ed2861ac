//! The layout of backups on a destination and the manifest (SPEC §4).
//!
//! ```text
//! {prefix}/postgres/{database}/{stamp}/{database}.dump.pgp
//! {prefix}/postgres/{database}/{stamp}/manifest.details.pgp  # encrypted details
//! {prefix}/postgres/{database}/{stamp}/manifest.json      # written last
//! ```
//! Nothing readable off the host (SPEC §10): the plaintext manifest carries no
//! table names, schema text or row counts; those are the [`Details`],
//! encrypted to the same recipients as the dump, beside it.
//! `{database}` is the directory *segment* of a backup ([`segment`]): a
//! database's name with `%`, `/`, control characters and a leading `.`
//! percent-encoded (so any name PostgreSQL accepts is a safe, reversible key
//! component), and the cluster's globals (roles, tablespaces: `pg_dumpall
//! --globals-only`, plain SQL) under the literal [`GLOBALS`]; a database really
//! named `_globals` is stored as `%5Fglobals`. The manifest carries the real name.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest's `format`.
pub const FORMAT: &str = "cloudnx-backup/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The encrypted details' file name, beside the manifest.
pub const DETAILS: &str = "manifest.details.pgp";

/// What the manifest says only encrypted: the table names and row counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// Exact row counts inside the dumped snapshot (None: not counted).
    pub row_counts: Option<BTreeMap<String, i64>>,
}

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
    /// Exact row counts inside the dumped snapshot (None: not counted, or
    /// — in what is written — in the encrypted [`Details`]; filled from them
    /// after decryption).
    pub row_counts: Option<BTreeMap<String, i64>>,
    /// SHA-256 (hex) of the encrypted [`DETAILS`] object, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_sha256: Option<String>,
    /// True when row counting was switched off for this database.
    #[serde(default)]
    pub row_counts_skipped: bool,
    /// `pg_dump --compress` level.
    pub compression_level: Option<u8>,
    /// The agent instance that wrote it (its `state_dir/writer-id`): two
    /// agents sharing a prefix show up as two writers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The audit log's head when the manifest was written (SPEC §11), so the
    /// backups and the audit log anchor each other; None in older manifests.
    #[serde(default)]
    pub audit_head: Option<crate::audit::Head>,
}

/// The directory segment of what a backup holds: [`GLOBALS`] for the
/// globals, the encoded database name otherwise (see the module doc).
pub fn segment(database: &str, content: Content) -> String {
    match content {
        Content::Globals => GLOBALS.to_owned(),
        Content::Database if database == GLOBALS => "%5Fglobals".to_owned(),
        Content::Database => {
            let mut out = String::with_capacity(database.len());
            for (i, ch) in database.char_indices() {
                if ch == '%' || ch == '/' || ch.is_control() || (i == 0 && ch == '.') {
                    let mut buf = [0u8; 4];
                    for b in ch.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                } else {
                    out.push(ch);
                }
            }
            out
        }
    }
}

/// What a directory segment holds and the real database name (the inverse
/// of [`segment`]); None for a segment the agent never writes.
pub fn parse_segment(seg: &str) -> Option<(String, Content)> {
    if seg == GLOBALS {
        return Some((GLOBALS.to_owned(), Content::Globals));
    }
    if seg.is_empty() || seg.starts_with('.') {
        return None;
    }
    let mut bytes = Vec::with_capacity(seg.len());
    let mut it = seg.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    // Only the canonical spelling: one name, one directory.
    (segment(&name, Content::Database) == seg).then_some((name, Content::Database))
}

/// The directory of all backups of a segment: `{prefix}/postgres/{segment}/`.
pub fn database_dir(prefix: &str, segment: &str) -> String {
    format!("{}{segment}/", postgres_dir(prefix))
}

/// `{prefix}/postgres/`: where every database's directory is.
pub fn postgres_dir(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        "postgres/".to_owned()
    } else {
        format!("{p}/postgres/")
    }
}

/// The object key of a backup.
pub fn object_key(prefix: &str, segment: &str, stamp: &str) -> String {
    format!(
        "{}{stamp}/{}",
        database_dir(prefix, segment),
        object_name(segment)
    )
}

/// The manifest key of a backup.
pub fn manifest_key(prefix: &str, segment: &str, stamp: &str) -> String {
    format!("{}{stamp}/{MANIFEST}", database_dir(prefix, segment))
}

/// The encrypted details' key of a backup.
pub fn details_key(prefix: &str, segment: &str, stamp: &str) -> String {
    format!("{}{stamp}/{DETAILS}", database_dir(prefix, segment))
}

/// `{segment}.dump.pgp`.
pub fn object_name(segment: &str) -> String {
    format!("{segment}.dump.pgp")
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
    fn every_name_postgres_accepts_is_a_reversible_safe_segment() {
        let table = [
            ("app", "app"),
            ("ünïcode db", "ünïcode db"),
            ("a/b", "a%2Fb"),
            ("50%", "50%25"),
            (".x", "%2Ex"),
            ("x.", "x."),
            ("..", "%2E."),
            ("tab\tnl\n", "tab%09nl%0A"),
            ("_globals", "%5Fglobals"),
            ("_globalsx", "_globalsx"),
        ];
        for (name, seg) in table {
            assert_eq!(segment(name, Content::Database), seg, "{name:?}");
            assert_eq!(
                parse_segment(seg),
                Some((name.to_owned(), Content::Database)),
                "{seg}"
            );
        }
        assert_eq!(segment("anything", Content::Globals), GLOBALS);
        assert_eq!(
            parse_segment(GLOBALS),
            Some((GLOBALS.to_owned(), Content::Globals))
        );
        // Segments the agent never writes are not taken for backups.
        for odd in ["", ".x", "a%2", "a%zz", "%61pp", "%FF"] {
            assert_eq!(parse_segment(odd), None, "{odd}");
        }
    }

    proptest::proptest! {
        #[test]
        fn segments_round_trip_and_stay_one_path_component(name in "\\PC{0,20}|[./%_a-z\\x00-\\x1f]{0,12}") {
            let seg = segment(&name, Content::Database);
            proptest::prop_assert!(!seg.contains('/'));
            proptest::prop_assert!(!seg.starts_with('.'));
            proptest::prop_assert!(seg != GLOBALS);
            if !name.is_empty() {
                proptest::prop_assert_eq!(parse_segment(&seg), Some((name.clone(), Content::Database)));
            }
        }
    }
}
