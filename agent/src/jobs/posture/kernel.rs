//! Is the running kernel the newest installed one, and does the host need a
//! reboot? Pure.
//!
//! Installed kernels are the releases of `/boot/vmlinuz-*` (what the boot
//! loader offers), Debian's `6.1.0-18-amd64` and Proxmox's `6.8.12-4-pve`
//! alike, compared in Debian version order among kernels of the running
//! one's flavour (`amd64`, `cloud-amd64`, `rt-amd64`, `pve`), so a second
//! flavour installed beside it is not taken for an upgrade. A package update
//! that replaces the running release in place (same ABI, new build) is caught
//! by comparing the build the kernel reports (`uname -v`: `… Debian 6.1.76-1 …`,
//! `… PMX 6.8.12-4 …`) with the installed package's version.

use super::debver;
use super::host::RebootFlag;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The flavour of a kernel release: what follows its version and ABI
/// (`6.1.0-18-cloud-amd64` → `cloud-amd64`, `6.8.12-4-pve` → `pve`).
pub fn flavour(release: &str) -> &str {
    let mut at = 0;
    for (i, part) in release.split('-').enumerate() {
        if i > 0 && !part.starts_with(|c: char| c.is_ascii_digit()) {
            return &release[at..];
        }
        at += part.len() + 1;
    }
    ""
}

/// The build version a kernel reports in `uname -v` (Debian: `Debian X`,
/// Proxmox: `PMX X`).
pub fn build_version(uname_version: &str) -> Option<&str> {
    let mut words = uname_version.split_whitespace();
    while let Some(w) = words.next() {
        if w == "Debian" || w == "PMX" {
            return words
                .next()
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()));
        }
    }
    None
}

/// The packages that may ship the image of a kernel release.
pub fn image_packages(release: &str) -> Vec<String> {
    [
        "linux-image-{}",
        "linux-image-{}-unsigned",
        "proxmox-kernel-{}",
        "proxmox-kernel-{}-signed",
        "pve-kernel-{}",
    ]
    .iter()
    .map(|t| t.replace("{}", release))
    .collect()
}

/// The kernel part of the reboot verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelVerdict {
    /// `uname -r`.
    pub running: String,
    /// The newest installed release of the running flavour (None: no kernel
    /// of that flavour in /boot, e.g. a container or a kernel booted from elsewhere).
    pub newest_installed: Option<String>,
    /// A newer release than the running one is installed.
    pub newer_installed: bool,
    /// (running build, installed package version) when the running release's
    /// package was updated in place after boot.
    pub outdated_build: Option<(String, String)>,
}

impl KernelVerdict {
    /// Whether the kernel needs a reboot.
    pub fn reboot_required(&self) -> bool {
        self.newer_installed || self.outdated_build.is_some()
    }
}

/// Judge the running kernel against the installed ones.
/// `package_versions`: installed version by package name (see [`image_packages`]).
pub fn judge(
    running: &str,
    uname_version: &str,
    installed: &[String],
    package_versions: &BTreeMap<String, String>,
) -> KernelVerdict {
    let fl = flavour(running);
    let newest = installed
        .iter()
        .filter(|r| flavour(r) == fl)
        .max_by(|a, b| debver::compare(a, b))
        .cloned();
    let newer_installed = newest
        .as_deref()
        .is_some_and(|n| debver::compare(n, running) == Ordering::Greater);
    let outdated_build = build_version(uname_version).and_then(|built| {
        image_packages(running)
            .iter()
            .find_map(|p| package_versions.get(p))
            .filter(|installed| debver::compare(installed, built) == Ordering::Greater)
            .map(|installed| (built.to_owned(), installed.clone()))
    });
    KernelVerdict {
        running: running.to_owned(),
        newest_installed: newest,
        newer_installed,
        outdated_build,
    }
}

