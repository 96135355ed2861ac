//! The mount/mapping logic of luks-check against recorded sysfs + mountinfo
//! trees (tests/fixtures/luks/*, in the layout record.sh writes): LUKS directly
//! under the filesystem, LVM on LUKS, and look-alikes that are not encrypted.

use cloudnx_agent::config::{LuksPolicy, LuksVolume};
use cloudnx_agent::jobs::luks::inspect::{HeaderState, Inspection, Keyslot, Pbkdf, SlotState};
use cloudnx_agent::jobs::luks::live::{Mapping, MountState, Roots, Snapshot};
use cloudnx_agent::jobs::luks::policy::evaluate;
use std::path::{Path, PathBuf};

const UUID: &str = "0b5d2c1e-6a3f-4c1b-9d7e-2f8a9b0c1d2e";

fn fixture(name: &str) -> Snapshot {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/luks")
        .join(name);
    Snapshot::read(&Roots {
        sysfs: root.join("sys"),
        mountinfo: root.join("mountinfo"),
    })
    .unwrap()
}

fn paths(p: &[&str]) -> Vec<PathBuf> {
    p.iter().map(PathBuf::from).collect()
}

/// Checks a compliant header + this live state fails, by name (the configured
/// device is sda2, 8:2, as in every fixture).
fn live_checks(s: &Snapshot, mountpoint: &str) -> Vec<&'static str> {
    live_checks_on(s, mountpoint, (8, 2))
}

fn live_checks_on(s: &Snapshot, mountpoint: &str, backing: (u32, u32)) -> Vec<&'static str> {
    let policy = LuksPolicy {
        luks_version: 2,
        cipher: "aes-xts-plain64".into(),
        key_bits: 512,
        pbkdf: "argon2id".into(),
        max_keyslots: 2,
    };
    let vol = LuksVolume {
        name: "vmdata".into(),
        device: "/dev/sda2".into(),
        mountpoint: Some(mountpoint.into()),
        keyfile: None,
        require_open: true,
    };
    let h = Inspection {
        luks_version: 2,
        uuid: UUID.into(),
        label: String::new(),
        cipher: "aes".into(),
        cipher_mode: "xts-plain64".into(),
        key_bits: 512,
        seqid: Some(3),
        header_id: "3".into(),
        keyslots: vec![Keyslot {
            slot: 0,
            state: SlotState::Active,
            pbkdf: Some(Pbkdf {
                kind: "argon2id".into(),
                hash: None,
                iterations: 4,
                memory_kb: 1 << 20,
                threads: 4,
            }),
        }],
        tokens: vec![],
    };
    let live = s.volume("vmdata", UUID, Some(Path::new(mountpoint)), Some(backing));
    evaluate(&policy, &vol, &HeaderState::Luks(Box::new(h)), Some(&live))
        .iter()
        .map(|f| f.check.as_str())
        .collect()
}

#[test]
fn luks_direct_mount_is_on_the_volumes_own_mapping() {
    let s = fixture("luks-direct");
    assert_eq!(
        s.mapping("vmdata", UUID, Some((8, 2))),
        Mapping::Open {
            devno: "254:0".into()
        }
    );
    assert_eq!(
        s.mount_state(Path::new("/var/lib/vz"), Some((254, 0))),
        MountState::OnMapping {
            source: "/dev/mapper/vmdata".into()
        }
    );
    assert!(live_checks(&s, "/var/lib/vz").is_empty());
    // Another LUKS volume's uuid with the same mapping name is not this volume.
    let other = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    assert!(matches!(
        s.mapping("vmdata", other, None),
        Mapping::Foreign { .. }
    ));
    assert!(matches!(
        s.volume("vmdata", other, Some(Path::new("/var/lib/vz")), None)
            .mount,
        Some(MountState::Elsewhere { .. })
    ));
}

#[test]
fn mapping_of_a_cloned_header_on_another_disk_is_not_the_volumes() {
    let s = fixture("luks-direct");
    // Same uuid and name, but the configured device is sda3, not sda2.
    assert_eq!(
        s.mapping("vmdata", UUID, Some((8, 3))),
        Mapping::OtherDevice {
            devno: "254:0".into(),
            expected: "8:3".into()
        }
    );
    assert_eq!(
        live_checks_on(&s, "/var/lib/vz", (8, 3)),
        vec!["not_open", "mount_not_on_mapping"]
    );
    // Through LVM the backing disk is found below the crypt mapping as well.
    let lvm = fixture("lvm-on-luks");
    assert!(matches!(
        lvm.mapping("vmdata", UUID, Some((8, 2))),
        Mapping::Open { .. }
    ));
    assert_eq!(
        live_checks_on(&lvm, "/var/lib/vz", (8, 2)),
        Vec::<&str>::new()
    );
}

