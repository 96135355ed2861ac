//! Which updates are security updates: decided by the releases that offer the
//! new version, never by package names or changelogs. Pure.
//!
//! Debian's security archive always counts (`Label: Debian-Security`, or a
//! suite ending in `-security`, as on Ubuntu); `[posture] security_origins`
//! adds releases such as Proxmox's or PostgreSQL's repositories. A version is
//! a security update when ANY release offering it counts, as unattended-upgrades
//! decides: the same version is often in both `bookworm` and
//! `bookworm-security`.

use super::simulate::{self, Inst, Release};
use crate::config::{OriginPattern, ReleaseField};
use std::collections::BTreeSet;

/// One update apt would make, with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The simulation's line.
    pub inst: Inst,
    /// A release offering the new version is a security origin.
    pub security: bool,
}

/// The host's updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Updates {
    /// What `apt-get upgrade` would upgrade (its `Inst` lines, one by one).
    pub pending: Vec<Classified>,
    /// Installed packages only `apt-get dist-upgrade` would upgrade.
    pub held_back: Vec<Classified>,
}

impl Updates {
    /// (security, other) counts of a list.
    pub fn counts(list: &[Classified]) -> (usize, usize) {
        let sec = list.iter().filter(|c| c.security).count();
        (sec, list.len() - sec)
    }

    /// Every package with a security update waiting, pending or held back.
    pub fn security_packages(&self) -> BTreeSet<String> {
        self.pending
            .iter()
            .chain(&self.held_back)
            .filter(|c| c.security)
            .map(|c| c.inst.package.clone())
            .collect()
    }
}

/// Classify the two simulations: `safe` (`apt-get -s upgrade`) is what is
/// pending; upgrades of installed packages that only `full`
/// (`apt-get -s dist-upgrade`) makes are held back; packages `full` would
/// newly install are dependencies of those, not updates of their own.
pub fn classify(
    safe: Vec<Inst>,
    full: Vec<Inst>,
    known: &[Release],
    extra: &[OriginPattern],
) -> Updates {
    let verdict = |inst: Inst| Classified {
        security: is_security(&simulate::resolve(&inst.releases, known), extra),
        inst,
    };
    let in_safe: BTreeSet<String> = safe.iter().map(|i| i.package.clone()).collect();
    Updates {
        held_back: full
            .into_iter()
            .filter(|i| i.current.is_some() && !in_safe.contains(&i.package))
            .map(verdict)
            .collect(),
        pending: safe.into_iter().map(verdict).collect(),
    }
}

/// Whether a release is Debian's (or Ubuntu's) security archive.
pub fn is_distribution_security(r: &Release) -> bool {
    r.label == "Debian-Security" || r.suite.ends_with("-security")
}

/// Whether every field of the pattern matches the release.
pub fn matches(p: &OriginPattern, r: &Release) -> bool {
    p.fields.iter().all(|(field, glob_pattern)| {
        let value = match field {
            ReleaseField::Origin => &r.origin,
            ReleaseField::Label => &r.label,
            ReleaseField::Suite => &r.suite,
            ReleaseField::Codename => &r.codename,
        };
        glob(glob_pattern.as_bytes(), value.as_bytes())
    })
}

/// Whether a version offered by these releases is a security update.
pub fn is_security(releases: &[Release], extra: &[OriginPattern]) -> bool {
    releases
        .iter()
        .any(|r| is_distribution_security(r) || extra.iter().any(|p| matches(p, r)))
}

/// Shell-style glob with `*` (any run) and `?` (one byte), case-sensitive as
/// unattended-upgrades' patterns are.
fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matching with one backtrack point (the last `*`).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == b'?' || c == s[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(origin: &str, label: &str, suite: &str, codename: &str) -> Release {
        Release {
            origin: origin.into(),
            label: label.into(),
            suite: suite.into(),
            codename: codename.into(),
            version: String::new(),
        }
    }

    #[test]
    fn posture_glob_table() {
        for (p, s, want) in [
            ("*", "", true),
            ("*-security", "bookworm-security", true),
            ("*-security", "bookworm-updates", false),
            ("Proxmox", "Proxmox", true),
            ("Proxmox", "proxmox", false),
            ("book?orm*", "bookworm-pgdg", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("", "x", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p:?} ~ {s:?}");
        }
    }

    #[test]
    fn posture_security_classification_table() {
        let debian = rel("Debian", "Debian", "oldstable", "bookworm");
        let security = rel(
            "Debian",
            "Debian-Security",
            "oldstable-security",
            "bookworm-security",
        );
        let flat = rel("Debian", "Debian-Security", "bookworm-security", "");
        let ubuntu = rel("Ubuntu", "Ubuntu", "jammy-security", "jammy");
        let pve = rel("Proxmox", "Proxmox Debian Repository", "stable", "bookworm");
        let pgdg = rel(
            "apt.postgresql.org",
            "PostgreSQL for Debian/Ubuntu repository",
            "bookworm-pgdg",
            "bookworm-pgdg",
        );
        let extra = [
            OriginPattern::parse("origin=Proxmox").unwrap(),
            OriginPattern::parse("o=apt.postgresql.org,a=bookworm-*").unwrap(),
        ];
        let cases: [(&str, Vec<Release>, &[OriginPattern], bool); 9] = [
            ("main archive only", vec![debian.clone()], &[], false),
            ("security archive", vec![security.clone()], &[], true),
            ("in both", vec![debian.clone(), security], &[], true),
            ("flat test repository", vec![flat], &[], true),
            ("ubuntu security suite", vec![ubuntu], &[], true),
            ("proxmox, not configured", vec![pve.clone()], &[], false),
            ("proxmox, configured", vec![pve], &extra, true),
            ("pgdg, configured", vec![pgdg], &extra, true),
            ("nothing known", vec![], &extra, false),
        ];
        for (name, releases, extra, want) in cases {
            assert_eq!(is_security(&releases, extra), want, "{name}");
        }
        // Every field of a pattern must match.
        let both = OriginPattern::parse("origin=Debian,label=Other").unwrap();
        assert!(!matches(&both, &debian));
    }

    #[test]
    fn posture_classify_pending_and_held_back() {
        let known = [
            rel("Debian", "Debian", "oldstable", "bookworm"),
            rel(
                "Debian",
                "Debian-Security",
                "oldstable-security",
                "bookworm-security",
            ),
        ];
        let safe = simulate::parse_inst(
            "Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:oldstable [amd64])\n\
             Inst libssl3 [3.0.15-1] (3.0.17-1 Debian:oldstable, Debian-Security:oldstable-security [amd64])\n",
        );
        let full = simulate::parse_inst(
            "Inst linux-image-6.1.0-40-amd64 (6.1.150-1 Debian-Security:oldstable-security [amd64])\n\
             Inst linux-image-amd64 [6.1.140-1] (6.1.150-1 Debian-Security:oldstable-security [amd64])\n\
             Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:oldstable [amd64])\n\
             Inst libssl3 [3.0.15-1] (3.0.17-1 Debian:oldstable, Debian-Security:oldstable-security [amd64])\n",
        );
        let u = classify(safe, full, &known, &[]);
        assert_eq!(Updates::counts(&u.pending), (1, 1));
        assert_eq!(Updates::counts(&u.held_back), (1, 0));
        assert_eq!(u.held_back[0].inst.package, "linux-image-amd64");
        let names: Vec<String> = u.security_packages().into_iter().collect();
        assert_eq!(names, ["libssl3", "linux-image-amd64"]);
    }
}
