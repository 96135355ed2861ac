//! Live state without shelling out: dm mappings from sysfs
//! (`/sys/dev/block/M:m/dm/{name,uuid}` and `slaves/`), mounts from
//! `/proc/self/mountinfo`. Both roots are injectable ([`Roots`]) so tests read
//! recorded trees; reading never changes anything.
//!
//! A mount is "on a volume's mapping" when its device, followed down through
//! `slaves/` (LVM, dm-linear, md, …), reaches the dm device whose uuid is
//! `CRYPT-LUKS{1,2}-<luks uuid without dashes>-<volume name>`: a device that is
//! merely *named* like the volume (an LV called `vmdata`) is not.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the live state is read from.
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs mount (`/sys`).
    pub sysfs: PathBuf,
    /// mountinfo file (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

impl Roots {
    /// This machine.
    pub fn system() -> Self {
        Roots {
            sysfs: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
        }
    }
}

/// A block device number.
pub type DevNo = (u32, u32);

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `major:minor` of the mounted device (major 0: no block device, e.g. tmpfs, btrfs).
    pub devno: DevNo,
    /// Where it is mounted (unescaped).
    pub mountpoint: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (unescaped), e.g. `/dev/mapper/vmdata`.
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let oct = &b[i + 1..(i + 4).min(b.len())];
            if oct.len() == 3 && oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_devno(s: &str) -> Option<DevNo> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            // id parent M:m root mountpoint options [optional…] - fstype source superopts
            let sep = f.iter().skip(6).position(|x| *x == "-")? + 6;
            Some(Mount {
                devno: parse_devno(f.get(2)?)?,
                mountpoint: PathBuf::from(unescape(f.get(4)?)),
                fstype: unescape(f.get(sep + 1)?),
                source: unescape(f.get(sep + 2).copied().unwrap_or("")),
            })
        })
        .collect()
}

/// One block device as sysfs describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    kname: Option<String>,
    dm_name: Option<String>,
    dm_uuid: Option<String>,
    slaves: Vec<DevNo>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// The volume's own dm-crypt uuid matches `CRYPT-LUKS{1,2}-<uuid hex>-<name>`.
pub fn is_own_crypt_uuid(dm_uuid: &str, luks_uuid: &str, name: &str) -> bool {
    let hex: String = luks_uuid.chars().filter(|c| *c != '-').collect();
    ["CRYPT-LUKS1-", "CRYPT-LUKS2-"].iter().any(|p| {
        dm_uuid
            .strip_prefix(p)
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(h, n)| h.eq_ignore_ascii_case(&hex) && n == name)
    })
}

/// dm uuids cryptsetup gives to encrypting targets (not VERITY/INTEGRITY, which
/// cryptsetup also creates but which do not encrypt).
fn is_encrypting_dm_uuid(dm_uuid: &str) -> bool {
    [
        "CRYPT-LUKS1-",
        "CRYPT-LUKS2-",
        "CRYPT-PLAIN-",
        "CRYPT-TCRYPT-",
        "CRYPT-BITLK-",
        "CRYPT-LOOPAES-",
        "CRYPT-FVAULT2-",
    ]
    .iter()
    .any(|p| dm_uuid.starts_with(p))
}

/// Filesystems that live in memory or are kernel interfaces: never a disk.
const NOT_ON_DISK: &[&str] = &[
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "devpts",
    "configfs",
    "fusectl",
    "efivarfs",
    "binfmt_misc",
    "autofs",
    "rpc_pipefs",
    "nsfs",
];

/// The state of a volume's dm mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Mapping {
    /// Its own dm-crypt mapping exists.
    Open {
        /// `M:m` of the mapping.
        devno: String,
    },
    /// No dm device has the volume's name.
    Closed,
    /// A dm device has the name but is not this volume's dm-crypt mapping.
    Foreign {
        /// That device's dm uuid.
        dm_uuid: String,
    },
    /// This volume's uuid and name, but on another disk than the configured
    /// device (a cloned header).
    OtherDevice {
        /// `M:m` of that mapping.
        devno: String,
        /// `M:m` of the configured device.
        expected: String,
    },
}

/// What is mounted at a volume's mountpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MountState {
    /// Nothing.
    NotMounted,
    /// A filesystem whose device chain reaches the volume's mapping.
    OnMapping {
        /// Mount source.
        source: String,
    },
    /// A filesystem on something else.
    Elsewhere {
        /// Mount source.
        source: String,
        /// Filesystem type.
        fstype: String,
    },
}

/// A volume's live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeLive {
    /// Its mapping.
    pub mapping: Mapping,
    /// Its mount, when a mountpoint is configured.
    pub mount: Option<MountState>,
}

/// A filesystem under a data path that is not on an encrypting mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnencryptedMount {
    /// Where.
    pub mountpoint: PathBuf,
    /// Mount source.
    pub source: String,
    /// Filesystem type.
    pub fstype: String,
    /// The data path it is under.
    pub data_path: PathBuf,
}

