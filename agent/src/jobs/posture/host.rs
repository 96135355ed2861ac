//! The host facts besides apt's: the reboot flag packages leave in
//! `/run/reboot-required`, the kernels in `/boot`, the running kernel, and
//! when unattended-upgrades last ran. Everything here is world-readable (the
//! daemon runs unprivileged, `ProcSubset=pid`, so the running kernel comes
//! from uname(2), not /proc). Paths are fields so tests can point them at a
//! directory of their own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the facts are read.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/run/reboot-required` (with `.pkgs` beside it).
    pub reboot_flag: PathBuf,
    /// `/boot`, holding `vmlinuz-RELEASE`.
    pub boot_dir: PathBuf,
    /// The stamps apt's daily job and unattended-upgrades touch on each run.
    pub uu_stamps: Vec<PathBuf>,
    /// unattended-upgrades' log: its mtime when no stamp exists.
    pub uu_log: PathBuf,
    /// The program whose presence means unattended-upgrades is installed.
    pub uu_program: PathBuf,
}

/// `/run/reboot-required`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RebootFlag {
    /// When it was written (Unix seconds).
    pub since: Option<i64>,
    /// The packages that asked (`/run/reboot-required.pkgs`).
    pub packages: Vec<String>,
}

/// A kernel image in /boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledKernel {
    /// `6.1.0-18-amd64`.
    pub release: String,
    /// When the image was installed (its inode change time; dpkg keeps the
    /// package's build mtime).
    pub installed_at: i64,
}

/// What is known of unattended-upgrades.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnattendedUpgrades {
    /// Its program exists.
    pub installed: bool,
    /// When it last ran (Unix seconds) and the file that says so.
    pub last_run: Option<(i64, PathBuf)>,
}

impl Host {
    /// This machine's paths (Debian 12).
    pub fn system() -> Self {
        Host {
            reboot_flag: "/run/reboot-required".into(),
            boot_dir: "/boot".into(),
            uu_stamps: vec![
                // Written by unattended-upgrade itself on every run.
                "/var/lib/apt/periodic/unattended-upgrades-stamp".into(),
                // Written by apt.systemd.daily after a successful run.
                "/var/lib/apt/periodic/upgrade-stamp".into(),
            ],
            uu_log: "/var/log/unattended-upgrades/unattended-upgrades.log".into(),
            uu_program: "/usr/bin/unattended-upgrade".into(),
        }
    }

    /// The reboot flag, when present.
    pub fn reboot_flag(&self) -> std::io::Result<Option<RebootFlag>> {
        let meta = match std::fs::metadata(&self.reboot_flag) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut pkgs_path = self.reboot_flag.clone().into_os_string();
        pkgs_path.push(".pkgs");
        let mut packages: Vec<String> = std::fs::read_to_string(PathBuf::from(pkgs_path))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        packages.sort();
        packages.dedup();
        Ok(Some(RebootFlag {
            since: Some(meta.mtime()),
            packages,
        }))
    }

    /// The kernel images in /boot (none when it is empty or absent).
    pub fn installed_kernels(&self) -> std::io::Result<Vec<InstalledKernel>> {
        let rd = match std::fs::read_dir(&self.boot_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(release) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            // `vmlinuz-6.1.0-18-amd64.dpkg-tmp` and friends are not kernels.
            if release.is_empty() || release.contains(".dpkg-") || release.ends_with(".bak") {
                continue;
            }
            if let Ok(m) = std::fs::metadata(e.path()) {
                if m.is_file() {
                    out.push(InstalledKernel {
                        release: release.to_owned(),
                        installed_at: m.ctime(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.release.cmp(&b.release));
        Ok(out)
    }

    /// When unattended-upgrades last ran: the newest stamp, else its log.
    pub fn unattended_upgrades(&self) -> UnattendedUpgrades {
        let mtime = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.mtime(), p.to_owned()));
        let last_run = self
            .uu_stamps
            .iter()
            .filter_map(|p| mtime(p))
            .max_by_key(|(t, _)| *t)
            .or_else(|| mtime(&self.uu_log));
        UnattendedUpgrades {
            installed: self.uu_program.exists(),
            last_run,
        }
    }
}

/// The running kernel: (`uname -r`, `uname -v`).
pub fn running_kernel() -> (String, String) {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.version().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(d: &Path) -> Host {
        Host {
            reboot_flag: d.join("run/reboot-required"),
            boot_dir: d.join("boot"),
            uu_stamps: vec![
                d.join("periodic/unattended-upgrades-stamp"),
                d.join("periodic/upgrade-stamp"),
            ],
            uu_log: d.join("log/unattended-upgrades.log"),
            uu_program: d.join("bin/unattended-upgrade"),
        }
    }

    fn touch(p: &Path, mtime: i64) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.unsigned_abs());
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn posture_host_facts_from_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let h = host(d.path());
        // Nothing there.
        assert_eq!(h.reboot_flag().unwrap(), None);
        assert_eq!(h.installed_kernels().unwrap(), vec![]);
        assert_eq!(
            h.unattended_upgrades(),
            UnattendedUpgrades {
                installed: false,
                last_run: None
            }
        );
        // The flag with its package list.
        touch(&h.reboot_flag, 1_700_000_000);
        std::fs::write(
            d.path().join("run/reboot-required.pkgs"),
            "linux-image-6.1.0-21-amd64\nlibc6\nlibc6\n",
        )
        .unwrap();
        assert_eq!(
            h.reboot_flag().unwrap(),
            Some(RebootFlag {
                since: Some(1_700_000_000),
                packages: vec!["libc6".into(), "linux-image-6.1.0-21-amd64".into()]
            })
        );
        // Kernels: only vmlinuz-* files that are not dpkg leftovers.
        for n in [
            "vmlinuz-6.1.0-18-amd64",
            "vmlinuz-6.1.0-21-amd64",
            "vmlinuz-6.1.0-21-amd64.dpkg-tmp",
            "initrd.img-6.1.0-18-amd64",
            "config-6.1.0-18-amd64",
        ] {
            touch(&h.boot_dir.join(n), 1);
        }
        let releases: Vec<String> = h
            .installed_kernels()
            .unwrap()
            .into_iter()
            .map(|k| k.release)
            .collect();
        assert_eq!(releases, ["6.1.0-18-amd64", "6.1.0-21-amd64"]);
        // unattended-upgrades: the log only when no stamp exists, else the newest stamp.
        touch(&h.uu_log, 300);
        assert_eq!(
            h.unattended_upgrades().last_run,
            Some((300, h.uu_log.clone()))
        );
        touch(&h.uu_stamps[1], 100);
        touch(&h.uu_stamps[0], 200);
        touch(&h.uu_program, 1);
        assert_eq!(
            h.unattended_upgrades(),
            UnattendedUpgrades {
                installed: true,
                last_run: Some((200, h.uu_stamps[0].clone()))
            }
        );
    }

    #[test]
    fn posture_running_kernel_is_known() {
        let (release, _) = running_kernel();
        assert!(!release.is_empty());
    }
}
