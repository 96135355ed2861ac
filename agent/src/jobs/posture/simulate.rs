//! What `apt-get -s` says it would do, and where each new version comes from.
//! Pure parsers.
//!
//! apt's simulation prints one documented line per package it would unpack:
//! `Inst NAME [CURRENT] (CANDIDATE RELEASES [ARCH])`, where RELEASES lists
//! every release offering the candidate as `Label:Version/Suite` (`Label:` only
//! when the release has a label, `Version/` only when it has a version),
//! joined by `, `. A label may itself contain `:`, `/` or `, `, so the string
//! is not split blindly: it is matched against the releases apt actually has,
//! read from the `Release`/`InRelease` files of its lists directory (deb822
//! data, which also give the `Origin` the line does not show).

/// One `Inst` line: a package apt would upgrade (or newly install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inst {
    /// As apt prints it (`name`, or `name:arch` for a foreign architecture).
    pub package: String,
    /// The installed version; None when apt would install it new.
    pub current: Option<String>,
    /// The version apt would install.
    pub candidate: String,
    /// The releases offering it, as printed (`Debian-Security:12/oldstable-security`).
    pub releases: String,
}

/// The fields of a `Release` file that name a release.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Release {
    /// `Origin:`.
    pub origin: String,
    /// `Label:`.
    pub label: String,
    /// `Suite:` (apt calls it the archive).
    pub suite: String,
    /// `Codename:`.
    pub codename: String,
    /// `Version:`.
    pub version: String,
}

/// Every `Inst` line of a simulation's output. A line whose tail does not
/// parse still counts, with empty `releases`.
pub fn parse_inst(stdout: &str) -> Vec<Inst> {
    stdout.lines().filter_map(parse_inst_line).collect()
}