/// sysfs block devices and mounts, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    nodes: BTreeMap<DevNo, Node>,
    /// Every mount, in mountinfo order.
    pub mounts: Vec<Mount>,
}

impl Snapshot {
    /// Read `{sysfs}/dev/block/*` and the mountinfo file.
    pub fn read(roots: &Roots) -> anyhow::Result<Snapshot> {
        let text = std::fs::read_to_string(&roots.mountinfo).map_err(|e| {
            anyhow::anyhow!("reading mounts from {}: {e}", roots.mountinfo.display())
        })?;
        let dir = roots.sysfs.join("dev/block");
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("listing block devices in {}: {e}", dir.display()))?;
        let mut nodes = BTreeMap::new();
        for e in rd.flatten() {
            let Some(devno) = e.file_name().to_str().and_then(parse_devno) else {
                continue;
            };
            let p = e.path();
            let kname = read_trim(&p.join("uevent")).and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
            });
            let slaves = std::fs::read_dir(p.join("slaves"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|s| {
                            read_trim(&s.path().join("dev")).and_then(|d| parse_devno(&d))
                        })
                        .collect()
                })
                .unwrap_or_default();
            nodes.insert(
                devno,
                Node {
                    kname,
                    dm_name: read_trim(&p.join("dm/name")),
                    dm_uuid: read_trim(&p.join("dm/uuid")),
                    slaves,
                },
            );
        }
        Ok(Snapshot {
            nodes,
            mounts: parse_mountinfo(&text),
        })
    }

    /// Whether `devno` or anything below it (through `slaves/`) satisfies `pred`.
    fn reaches(&self, devno: DevNo, pred: &dyn Fn(DevNo, &Node) -> bool) -> bool {
        let mut stack = vec![devno];
        let mut seen = BTreeSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d) || seen.len() > 256 {
                continue;
            }
            let Some(n) = self.nodes.get(&d) else {
                continue;
            };
            if pred(d, n) {
                return true;
            }
            stack.extend(n.slaves.iter().copied());
        }
        false
    }

    /// The block device behind a mount: its `M:m`, or for filesystems that
    /// report an anonymous device (btrfs: major 0) the device named by its source.
    fn mount_device(&self, m: &Mount) -> Option<DevNo> {
        if m.devno.0 != 0 {
            return Some(m.devno);
        }
        if let Some(name) = m.source.strip_prefix("/dev/mapper/") {
            return self
                .nodes
                .iter()
                .find(|(_, n)| n.dm_name.as_deref() == Some(name))
                .map(|(d, _)| *d);
        }
        let kname = m.source.strip_prefix("/dev/")?;
        self.nodes
            .iter()
            .find(|(_, n)| n.kname.as_deref() == Some(kname))
            .map(|(d, _)| *d)
    }

    /// The state of the mapping named `name` for the LUKS volume `luks_uuid`.
    /// With `backing` (the configured device's `M:m`, when it is a block
    /// device), the mapping must also sit on that device: a mapping of a
    /// cloned header on another disk carries the same uuid but is not this volume.
    pub fn mapping(&self, name: &str, luks_uuid: &str, backing: Option<DevNo>) -> Mapping {
        let mut foreign = None;
        for (d, n) in &self.nodes {
            if n.dm_name.as_deref() != Some(name) {
                continue;
            }
            let uuid = n.dm_uuid.clone().unwrap_or_default();
            if !is_own_crypt_uuid(&uuid, luks_uuid, name) {
                foreign = Some(Mapping::Foreign { dm_uuid: uuid });
                continue;
            }
            let devno = format!("{}:{}", d.0, d.1);
            match backing {
                Some(b) if !n.slaves.iter().any(|s| self.reaches(*s, &|x, _| x == b)) => {
                    foreign = Some(Mapping::OtherDevice {
                        devno,
                        expected: format!("{}:{}", b.0, b.1),
                    });
                }
                _ => return Mapping::Open { devno },
            }
        }
        foreign.unwrap_or(Mapping::Closed)
    }

    /// What is mounted at `mountpoint` (the topmost mount there wins), judged
    /// against the volume's open mapping `target`.
    pub fn mount_state(&self, mountpoint: &Path, target: Option<DevNo>) -> MountState {
        let Some(m) = self
            .mounts
            .iter()
            .rev()
            .find(|m| m.mountpoint == mountpoint)
        else {
            return MountState::NotMounted;
        };
        let on = match (target, self.mount_device(m)) {
            (Some(t), Some(d)) => self.reaches(d, &|x, _| x == t),
            _ => false,
        };
        if on {
            MountState::OnMapping {
                source: m.source.clone(),
            }
        } else {
            MountState::Elsewhere {
                source: m.source.clone(),
                fstype: m.fstype.clone(),
            }
        }
    }

    /// A volume's live state (`backing`: see [`Snapshot::mapping`]).
    pub fn volume(
        &self,
        name: &str,
        luks_uuid: &str,
        mountpoint: Option<&Path>,
        backing: Option<DevNo>,
    ) -> VolumeLive {
        let mapping = self.mapping(name, luks_uuid, backing);
        let target = match &mapping {
            Mapping::Open { devno } => parse_devno(devno),
            _ => None,
        };
        VolumeLive {
            mount: mountpoint.map(|p| self.mount_state(p, target)),
            mapping,
        }
    }

    /// The mount `path` (absolute, symlinks resolved) lives on — the last
    /// of the longest matching mount points, as the kernel resolves
    /// over-mounts — and whether its bytes stay off unencrypted disks: a
    /// memory filesystem (tmpfs, ramfs), or a device chain that reaches an
    /// encrypting dm mapping.
    pub fn storage_of(&self, path: &Path) -> Option<(&Mount, bool)> {
        let m = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.mountpoint))
            .max_by_key(|m| m.mountpoint.as_os_str().len())?;
        let safe = matches!(m.fstype.as_str(), "tmpfs" | "ramfs")
            || self.mount_device(m).is_some_and(|d| {
                self.reaches(d, &|_, n| {
                    n.dm_uuid.as_deref().is_some_and(is_encrypting_dm_uuid)
                })
            });
        Some((m, safe))
    }

    /// Disk filesystems mounted at or under any of `data_paths` whose device
    /// chain reaches no encrypting dm mapping.
    pub fn unencrypted_under(&self, data_paths: &[PathBuf]) -> Vec<UnencryptedMount> {
        let mut out = Vec::new();
        for m in &self.mounts {
            let Some(dp) = data_paths.iter().find(|p| m.mountpoint.starts_with(p)) else {
                continue;
            };
            if NOT_ON_DISK.contains(&m.fstype.as_str()) {
                continue;
            }
            let encrypted = self.mount_device(m).is_some_and(|d| {
                self.reaches(d, &|_, n| {
                    n.dm_uuid.as_deref().is_some_and(is_encrypting_dm_uuid)
                })
            });
            if !encrypted {
                out.push(UnencryptedMount {
                    mountpoint: m.mountpoint.clone(),
                    source: m.source.clone(),
                    fstype: m.fstype.clone(),
                    data_path: dp.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_optional_fields_and_escapes() {
        let text = "\
36 35 254:1 / /var/lib/vz rw,relatime shared:1 master:2 - ext4 /dev/mapper/vg-vz rw
37 35 0:25 / /srv/my\\040data rw - tmpfs tmpfs rw
garbage line
38 35 8:2 / /boot rw - ext4
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].devno, (254, 1));
        assert_eq!(m[0].mountpoint, PathBuf::from("/var/lib/vz"));
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].source, "/dev/mapper/vg-vz");
        assert_eq!(m[1].mountpoint, PathBuf::from("/srv/my data"));
        assert_eq!(m[2].source, "");
    }

    #[test]
    fn own_crypt_uuid_needs_the_luks_uuid_and_the_name() {
        let u = "0b5d2c1e-6a3f-4c1b-9d7e-2f8a9b0c1d2e";
        let table = [
            (
                "CRYPT-LUKS2-0b5d2c1e6a3f4c1b9d7e2f8a9b0c1d2e-vmdata",
                "vmdata",
                true,
            ),
            (
                "CRYPT-LUKS1-0B5D2C1E6A3F4C1B9D7E2F8A9B0C1D2E-vmdata",
                "vmdata",
                true,
            ),
            (
                "CRYPT-LUKS2-0b5d2c1e6a3f4c1b9d7e2f8a9b0c1d2e-other",
                "vmdata",
                false,
            ),
            (
                "CRYPT-LUKS2-ffffffffffffffffffffffffffffffff-vmdata",
                "vmdata",
                false,
            ),
            ("CRYPT-PLAIN-vmdata", "vmdata", false),
            ("LVM-abc-vmdata", "vmdata", false),
            ("", "vmdata", false),
        ];
        for (dm, name, want) in table {
            assert_eq!(is_own_crypt_uuid(dm, u, name), want, "{dm}");
        }
    }

    #[test]
    fn verity_and_integrity_do_not_count_as_encryption() {
        assert!(is_encrypting_dm_uuid("CRYPT-LUKS2-abc-x"));
        assert!(is_encrypting_dm_uuid("CRYPT-PLAIN-x"));
        assert!(!is_encrypting_dm_uuid("CRYPT-VERITY-abc-x"));
        assert!(!is_encrypting_dm_uuid("CRYPT-INTEGRITY-abc-x"));
        assert!(!is_encrypting_dm_uuid("LVM-abc"));
    }

    #[test]
    fn unescape_handles_truncated_and_bad_escapes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("a\\999"), "a\\999");
        assert_eq!(unescape("\\"), "\\");
    }
}
