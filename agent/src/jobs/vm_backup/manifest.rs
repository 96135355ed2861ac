//! Where a VM backup lives on a destination and what its manifest says
//! (SPEC §12): `{prefix}/vm/{vmid}/{stamp}/{archive}.pgp`, then
//! `manifest.json` (format `cloudnx-vm-backup/1`) written last.

use crate::pve::GuestType;
use serde::{Deserialize, Serialize};

/// The manifest format.
pub const FORMAT: &str = "cloudnx-vm-backup/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// `manifest.json` of one VM backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The host that wrote it.
    pub host_id: String,
    /// Guest id.
    pub vmid: u32,
    /// `qemu` or `lxc`.
    #[serde(rename = "type")]
    pub guest_type: GuestType,
    /// The Proxmox node it was taken on.
    pub node: String,
    /// The archive's volume id on the dump storage.
    pub volid: String,
    /// The archive's file name (`vzdump-qemu-101-….vma.zst`).
    pub archive: String,
    /// Bytes of the encrypted object.
    pub size_bytes: u64,
    /// SHA-256 of the encrypted object (hex).
    pub sha256: String,
    /// Bytes of the archive.
    pub plaintext_size_bytes: u64,
    /// SHA-256 of the archive (hex).
    pub plaintext_sha256: String,
    /// Fingerprints of the keys it is encrypted to.
    pub recipients: Vec<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// The audit log head when the manifest was written (`{seq, hash}`, SPEC §11).
    pub audit_head: Option<crate::audit::Head>,
    /// The agent instance that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// `WARNINGS: n` of the vzdump task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<String>,
}

/// `{prefix}/vm/`.
pub fn vm_root(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        "vm/".to_owned()
    } else {
        format!("{p}/vm/")
    }
}

/// `{prefix}/vm/{vmid}/`.
pub fn guest_dir(prefix: &str, vmid: u32) -> String {
    format!("{}{vmid}/", vm_root(prefix))
}

/// `{prefix}/vm/{vmid}/{stamp}/`.
pub fn stamp_dir(prefix: &str, vmid: u32, stamp: &str) -> String {
    format!("{}{stamp}/", guest_dir(prefix, vmid))
}

/// `{prefix}/vm/{vmid}/{stamp}/{archive}.pgp`.
pub fn object_key(prefix: &str, vmid: u32, stamp: &str, archive: &str) -> String {
    format!("{}{archive}.pgp", stamp_dir(prefix, vmid, stamp))
}

/// `{prefix}/vm/{vmid}/{stamp}/manifest.json`.
pub fn manifest_key(prefix: &str, vmid: u32, stamp: &str) -> String {
    format!("{}{MANIFEST}", stamp_dir(prefix, vmid, stamp))
}

/// A vzdump archive file name as Proxmox writes it, and the guest type it
/// holds: `vzdump-{qemu|lxc}-{vmid}-YYYY_MM_DD-hh_mm_ss.{vma|tar}[.zst|.gz|.lzo]`.
/// Anything else (a path, another guest's archive) is refused.
pub fn archive_name(name: &str, vmid: u32) -> Option<GuestType> {
    let (t, rest) = if let Some(r) = name.strip_prefix("vzdump-qemu-") {
        (GuestType::Qemu, r)
    } else if let Some(r) = name.strip_prefix("vzdump-lxc-") {
        (GuestType::Lxc, r)
    } else {
        return None;
    };
    let rest = rest.strip_prefix(&format!("{vmid}-"))?;
    let ok_chars = rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let ext_ok = [".vma", ".tar"].iter().any(|e| {
        rest.ends_with(e)
            || [".zst", ".gz", ".lzo"]
                .iter()
                .any(|c| rest.ends_with(&format!("{e}{c}")))
    });
    (ok_chars && ext_ok && !rest.contains("..")).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_backup_keys_follow_the_spec_layout() {
        assert_eq!(
            object_key(
                "h1/",
                101,
                "20261202T030000Z",
                "vzdump-qemu-101-2026_12_02-03_00_00.vma.zst"
            ),
            "h1/vm/101/20261202T030000Z/vzdump-qemu-101-2026_12_02-03_00_00.vma.zst.pgp"
        );
        assert_eq!(manifest_key("", 7, "S"), "vm/7/S/manifest.json");
    }

    #[test]
    fn vm_backup_archive_names_are_checked() {
        let good = [
            (
                "vzdump-qemu-101-2026_12_02-03_00_00.vma.zst",
                GuestType::Qemu,
            ),
            ("vzdump-lxc-101-2026_12_02-03_00_00.tar.gz", GuestType::Lxc),
            ("vzdump-qemu-101-2026_12_02-03_00_00.vma", GuestType::Qemu),
        ];
        for (n, t) in good {
            assert_eq!(archive_name(n, 101), Some(t), "{n}");
        }
        for bad in [
            "vzdump-qemu-102-2026_12_02-03_00_00.vma.zst",
            "../vzdump-qemu-101-x.vma",
            "vzdump-qemu-101-x/../../etc.vma",
            "vzdump-qemu-101-2026.log",
            "vzdump-openvz-101-2026.tar",
        ] {
            assert_eq!(archive_name(bad, 101), None, "{bad}");
        }
    }
}