#[test]
fn luks_direct_unencrypted_disk_under_a_data_path_is_a_violation_but_tmpfs_is_not() {
    let s = fixture("luks-direct");
    let v = s.unencrypted_under(&paths(&["/var/lib/vz", "/srv/data"]));
    let got: Vec<(&Path, &str, &str)> = v
        .iter()
        .map(|u| (u.mountpoint.as_path(), u.source.as_str(), u.fstype.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(Path::new("/srv/data/scratch"), "/dev/sda3", "xfs")]
    );
    assert_eq!(v[0].data_path, PathBuf::from("/srv/data"));
    // "/srv/dat" is not a parent of "/srv/data/scratch": paths compare by component.
    assert!(s.unencrypted_under(&paths(&["/srv/dat"])).is_empty());
}

#[test]
fn lvm_on_luks_mount_reaches_the_crypt_mapping_through_slaves() {
    let s = fixture("lvm-on-luks");
    assert_eq!(
        s.mapping("vmdata", UUID, Some((8, 2))),
        Mapping::Open {
            devno: "254:0".into()
        }
    );
    assert_eq!(
        s.mount_state(Path::new("/var/lib/vz"), Some((254, 0))),
        MountState::OnMapping {
            source: "/dev/mapper/pve-data".into()
        }
    );
    assert!(live_checks(&s, "/var/lib/vz").is_empty());
    // btrfs reports an anonymous 0:N device: its source names the LV, which is on LUKS.
    assert!(s
        .unencrypted_under(&paths(&["/srv/data", "/var/lib/vz", "/"]))
        .iter()
        .all(|u| u.mountpoint == Path::new("/boot")));
    assert_eq!(
        s.unencrypted_under(&paths(&["/"])).len(),
        1,
        "only /boot (sda1) is unencrypted"
    );
    // The LV is not itself a crypt mapping: as a "volume" named pve-data it is foreign.
    assert!(matches!(
        s.mapping("pve-data", UUID, None),
        Mapping::Foreign { .. }
    ));
}

#[test]
fn look_alike_lv_named_like_the_volume_is_not_its_mapping() {
    let s = fixture("look-alike");
    match s.mapping("vmdata", UUID, Some((8, 2))) {
        Mapping::Foreign { dm_uuid } => assert!(dm_uuid.starts_with("LVM-"), "{dm_uuid}"),
        m => panic!("an LV named vmdata must not count as the open volume: {m:?}"),
    }
    assert_eq!(
        live_checks(&s, "/var/lib/vz"),
        vec!["not_open", "mount_not_on_mapping"]
    );
    assert_eq!(live_checks(&s, "/nowhere"), vec!["not_open", "not_mounted"]);
}

#[test]
fn look_alike_verity_overlay_and_plain_lv_under_data_paths_are_unencrypted() {
    let s = fixture("look-alike");
    let mut got: Vec<String> = s
        .unencrypted_under(&paths(&["/var/lib/vz", "/srv/data"]))
        .iter()
        .map(|u| u.mountpoint.display().to_string())
        .collect();
    got.sort();
    // /srv/data/backup is on another LUKS volume's crypt mapping: encrypted, so fine.
    assert_eq!(got, vec!["/srv/data/over", "/srv/data/usr", "/var/lib/vz"]);
}

#[test]
fn record_script_captures_exactly_what_the_checker_reads_from_this_host() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks/record.sh");
    // Other jobs on this machine may attach loop devices meanwhile: record again
    // on a mismatch, but three mismatches in a row are a real difference.
    let mut last = None;
    for _ in 0..3 {
        let st = std::process::Command::new("sh")
            .arg(&script)
            .arg(out.path())
            .status()
            .unwrap();
        assert!(st.success(), "record.sh failed");
        let live = Snapshot::read(&Roots::system()).unwrap();
        let recorded = Snapshot::read(&Roots {
            sysfs: out.path().join("sys"),
            mountinfo: out.path().join("mountinfo"),
        })
        .unwrap();
        assert!(!live.mounts.is_empty());
        if recorded == live {
            return;
        }
        last = Some((recorded, live));
        std::fs::remove_dir_all(out.path().join("sys")).unwrap();
    }
    let (recorded, live) = last.unwrap();
    assert_eq!(recorded, live);
}

#[test]
fn the_storage_of_a_path_is_its_innermost_mount_encrypted_in_memory_or_on_disk() {
    // The drill's spool check (SPEC §10): dm-crypt or tmpfs, else refused.
    let s = fixture("luks-direct");
    let at = |p: &str| {
        s.storage_of(Path::new(p))
            .map(|(m, safe)| (m.mountpoint.clone(), safe))
    };
    assert_eq!(at("/var/lib/vz/spool"), Some(("/var/lib/vz".into(), true)));
    assert_eq!(
        at("/var/lib/vz/tmp/x"),
        Some(("/var/lib/vz/tmp".into(), true))
    );
    assert_eq!(at("/var/tmp"), Some(("/".into(), false)));
    assert_eq!(
        at("/srv/data/scratch/d"),
        Some(("/srv/data/scratch".into(), false))
    );
    // Through LVM on LUKS the mapping is found below the LV.
    let lvm = fixture("lvm-on-luks");
    assert_eq!(
        lvm.storage_of(Path::new("/var/lib/vz/drill"))
            .map(|(_, safe)| safe),
        Some(true)
    );
    assert_eq!(
        lvm.storage_of(Path::new("/boot/x")).map(|(_, safe)| safe),
        Some(false)
    );
}
