//! `backups list --vm`: the complete VM backups (manifest present) on the
//! destinations, newest first — what `vm-restore --backup STAMP` can take.
//! Read-only; exit 1 when a destination could not be listed.

use super::{load_or_report, EXIT_FAILED, EXIT_OK};
use crate::jobs::vm_backup::manifest;
use crate::jobs::vm_restore;
use serde::Serialize;
use std::path::PathBuf;

/// One listed VM backup (`--json` prints an array of these).
#[derive(Debug, Clone, Serialize)]
pub struct ListedVm {
    /// Guest id.
    pub vmid: u32,
    /// `qemu` / `lxc`.
    #[serde(rename = "type")]
    pub guest_type: crate::pve::GuestType,
    /// Destination name.
    pub destination: String,
    /// Host whose backup it is.
    pub host_id: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub stamp: String,
    /// The object's key.
    pub key: String,
    /// The vzdump archive's name.
    pub archive: String,
    /// Encrypted size.
    pub size_bytes: u64,
    /// When the backup finished (RFC 3339).
    pub finished_at: String,
    /// Object Lock retention end, when the store says.
    pub locked_until: Option<String>,
}

/// `backups list --vm`.
pub async fn list(
    flag: Option<PathBuf>,
    destination: Option<&str>,
    host: Option<&str>,
    json: bool,
) -> u8 {
    let (_, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(dests) = super::backups::chosen(&cfg, destination) else {
        return super::EXIT_USAGE;
    };
    let mut all = Vec::new();
    let mut failed = false;
    for d in dests {
        let prefix = host.map_or_else(|| d.prefix.clone(), str::to_owned);
        match on(d, &prefix).await {
            Ok(found) => all.extend(found),
            Err(e) => {
                failed = true;
                eprintln!("cloudnx-agent: listing {}: {e:#}", d.name);
            }
        }
    }
    all.sort_by(|a, b| (&b.stamp, a.vmid, &a.destination).cmp(&(&a.stamp, b.vmid, &b.destination)));
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else if all.is_empty() {
        println!("no complete VM backups");
    } else {
        println!(
            "{:<6} {:<5} {:<18} {:<12} {:>12}  {:<20} ARCHIVE",
            "VMID", "TYPE", "STAMP", "DESTINATION", "SIZE", "LOCKED UNTIL"
        );
        for b in &all {
            println!(
                "{:<6} {:<5} {:<18} {:<12} {:>12}  {:<20} {}",
                b.vmid,
                b.guest_type.as_str(),
                b.stamp,
                b.destination,
                b.size_bytes,
                b.locked_until.as_deref().unwrap_or("-"),
                b.archive
            );
        }
    }
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

async fn on(d: &crate::config::Destination, prefix: &str) -> anyhow::Result<Vec<ListedVm>> {
    let dest = d.open(1, &tokio_util::sync::CancellationToken::new())?;
    let root = manifest::vm_root(prefix);
    let keys: Vec<String> = dest.list(&root).await?.into_iter().map(|o| o.key).collect();
    let mut vmids: Vec<u32> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&root)?.split('/').next()?.parse().ok())
        .collect();
    vmids.sort_unstable();
    vmids.dedup();
    let mut out = Vec::new();
    for vmid in vmids {
        let dir = manifest::guest_dir(prefix, vmid);
        for stamp in vm_restore::complete_stamps(&dir, &keys) {
            let m = vm_restore::read_manifest(
                dest.as_ref(),
                &manifest::manifest_key(prefix, vmid, &stamp),
                vmid,
            )
            .await?;
            let key = manifest::object_key(prefix, vmid, &stamp, &m.archive);
            out.push(ListedVm {
                vmid,
                guest_type: m.guest_type,
                destination: d.name.clone(),
                host_id: m.host_id,
                stamp,
                locked_until: dest.locked_until(&key).await?,
                key,
                archive: m.archive,
                size_bytes: m.size_bytes,
                finished_at: m.finished_at,
            });
        }
    }
    Ok(out)
}
