//! Which backups to drill: a pure function over a destination's listing.
//! Per database, the newest stamp that has a manifest; incomplete backups are
//! never candidates.

use crate::jobs::backup::manifest::{self, MANIFEST};
use crate::jobs::backup::retention::parse_stamp;
use std::collections::BTreeMap;

/// Newest complete stamp per database, from keys under `{prefix}/postgres/`.
/// `only`: restrict to these databases (empty = all; the globals always come along).
pub fn newest_complete(
    prefix_dir: &str,
    keys: &[String],
    only: &[String],
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix_dir) else {
            continue;
        };
        let mut parts = rest.split('/');
        let (Some(db), Some(stamp), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if file != MANIFEST || parse_stamp(stamp).is_none() {
            continue;
        }
        if !only.is_empty() && db != manifest::GLOBALS && !only.iter().any(|o| o == db) {
            continue;
        }
        let e = out.entry(db.to_owned()).or_default();
        if stamp > e.as_str() {
            *e = stamp.to_owned();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| format!("h/postgres/{s}")).collect()
    }

    /// (name, keys, only, expected (database, stamp) pairs)
    type Case = (
        &'static str,
        Vec<String>,
        Vec<String>,
        Vec<(&'static str, &'static str)>,
    );

    #[test]
    fn newest_complete_table() {
        let cases: Vec<Case> = vec![
            (
                "newest complete wins, a newer incomplete one is ignored",
                keys(&[
                    "app/20261101T000000Z/manifest.json",
                    "app/20261101T000000Z/app.dump.pgp",
                    "app/20261120T000000Z/manifest.json",
                    "app/20261122T000000Z/app.dump.pgp",
                ]),
                vec![],
                vec![("app", "20261120T000000Z")],
            ),
            (
                "several databases and the globals",
                keys(&[
                    "a/20261101T000000Z/manifest.json",
                    "b/20261102T000000Z/manifest.json",
                    "_globals/20261102T000000Z/manifest.json",
                ]),
                vec![],
                vec![
                    ("_globals", "20261102T000000Z"),
                    ("a", "20261101T000000Z"),
                    ("b", "20261102T000000Z"),
                ],
            ),
            (
                "a selection keeps the globals",
                keys(&[
                    "a/20261101T000000Z/manifest.json",
                    "b/20261102T000000Z/manifest.json",
                    "_globals/20261102T000000Z/manifest.json",
                ]),
                vec!["b".to_owned()],
                vec![("_globals", "20261102T000000Z"), ("b", "20261102T000000Z")],
            ),
            (
                "odd names and other hosts are ignored",
                vec![
                    "h/postgres/a/latest/manifest.json".into(),
                    "other/postgres/a/20261101T000000Z/manifest.json".into(),
                    "h/postgres/a/20261101T000000Z/x/manifest.json".into(),
                ],
                vec![],
                vec![],
            ),
        ];
        for (name, k, only, want) in cases {
            let got = newest_complete("h/postgres/", &k, &only);
            let want: BTreeMap<String, String> = want
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