fn parse_inst_line(line: &str) -> Option<Inst> {
    let rest = line.strip_prefix("Inst ")?;
    let (package, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut current = None;
    if let Some(r) = rest.strip_prefix('[') {
        if let Some((cur, after)) = r.split_once(']') {
            current = Some(cur.to_owned());
            rest = after.trim_start();
        }
    }
    let (candidate, releases) = match rest.strip_prefix('(') {
        Some(body) => {
            let (cand, tail) = body.split_once(' ').unwrap_or((body, ""));
            (cand.trim_end_matches(')'), releases_of(tail))
        }
        None => ("", ""),
    };
    Some(Inst {
        package: package.to_owned(),
        current,
        candidate: candidate.to_owned(),
        releases: releases.to_owned(),
    })
}

/// `RELEASES [ARCH]) [broken deps]` → RELEASES: the text before the last
/// ` [ARCH])` (a label may contain `])`, the broken-dependency list cannot).
fn releases_of(tail: &str) -> &str {
    let is_arch = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if let Some(close) = tail.rfind("])") {
        if let Some(open) = tail[..close].rfind(" [") {
            if is_arch(&tail[open + 2..close]) {
                return &tail[..open];
            }
        }
    }
    tail.trim_end_matches(')')
}

/// The naming fields of a `Release` or `InRelease` file (a clear-signed
/// `InRelease` is read between its armour lines). Only single-line fields
/// are read; the hash lists that follow are ignored.
pub fn parse_release(text: &str) -> Release {
    let mut r = Release::default();
    let mut lines = text.lines().peekable();
    if lines
        .peek()
        .is_some_and(|l| l.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"))
    {
        // Armour headers (`Hash: …`) end at the first empty line.
        for l in lines.by_ref() {
            if l.trim().is_empty() {
                break;
            }
        }
    }
    for l in lines {
        if l.starts_with("-----BEGIN PGP SIGNATURE-----") {
            break;
        }
        if l.starts_with(' ') || l.starts_with('\t') {
            continue;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k {
            "Origin" => r.origin = v,
            "Label" => r.label = v,
            "Suite" => r.suite = v,
            "Codename" => r.codename = v,
            "Version" => r.version = v,
            _ => {}
        }
    }
    r
}

impl Release {
    /// How apt prints this release in a simulation (None: it has no suite,
    /// and apt would print the repository's host instead).
    pub fn printed(&self) -> Option<String> {
        if self.suite.is_empty() {
            return None;
        }
        let mut s = String::new();
        if !self.label.is_empty() {
            s.push_str(&self.label);
            s.push(':');
        }
        if !self.version.is_empty() {
            s.push_str(&self.version);
            s.push('/');
        }
        s.push_str(&self.suite);
        Some(s)
    }

    /// A release known only from its printed form (no `Release` file matched):
    /// `Label:Version/Suite` read from the right; no origin.
    fn guessed(printed: &str) -> Release {
        let (label, rest) = printed.rsplit_once(':').unwrap_or(("", printed));
        let (version, suite) = rest.rsplit_once('/').unwrap_or(("", rest));
        Release {
            label: label.to_owned(),
            suite: suite.to_owned(),
            version: version.to_owned(),
            ..Release::default()
        }
    }
}

/// The releases a printed RELEASES string names, matched against the known
/// releases (longest printed form first, at `, ` boundaries); a part no known
/// release prints as is read by [`Release::guessed`].
pub fn resolve(printed: &str, known: &[Release]) -> Vec<Release> {
    let forms: Vec<(String, &Release)> = known
        .iter()
        .filter_map(|r| r.printed().map(|p| (p, r)))
        .collect();
    let mut out: Vec<Release> = Vec::new();
    let mut rest = printed;
    while !rest.is_empty() {
        let at_boundary = |len: usize| rest.len() == len || rest[len..].starts_with(", ");
        let best = forms
            .iter()
            .filter(|(p, _)| rest.starts_with(p.as_str()) && at_boundary(p.len()))
            .map(|(p, _)| p.len())
            .max();
        let len = match best {
            Some(len) => {
                for (p, r) in &forms {
                    if p.len() == len && rest.starts_with(p.as_str()) && !out.contains(r) {
                        out.push((*r).clone());
                    }
                }
                len
            }
            None => {
                let len = rest.find(", ").unwrap_or(rest.len());
                out.push(Release::guessed(&rest[..len]));
                len
            }
        };
        rest = rest[len..].strip_prefix(", ").unwrap_or(&rest[len..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(origin: &str, label: &str, suite: &str, codename: &str, version: &str) -> Release {
        Release {
            origin: origin.into(),
            label: label.into(),
            suite: suite.into(),
            codename: codename.into(),
            version: version.into(),
        }
    }

    #[test]
    fn posture_inst_lines_table() {
        let out = "NOTE: This is only a simulation!\n\
            Reading package lists...\n\
            Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])\n\
            Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []\n\
            Inst cnx-probe [1.0] (1.1 Debian-Security:bookworm-security [all])\n\
            Inst linux-image-6.1.0-30-amd64 (6.1.124-1 Debian-Security:12/oldstable-security [amd64])\n\
            Inst libc6:i386 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian:12.15/oldstable [i386]) [libc6:amd64 ]\n\
            Inst pg [15.1] (15.2 PostgreSQL for Debian/Ubuntu repository:bookworm-pgdg [amd64])\n\
            Inst odd [1] (2 Weird [label]) name:stable [amd64])\n\
            Conf cnx-probe (1.1 Debian-Security:bookworm-security [all])\n\
            Remv foo [1.0]\n";
        let got = parse_inst(out);
        let want = [
            (
                "base-files",
                Some("12.4+deb12u11"),
                "12.4+deb12u15",
                "Debian:12.15/oldstable",
            ),
            (
                "libgcrypt20-dev",
                Some("1.10.1-3"),
                "1.10.1-3+deb12u1",
                "Debian:12.15/oldstable, Debian-Security:12/oldstable-security",
            ),
            (
                "cnx-probe",
                Some("1.0"),
                "1.1",
                "Debian-Security:bookworm-security",
            ),
            (
                "linux-image-6.1.0-30-amd64",
                None,
                "6.1.124-1",
                "Debian-Security:12/oldstable-security",
            ),
            (
                "libc6:i386",
                Some("2.36-9+deb12u9"),
                "2.36-9+deb12u10",
                "Debian:12.15/oldstable",
            ),
            (
                "pg",
                Some("15.1"),
                "15.2",
                "PostgreSQL for Debian/Ubuntu repository:bookworm-pgdg",
            ),
            ("odd", Some("1"), "2", "Weird [label]) name:stable"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, (p, c, cand, r)) in got.iter().zip(want) {
            assert_eq!(g.package, p);
            assert_eq!(g.current.as_deref(), c, "{p}");
            assert_eq!(g.candidate, cand, "{p}");
            assert_eq!(g.releases, r, "{p}");
        }
    }

    #[test]
    fn posture_release_files_parse_plain_and_clearsigned() {
        let plain = "Origin: Debian\nLabel: Debian-Security\nSuite: bookworm-security\n\
                     Codename: bookworm-security\nDate: x\nSHA256:\n 0123 12 Packages\n";
        assert_eq!(
            parse_release(plain),
            rel(
                "Debian",
                "Debian-Security",
                "bookworm-security",
                "bookworm-security",
                ""
            )
        );
        let signed = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
                      Origin: Debian\nLabel: Debian-Security\nSuite: oldstable-security\n\
                      Version: 12\nCodename: bookworm-security\nMD5Sum:\n abc 1 main/x\n\
                      -----BEGIN PGP SIGNATURE-----\n\nOrigin: Fake\n-----END PGP SIGNATURE-----\n";
        assert_eq!(
            parse_release(signed),
            rel(
                "Debian",
                "Debian-Security",
                "oldstable-security",
                "bookworm-security",
                "12"
            )
        );
    }

    #[test]
    fn posture_printed_releases_resolve_to_known_release_files() {
        let debian = rel("Debian", "Debian", "oldstable", "bookworm", "12.15");
        let security = rel(
            "Debian",
            "Debian-Security",
            "oldstable-security",
            "bookworm-security",
            "12",
        );
        let pgdg = rel(
            "apt.postgresql.org",
            "PostgreSQL for Debian/Ubuntu repository",
            "bookworm-pgdg",
            "bookworm-pgdg",
            "",
        );
        // A label containing ", " and ":".
        let tricky = rel("Acme", "Acme: tools, extras", "stable", "bookworm", "");
        let nosuite = rel("Local", "Local", "", "", "");
        let known = [
            debian.clone(),
            security.clone(),
            pgdg.clone(),
            tricky.clone(),
            nosuite,
        ];
        assert_eq!(debian.printed().as_deref(), Some("Debian:12.15/oldstable"));
        assert_eq!(
            resolve(
                "Debian:12.15/oldstable, Debian-Security:12/oldstable-security",
                &known
            ),
            vec![debian.clone(), security.clone()]
        );
        assert_eq!(
            resolve(
                "PostgreSQL for Debian/Ubuntu repository:bookworm-pgdg",
                &known
            ),
            vec![pgdg]
        );
        assert_eq!(
            resolve("Acme: tools, extras:stable, Debian:12.15/oldstable", &known),
            vec![tricky, debian]
        );
        // Nothing known: read from the right, no origin.
        assert_eq!(
            resolve("Proxmox Debian Repository:bookworm, localhost", &[]),
            vec![
                rel("", "Proxmox Debian Repository", "bookworm", "", ""),
                rel("", "", "localhost", "", "")
            ]
        );
        assert_eq!(resolve("", &known), vec![]);
    }
}
