//! Which backups to delete: a pure function over what a destination holds.
//!
//! Rules (SPEC §4): only *complete* (manifested) backups count; the newest
//! `keep_min` (≥ 1) complete ones are always kept whatever their age; other
//! complete backups older than `retention_days` are deleted; incomplete ones
//! (an object without a manifest: a crashed or failed run) are cleaned, except
//! the one this run is writing (which, once complete, counts as the newest).
//! Names that are not stamps are never touched.

use chrono::{DateTime, NaiveDateTime, Utc};

/// The stamp format of SPEC §4 (`YYYYMMDDTHHMMSSZ`).
pub const STAMP_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A stamp for a start time.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format(STAMP_FORMAT).to_string()
}

/// Parse a stamp; None for anything else.
pub fn parse_stamp(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, STAMP_FORMAT)
        .ok()
        .filter(|_| s.len() == 16)
        .map(|n| n.and_utc())
}

/// One backup directory found on a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Its stamp (directory name).
    pub stamp: String,
    /// Whether its manifest exists.
    pub complete: bool,
}

/// What to do with a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Among the newest `keep_min` complete backups.
    KeepNewest,
    /// Complete and younger than the retention period.
    KeepYoung,
    /// The backup this run is writing (or an unparseable name): not ours to touch.
    Leave,
    /// Complete and older than the retention period.
    DeleteExpired,
    /// No manifest: an incomplete upload.
    CleanIncomplete,
}

/// Decide for every found backup, in input order.
pub fn plan(
    found: &[Found],
    now: DateTime<Utc>,
    retention_days: u32,
    keep_min: u32,
    current: Option<&str>,
) -> Vec<Verdict> {
    let keep_min = keep_min.max(1) as usize;
    let mut complete: Vec<(DateTime<Utc>, usize)> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| f.complete)
        .filter_map(|(i, f)| Some((parse_stamp(&f.stamp)?, i)))
        .collect();
    complete.sort_by(|a, b| b.cmp(a));
    let newest: Vec<usize> = complete.iter().take(keep_min).map(|(_, i)| *i).collect();
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    found
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let Some(t) = parse_stamp(&f.stamp) else {
                return Verdict::Leave;
            };
            if Some(f.stamp.as_str()) == current {
                Verdict::Leave
            } else if !f.complete {
                Verdict::CleanIncomplete
            } else if newest.contains(&i) {
                Verdict::KeepNewest
            } else if t < cutoff {
                Verdict::DeleteExpired
            } else {
                Verdict::KeepYoung
            }
        })
        .collect()
}

/// The order a backup's objects are deleted in: the manifest first (the
/// mirror of writing it last: a run stopped between two deletes leaves an
/// incomplete leftover, never a manifest without its object), then the data,
/// then the stamp's writer marker (a run stopped before that leaves a
/// leftover still marked as ours, which the next run cleans; unmarked, it
/// would look like another writer's and wait a day).
pub fn deletion_order<'a>(keys: &'a [String], manifest: &str) -> Vec<&'a String> {
    let marker = format!("/{}", crate::store::WRITER);
    let rank = |k: &str| {
        if k.ends_with(manifest) {
            0
        } else if k.ends_with(&marker) {
            2
        } else {
            1
        }
    };
    let mut ordered: Vec<&String> = keys.iter().collect();
    ordered.sort_by_key(|k| rank(k));
    ordered
}

#[cfg(test)]
mod tests {
    use super::Verdict::*;
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_stamp("20261123T120000Z").unwrap()
    }

    fn days_ago(d: i64) -> String {
        stamp(now() - chrono::Duration::days(d))
    }

    fn f(stamp: String, complete: bool) -> Found {
        Found { stamp, complete }
    }

    #[test]
    fn retention_table() {
        struct Case {
            name: &'static str,
            found: Vec<Found>,
            keep_min: u32,
            current: Option<String>,
            want: Vec<Verdict>,
        }
        let cases = vec![
            Case {
                name: "old complete backups go, young ones and the newest stay",
                found: vec![
                    f(days_ago(1), true),
                    f(days_ago(13), true),
                    f(days_ago(15), true),
                    f(days_ago(40), true),
                ],
                keep_min: 1,
                current: None,
                want: vec![KeepNewest, KeepYoung, DeleteExpired, DeleteExpired],
            },
            Case {
                name: "every backup older than the period: the newest complete one stays",
                found: vec![
                    f(days_ago(30), true),
                    f(days_ago(20), true),
                    f(days_ago(15), true),
                ],
                keep_min: 1,
                current: None,
                want: vec![DeleteExpired, DeleteExpired, KeepNewest],
            },
            Case {
                name: "an incomplete backup never counts as the newest",
                found: vec![
                    f(days_ago(20), true),
                    f(days_ago(16), false),
                    f(days_ago(1), false),
                ],
                keep_min: 1,
                current: None,
                want: vec![KeepNewest, CleanIncomplete, CleanIncomplete],
            },
            Case {
                name: "keep_min keeps that many old ones",
                found: vec![
                    f(days_ago(30), true),
                    f(days_ago(20), true),
                    f(days_ago(15), true),
                ],
                keep_min: 2,
                current: None,
                want: vec![DeleteExpired, KeepNewest, KeepNewest],
            },
            Case {
                name: "the backup being written is left alone and does not count",
                found: vec![f(days_ago(20), true), f(days_ago(0), false)],
                keep_min: 1,
                current: Some(days_ago(0)),
                want: vec![KeepNewest, Leave],
            },
            Case {
                name: "this run's complete backup is the newest: older expired ones go",
                found: vec![
                    f(days_ago(20), true),
                    f(days_ago(16), true),
                    f(days_ago(0), true),
                ],
                keep_min: 1,
                current: Some(days_ago(0)),
                want: vec![DeleteExpired, DeleteExpired, Leave],
            },
            Case {
                name: "names that are not stamps are never touched",
                found: vec![f("latest".into(), false), f(days_ago(30), true)],
                keep_min: 1,
                current: None,
                want: vec![Leave, KeepNewest],
            },
            Case {
                name: "keep_min 0 is treated as 1",
                found: vec![f(days_ago(30), true)],
                keep_min: 0,
                current: None,
                want: vec![KeepNewest],
            },
            Case {
                name: "nothing found, nothing to do",
                found: vec![],
                keep_min: 1,
                current: None,
                want: vec![],
            },
        ];
        for c in cases {
            let got = plan(&c.found, now(), 14, c.keep_min, c.current.as_deref());
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn stamps_round_trip_and_reject_other_names() {
        let t = now();
        assert_eq!(parse_stamp(&stamp(t)), Some(t));
        assert_eq!(stamp(t), "20261123T120000Z");
        for bad in [
            "2026-11-23",
            "20261123T120000",
            "20261123T126000Z",
            ".partial",
            "",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn deletion_order_is_manifest_then_data_then_the_writer_marker() {
        let keys: Vec<String> = [
            "p/s/.writer",
            "p/s/db.dump.pgp",
            "p/s/manifest.json",
            "p/s/manifest.details.pgp",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        let got: Vec<&str> = deletion_order(&keys, "manifest.json")
            .into_iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "p/s/manifest.json",
                "p/s/db.dump.pgp",
                "p/s/manifest.details.pgp",
                "p/s/.writer"
            ]
        );
    }
}
