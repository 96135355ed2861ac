//! What apt and dpkg say, through their documented machine interfaces:
//! `apt-get -s` (a simulation: no root, no lock, nothing changed),
//! `apt-config shell` (a setting as a shell assignment), the `Release` files
//! of apt's lists directory, and `dpkg-query -W -f` (installed versions).
//! `APT_CONFIG` in the agent's environment reaches every one of them.
//!
//! Never `apt-get update`: the agent reports what the host's own apt knows;
//! keeping that fresh is apt-daily.timer's job, and a stale list shows up as
//! unattended-upgrades not running (ADR 0012).

use super::simulate::{self, Release};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one apt or dpkg call may take (a cold cache on a slow disk
/// takes seconds; anything near this is stuck).
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);
/// The naming fields open every `Release` file; its hash lists can be long.
const RELEASE_HEAD_BYTES: u64 = 64 * 1024;

/// Which upgrade to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// `apt-get upgrade`: installed packages only, nothing new, nothing removed.
    Safe,
    /// `apt-get dist-upgrade`: also what needs new packages or removals (a new kernel ABI).
    Full,
}

/// Run a program to completion, or stop it on cancellation or timeout.
async fn tool(
    program: &str,
    args: &[&str],
    cancel: &CancellationToken,
) -> anyhow::Result<std::process::Output> {
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        // Untranslated, whatever the host's locale.
        .env("LC_ALL", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(TOOL_TIMEOUT, c.output());
    tokio::select! {
        () = cancel.cancelled() => bail!("cancelled while {program} was running"),
        out = run => match out {
            Err(_) => bail!("{program} did not finish within {} s", TOOL_TIMEOUT.as_secs()),
            Ok(out) => out.with_context(|| format!("running {program}")),
        },
    }
}

/// apt's error lines (`E: …`), or the whole stderr when it printed none.
fn apt_errors(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    if errors.is_empty() {
        text.trim().to_owned()
    } else {
        errors.join("; ")
    }
}

/// The `Inst` lines of a simulated upgrade.
pub async fn simulate(
    which: Upgrade,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<simulate::Inst>> {
    let verb = match which {
        Upgrade::Safe => "upgrade",
        Upgrade::Full => "dist-upgrade",
    };
    let out = tool(
        "apt-get",
        &["-s", "-q", "-o", "Debug::NoLocking=1", verb],
        cancel,
    )
    .await?;
    if !out.status.success() {
        bail!(
            "apt-get -s {verb} failed ({}): {}",
            out.status,
            apt_errors(&out.stderr)
        );
    }
    Ok(simulate::parse_inst(&String::from_utf8_lossy(&out.stdout)))
}

/// apt's lists directory (`Dir::State::lists`).
pub async fn lists_dir(cancel: &CancellationToken) -> anyhow::Result<PathBuf> {
    let out = tool("apt-config", &["shell", "D", "Dir::State::lists/d"], cancel).await?;
    if !out.status.success() {
        bail!(
            "apt-config shell failed ({}): {}",
            out.status,
            apt_errors(&out.stderr)
        );
    }
    parse_shell_assignment(&String::from_utf8_lossy(&out.stdout), "D")
        .map(PathBuf::from)
        .context("apt-config did not name Dir::State::lists")
}

/// `NAME='value'` (single quotes, `'\''` for a quote) as `apt-config shell` prints it.
fn parse_shell_assignment(text: &str, name: &str) -> Option<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))?;
    let mut out = String::new();
    for (i, piece) in line.split("'\\''").enumerate() {
        if i > 0 {
            out.push('\'');
        }
        out.push_str(piece);
    }
    Some(
        out.strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .unwrap_or(&out)
            .to_owned(),
    )
}

/// The releases apt knows: every `*_Release` / `*_InRelease` in the lists
/// directory, distinct.
pub fn releases(lists: &Path) -> anyhow::Result<Vec<Release>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(lists).with_context(|| format!("listing {}", lists.display()))?;
    for e in entries {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| n.ends_with("_Release") || n.ends_with("_InRelease")) {
            continue;
        }
        let mut head = String::new();
        let read = crate::fsx::open_read(&p)
            .and_then(|f| f.take(RELEASE_HEAD_BYTES).read_to_string(&mut head));
        match read {
            Ok(_) => out.push(simulate::parse_release(&head)),
            // A file apt replaced while we read: the next run sees the new one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The installed version of each of `packages` that is installed.
pub async fn installed_versions(
    packages: &[String],
    cancel: &CancellationToken,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut args = vec![
        "-W",
        "-f",
        "${Package}\t${Version}\t${db:Status-Status}\n",
        "--",
    ];
    args.extend(packages.iter().map(String::as_str));
    let out = tool("dpkg-query", &args, cancel).await?;
    // Exit 1: some of the names are unknown to dpkg, which is expected.
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "dpkg-query failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (p, v, status) = (f.next()?, f.next()?, f.next()?);
            (status == "installed").then(|| (p.to_owned(), v.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posture_apt_config_shell_assignments() {
        assert_eq!(
            parse_shell_assignment("D='/var/lib/apt/lists/'\n", "D").as_deref(),
            Some("/var/lib/apt/lists/")
        );
        assert_eq!(
            parse_shell_assignment("X='1'\nD='/srv/it'\\''s/'\n", "D").as_deref(),
            Some("/srv/it's/")
        );
        assert_eq!(parse_shell_assignment("", "D"), None);
    }

    #[test]
    fn posture_release_files_are_read_from_the_lists_directory() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(d.path().join(n), t).unwrap();
        w("deb.debian.org_debian-security_dists_bookworm-security_InRelease",
          "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nLabel: Debian-Security\nSuite: oldstable-security\nVersion: 12\nCodename: bookworm-security\n-----BEGIN PGP SIGNATURE-----\n");
        w(
            "_srv_repo_._Release",
            "Origin: Debian\nLabel: Debian-Security\nSuite: bookworm-security\n",
        );
        w("mirror2_debian-security_dists_bookworm-security_InRelease",
          "Origin: Debian\nLabel: Debian-Security\nSuite: oldstable-security\nVersion: 12\nCodename: bookworm-security\n");
        w(
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
            "Package: x\n",
        );
        w("lock", "");
        let got = releases(d.path()).unwrap();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got.iter().all(|r| r.label == "Debian-Security"));
    }
}
