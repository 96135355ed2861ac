//! `[posture]`: when to read the host's patch and reboot state, the weekly
//! maintenance window, and which package releases count as security updates
//! besides Debian's own security archive.

use super::schema::{fragment, Key, Rules};
use crate::schedule::Schedule;
use crate::window::MaintenanceWindow;

fragment! {
    /// `[posture]` as written in one file.
    raw RawPosture;
    /// Validated `[posture]`.
    #[derive(Debug, Clone)]
    pub struct PostureConfig {
        /// When the daemon reads the host's posture (hourly).
        schedule: Schedule = ("17 * * * *"),
        /// Weekly window in which reboots are done, read in `timezone`: "DAYS HH:MM-HH:MM".
        maintenance_window: MaintenanceWindow = ("Sun 22:00-24:00"),
        /// Releases whose updates count as security updates besides Debian-Security
        /// (always): "key=glob" pairs, keys origin, label, suite, codename.
        security_origins: Vec<OriginPattern> = (vec![]),
    }
}

impl Rules for RawPosture {}

/// A field of a package release (its `Release` file) that a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseField {
    /// `Origin:` (e.g. `Debian`, `Proxmox`, `apt.postgresql.org`).
    Origin,
    /// `Label:` (e.g. `Debian-Security`).
    Label,
    /// `Suite:` (apt's "archive", e.g. `bookworm-security`, `stable`).
    Suite,
    /// `Codename:` (e.g. `bookworm-security`).
    Codename,
}

/// One extra security origin: comma-separated `key=glob` pairs that must all
/// match a release, as in unattended-upgrades' `Origins-Pattern`
/// (`origin=Proxmox`, `origin=Debian,suite=*-security`). Globs know `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// As written.
    pub text: String,
    /// What must match, in the order written.
    pub fields: Vec<(ReleaseField, String)>,
}

impl OriginPattern {
    /// Parse `key=glob[,key=glob…]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        for pair in text.split(',') {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let field = match k.trim() {
                "origin" | "o" => ReleaseField::Origin,
                "label" | "l" => ReleaseField::Label,
                "suite" | "archive" | "a" => ReleaseField::Suite,
                "codename" | "n" => ReleaseField::Codename,
                other => return Err(format!("unknown key {other:?}")),
            };
            let v = v.trim();
            if v.is_empty() {
                return Err(format!("{pair:?} has no value"));
            }
            if v.contains("${") {
                return Err(format!(
                    "{v:?}: variables such as ${{distro_codename}} are not expanded here"
                ));
            }
            fields.push((field, v.to_owned()));
        }
        Ok(OriginPattern {
            text: text.to_owned(),
            fields,
        })
    }
}

impl Key for OriginPattern {
    type Raw = String;
    fn parse(key: &str, raw: &String) -> Result<Self, (String, String)> {
        OriginPattern::parse(raw).map_err(|e| {
            (
                format!("invalid {key} entry {raw:?}: {e}"),
                "write key=glob pairs joined by commas, keys origin, label, suite, codename, e.g. \"origin=Proxmox\" or \"origin=apt.postgresql.org,suite=bookworm-pgdg\"".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posture_origin_patterns_parse_table() {
        let ok = [
            ("origin=Proxmox", vec![(ReleaseField::Origin, "Proxmox")]),
            (
                "o=Debian,a=*-security",
                vec![
                    (ReleaseField::Origin, "Debian"),
                    (ReleaseField::Suite, "*-security"),
                ],
            ),
            (
                "label=Proxmox Debian Repository, codename=bookworm",
                vec![
                    (ReleaseField::Label, "Proxmox Debian Repository"),
                    (ReleaseField::Codename, "bookworm"),
                ],
            ),
            (
                "l=Debian-Security",
                vec![(ReleaseField::Label, "Debian-Security")],
            ),
        ];
        for (text, want) in ok {
            let p = OriginPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let want: Vec<(ReleaseField, String)> =
                want.into_iter().map(|(f, v)| (f, v.to_owned())).collect();
            assert_eq!(p.fields, want, "{text}");
        }
        for bad in [
            "",
            "Proxmox",
            "origin=",
            "site=deb.debian.org",
            "origin=Debian,codename=${distro_codename}-security",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
