//! `[vm_backup]`: vzdump archives of this node's guests, encrypted and
//! fanned out to the destinations (SPEC §12). The connection is `[proxmox]`.

use super::problem::{Check, Problem};
use super::proxmox::ProxmoxConfig;
use super::schema::{fragment, Ctx, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[vm_backup]` as written in one file.
    raw RawVmBackup;
    /// Validated `[vm_backup]`.
    #[derive(Debug, Clone)]
    pub struct VmBackupConfig {
        /// When the daemon runs the job.
        schedule: Schedule = ("0 3 * * *"),
        /// A Proxmox storage with content "backup" on this node (vzdump --storage).
        dump_storage: String = ("local"),
        /// Destination names (all must exist in `[[destinations]]`).
        destinations: Vec<String> = required,
        /// Armored OpenPGP public keys to encrypt to (default: `[backup] encrypt_to`).
        encrypt_to: Vec<PathBuf> = (vec![]),
        /// vzdump --mode: snapshot, suspend or stop.
        mode: String = ("snapshot"),
        /// vzdump --compress: 0, gzip, lzo or zstd.
        compress: String = ("zstd"),
        /// VMIDs to back up; empty = every VM and CT on this node.
        include: Vec<u32> = (vec![]),
        /// VMIDs never backed up.
        exclude: Vec<u32> = (vec![]),
        /// Complete backups older than this are pruned.
        retention_days: u32 = (14),
        /// The newest this-many complete backups per guest are always kept (≥ 1).
        keep_min: u32 = (1),
        /// Keep the local archive once every destination has it.
        keep_local: bool = (false),
        /// How long, across the run, to retry guests locked by another task.
        lock_retry_seconds: u64 = (1800),
        /// Deadline for one guest's vzdump task.
        task_timeout_seconds: u64 = (21600),
    } + {
        /// `[proxmox]` (or the connection keys of `[snapshots]`).
        proxmox: ProxmoxConfig,
    }
}

impl Rules for RawVmBackup {
    fn rules(&self, c: &mut Check) {
        if let Some(m) = &self.mode {
            if !["snapshot", "suspend", "stop"].contains(&m.get_ref().as_str()) {
                c.err(
                    m.span(),
                    format!("mode {:?} is not a vzdump mode", m.get_ref()),
                    "use mode = \"snapshot\" (the default), \"suspend\" or \"stop\"",
                );
            }
        }
        if let Some(m) = &self.compress {
            if !["0", "gzip", "lzo", "zstd"].contains(&m.get_ref().as_str()) {
                c.err(
                    m.span(),
                    format!("compress {:?} is not a vzdump compressor", m.get_ref()),
                    "use compress = \"zstd\" (the default), \"gzip\", \"lzo\" or \"0\"",
                );
            }
        }
        if let Some(k) = &self.keep_min {
            if *k.get_ref() == 0 {
                c.err(
                    k.span(),
                    "keep_min must be at least 1: retention never deletes the last good copy",
                    "keep_min = 1 is the default",
                );
            }
        }
        if let Some(s) = &self.dump_storage {
            if s.get_ref().is_empty() {
                c.err(
                    s.span(),
                    "dump_storage is empty",
                    "name a Proxmox storage with content \"backup\", e.g. dump_storage = \"local\"",
                );
            }
        }
    }
}

/// Build `[vm_backup]`: needs a connection and public keys.
pub(super) fn build(
    mut raw: RawVmBackup,
    ctx: &Ctx,
    proxmox: Option<ProxmoxConfig>,
    backup_keys: Option<&[PathBuf]>,
    problems: &mut Vec<Problem>,
) -> Option<VmBackupConfig> {
    let Some(proxmox) = proxmox else {
        problems.push(
            Problem::general("[vm_backup] needs the Proxmox API connection, and there is no [proxmox] section")
                .hint("add [proxmox] with api_token_id and api_token_secret_file (and api_url, ca_file, node if not the defaults)"),
        );
        return None;
    };
    let mut v = VmBackupConfig::build(&mut raw, "vm_backup", ctx, problems, proxmox)?;
    if v.encrypt_to.is_empty() {
        v.encrypt_to = backup_keys.map(<[PathBuf]>::to_vec).unwrap_or_default();
    }
    if v.encrypt_to.is_empty() {
        problems.push(
            Problem::general("[vm_backup] has no public key to encrypt to")
                .hint("set [vm_backup] encrypt_to (or [backup] encrypt_to, which it defaults to)"),
        );
        return None;
    }
    Some(v)
}