/// Whether the host needs a reboot, from what could be read: the flag
/// (`Some(None)`: absent; `None`: unreadable) and the kernel verdict with the
/// time of its evidence. `None` when it cannot be known (a fact is unreadable
/// and the other does not say yes); else (required, earliest evidence, reasons).
pub fn reboot(
    flag: Option<Option<&RebootFlag>>,
    kernel: Option<&(KernelVerdict, Option<i64>)>,
) -> Option<(bool, Option<i64>, Vec<String>)> {
    let flagged = flag.map(|f| f.is_some());
    let by_kernel = kernel.map(|(k, _)| k.reboot_required());
    let required = match (flagged, by_kernel) {
        (Some(true), _) | (_, Some(true)) => true,
        (Some(false), Some(false)) => false,
        _ => return None,
    };
    let mut reasons = Vec::new();
    let mut evidence = Vec::new();
    if let Some(Some(fl)) = flag {
        evidence.extend(fl.since);
        reasons.push(if fl.packages.is_empty() {
            "/run/reboot-required".to_owned()
        } else {
            format!("/run/reboot-required by {}", fl.packages.join(", "))
        });
    }
    if let Some((k, at)) = kernel.filter(|(k, _)| k.reboot_required()) {
        evidence.extend(*at);
        if let Some(newest) = k.newest_installed.as_deref().filter(|_| k.newer_installed) {
            reasons.push(format!(
                "kernel {newest} is installed, {} is running",
                k.running
            ));
        }
        if let Some((built, installed)) = &k.outdated_build {
            reasons.push(format!(
                "kernel {} was updated in place to {installed}, {built} is running",
                k.running
            ));
        }
    }
    Some((required, evidence.into_iter().min(), reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posture_kernel_flavour_and_build_table() {
        for (r, f) in [
            ("6.1.0-18-amd64", "amd64"),
            ("6.1.0-18-cloud-amd64", "cloud-amd64"),
            ("6.1.0-18-rt-amd64", "rt-amd64"),
            ("6.8.12-4-pve", "pve"),
            ("5.15.158-2-pve", "pve"),
            ("6.18.44-fc-v1045", "fc-v1045"),
            ("6.9.0", ""),
        ] {
            assert_eq!(flavour(r), f, "{r}");
        }
        for (v, b) in [
            (
                "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)",
                Some("6.1.76-1"),
            ),
            (
                "#1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4 (2024-11-06T15:04Z)",
                Some("6.8.12-4"),
            ),
            ("#1 SMP PREEMPT_DYNAMIC @0", None),
            ("#1 SMP Debian", None),
        ] {
            assert_eq!(build_version(v), b, "{v}");
        }
    }

    #[test]
    fn posture_reboot_verdict_table() {
        let fresh = KernelVerdict {
            running: "6.1.0-18-amd64".into(),
            newest_installed: Some("6.1.0-18-amd64".into()),
            newer_installed: false,
            outdated_build: None,
        };
        let newer = KernelVerdict {
            newest_installed: Some("6.1.0-21-amd64".into()),
            newer_installed: true,
            ..fresh.clone()
        };
        let flag = RebootFlag {
            since: Some(500),
            packages: vec!["libc6".into()],
        };
        let bare_flag = RebootFlag {
            since: Some(700),
            packages: vec![],
        };
        let k_fresh = (fresh, None);
        let k_newer = (newer, Some(300));
        type Case<'a> = (
            &'a str,
            Option<Option<&'a RebootFlag>>,
            Option<&'a (KernelVerdict, Option<i64>)>,
            Option<(bool, Option<i64>, Vec<&'a str>)>,
        );
        let cases: [Case; 7] = [
            (
                "nothing",
                Some(None),
                Some(&k_fresh),
                Some((false, None, vec![])),
            ),
            (
                "flag",
                Some(Some(&flag)),
                Some(&k_fresh),
                Some((true, Some(500), vec!["/run/reboot-required by libc6"])),
            ),
            (
                "flag and kernel: the earlier evidence",
                Some(Some(&flag)),
                Some(&k_newer),
                Some((
                    true,
                    Some(300),
                    vec![
                        "/run/reboot-required by libc6",
                        "kernel 6.1.0-21-amd64 is installed, 6.1.0-18-amd64 is running",
                    ],
                )),
            ),
            (
                "bare flag, kernel unreadable",
                Some(Some(&bare_flag)),
                None,
                Some((true, Some(700), vec!["/run/reboot-required"])),
            ),
            (
                "kernel says yes, flag unreadable",
                None,
                Some(&k_newer),
                Some((
                    true,
                    Some(300),
                    vec!["kernel 6.1.0-21-amd64 is installed, 6.1.0-18-amd64 is running"],
                )),
            ),
            (
                "no flag, kernel unreadable: unknown",
                Some(None),
                None,
                None,
            ),
            (
                "flag unreadable, kernel fine: unknown",
                None,
                Some(&k_fresh),
                None,
            ),
        ];
        for (name, flag, kernel, want) in cases {
            let want = want
                .map(|(r, e, why)| (r, e, why.into_iter().map(str::to_owned).collect::<Vec<_>>()));
            assert_eq!(reboot(flag, kernel), want, "{name}");
        }
    }

    #[test]
    fn posture_kernel_verdict_table() {
        let deb_v = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)";
        let pmx_v = "#1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4 (2024-11-06T15:04Z)";
        let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let pkgs = |xs: &[(&str, &str)]| {
            xs.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        // (name, running, uname -v, installed, packages, newest, newer, outdated build)
        let cases = [
            (
                "Debian, running the only kernel",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-18-amd64"]),
                pkgs(&[("linux-image-6.1.0-18-amd64", "6.1.76-1")]),
                Some("6.1.0-18-amd64"),
                false,
                None,
            ),
            (
                "Debian, a newer ABI installed",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-18-amd64", "6.1.0-21-amd64"]),
                pkgs(&[("linux-image-6.1.0-18-amd64", "6.1.76-1")]),
                Some("6.1.0-21-amd64"),
                true,
                None,
            ),
            (
                "Debian, running kernel removed, newer installed",
                "6.1.0-9-amd64",
                deb_v,
                v(&["6.1.0-10-amd64"]),
                pkgs(&[]),
                Some("6.1.0-10-amd64"),
                true,
                None,
            ),
            (
                "Debian, same ABI rebuilt in place",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-18-amd64"]),
                pkgs(&[("linux-image-6.1.0-18-amd64", "6.1.76-1+deb12u1")]),
                Some("6.1.0-18-amd64"),
                false,
                Some(("6.1.76-1", "6.1.76-1+deb12u1")),
            ),
            (
                "Debian, signed image is unsigned package name",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-18-amd64"]),
                pkgs(&[("linux-image-6.1.0-18-amd64-unsigned", "6.1.76-1")]),
                Some("6.1.0-18-amd64"),
                false,
                None,
            ),
            (
                "another flavour is not an upgrade",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-18-amd64", "6.1.0-21-rt-amd64"]),
                pkgs(&[]),
                Some("6.1.0-18-amd64"),
                false,
                None,
            ),
            (
                "booted an older kernel on purpose: still a newer one installed",
                "6.1.0-18-amd64",
                deb_v,
                v(&["6.1.0-21-amd64", "6.1.0-18-amd64"]),
                pkgs(&[]),
                Some("6.1.0-21-amd64"),
                true,
                None,
            ),
            (
                "Proxmox, 6.8 series updated",
                "6.8.12-4-pve",
                pmx_v,
                v(&["6.5.13-6-pve", "6.8.12-4-pve", "6.8.12-10-pve"]),
                pkgs(&[("proxmox-kernel-6.8.12-4-pve-signed", "6.8.12-4")]),
                Some("6.8.12-10-pve"),
                true,
                None,
            ),
            (
                "Proxmox, current",
                "6.8.12-4-pve",
                pmx_v,
                v(&["6.5.13-6-pve", "6.8.12-4-pve"]),
                pkgs(&[("proxmox-kernel-6.8.12-4-pve-signed", "6.8.12-4")]),
                Some("6.8.12-4-pve"),
                false,
                None,
            ),
            (
                "no kernel in /boot (container, external kernel)",
                "6.18.44-fc-v1045",
                "#1 SMP PREEMPT_DYNAMIC @0",
                v(&[]),
                pkgs(&[]),
                None,
                false,
                None,
            ),
        ];
        for (name, running, uv, installed, packages, newest, newer, outdated) in cases {
            let got = judge(running, uv, &installed, &packages);
            assert_eq!(got.newest_installed.as_deref(), newest, "{name}");
            assert_eq!(got.newer_installed, newer, "{name}");
            assert_eq!(
                got.outdated_build,
                outdated.map(|(a, b): (&str, &str)| (a.to_owned(), b.to_owned())),
                "{name}"
            );
            assert_eq!(got.reboot_required(), newer || outdated.is_some(), "{name}");
        }
    }
}
