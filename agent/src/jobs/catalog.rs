//! What backups a destination holds: a pure function over its listing. A
//! backup exists only once its manifest does; anything else under
//! `{prefix}/postgres/` is an incomplete upload, never a candidate. Shared by
//! the drill, `restore` and `backups list`.

use crate::jobs::backup::manifest::{self, Content, MANIFEST};
use crate::jobs::backup::retention::parse_stamp;

/// One complete backup found in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    /// Its directory segment (the encoded name, or `_globals`).
    pub segment: String,
    /// The real database name ([`manifest::GLOBALS`] for the globals).
    pub database: String,
    /// What it holds.
    pub content: Content,
    /// Its stamp, `YYYYMMDDTHHMMSSZ`.
    pub stamp: String,
}

impl Complete {
    /// Its manifest's key under `prefix`.
    pub fn manifest_key(&self, prefix: &str) -> String {
        manifest::manifest_key(prefix, &self.segment, &self.stamp)
    }
}

/// Every complete backup among `keys` (a listing of `dir` =
/// `{prefix}/postgres/`), sorted by database then stamp (oldest first).
pub fn complete(dir: &str, keys: &[String]) -> Vec<Complete> {
    let mut out: Vec<Complete> = keys
        .iter()
        .filter_map(|k| {
            let mut parts = k.strip_prefix(dir)?.split('/');
            let (Some(seg), Some(stamp), Some(file), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            if file != MANIFEST || parse_stamp(stamp).is_none() {
                return None;
            }
            let (database, content) = manifest::parse_segment(seg)?;
            Some(Complete {
                segment: seg.to_owned(),
                database,
                content,
                stamp: stamp.to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.segment, &a.stamp).cmp(&(&b.segment, &b.stamp)));
    out
}

/// The newest complete backup of each database (and of the globals), from
/// [`complete`]'s output. `only`: restrict to these databases (empty = all;
/// the globals always come along).
pub fn newest(all: &[Complete], only: &[String]) -> Vec<Complete> {
    let mut out: Vec<Complete> = Vec::new();
    for c in all {
        let wanted = c.content == Content::Globals || only.is_empty() || only.contains(&c.database);
        if !wanted {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.segment == c.segment => *last = c.clone(),
            _ => out.push(c.clone()),
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
    fn encoded_names_are_listed_by_their_real_name() {
        let all = complete(
            "h/postgres/",
            &keys(&[
                "a%2Fb/20261101T000000Z/manifest.json",
                "%5Fglobals/20261101T000000Z/manifest.json",
                "_globals/20261101T000000Z/manifest.json",
                "%61pp/20261101T000000Z/manifest.json",
            ]),
        );
        let got: Vec<(&str, Content)> = all
            .iter()
            .map(|c| (c.database.as_str(), c.content))
            .collect();
        assert_eq!(
            got,
            vec![
                ("_globals", Content::Database),
                ("_globals", Content::Globals),
                ("a/b", Content::Database)
            ]
        );
    }

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
            let got: Vec<(String, String)> = newest(&complete("h/postgres/", &k), &only)
                .into_iter()
                .map(|c| (c.segment, c.stamp))
                .collect();
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
