//! `[snapshots]`: Proxmox VE guests to snapshot nightly and how long to keep them.

use super::problem::{Check, Problem};
use super::proxmox::{check_connection, ProxmoxConfig};
use super::schema::{fragment, Ctx, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[snapshots]` as written in one file.
    raw RawSnapshots;
    /// The connection keys `[snapshots]` still accepts (they belong in
    /// `[proxmox]` now; written here they win over it).
    #[derive(Debug, Clone)]
    pub struct LegacyConnection {
        /// Deprecated here: write it in [proxmox]. e.g. `https://127.0.0.1:8006/api2/json`.
        api_url: String = optional,
        /// Deprecated here: write it in [proxmox]. `user@realm!tokenname`.
        api_token_id: String = optional,
        /// Deprecated here: write it in [proxmox]. File holding the token secret.
        api_token_secret_file: PathBuf = optional,
        /// Deprecated here: write it in [proxmox]. CA of the node's API certificate.
        ca_file: PathBuf = optional,
        /// Deprecated here: write it in [proxmox]. Node name.
        node: String = optional,
    }
    /// Validated `[snapshots]`.
    #[derive(Debug, Clone)]
    pub struct SnapshotConfig {
        /// When the daemon runs the job.
        schedule: Schedule = ("0 1 * * *"),
        /// VMIDs to include; empty = every guest on the node.
        include: Vec<u32> = (vec![]),
        /// VMIDs never snapshotted.
        exclude: Vec<u32> = (vec![]),
        /// Include RAM state (default false: `vmstate=0`).
        vmstate: bool = (false),
        /// Our snapshots older than this are pruned.
        retention_days: u32 = (7),
        /// Newest N of our snapshots per guest always kept.
        keep_min: u32 = (1),
        /// Guests worked on at once.
        concurrency: u32 = (2),
        /// Snapshot name prefix (`{prefix}-YYYYMMDDhhmmss`).
        name_prefix: String = ("cnx"),
        /// Deadline for one create task.
        create_timeout_seconds: u64 = (600),
        /// Deadline for one delete task.
        delete_timeout_seconds: u64 = (900),
        /// How long, across the run, to retry guests that are locked.
        lock_retry_seconds: u64 = (1800),
    } + {
        /// The API connection: `[proxmox]`, overridden key by key by the
        /// connection keys still written here.
        proxmox: ProxmoxConfig,
    }
}

impl Rules for RawSnapshots {
    fn rules(&self, c: &mut Check) {
        check_connection(
            c,
            &self.api_url,
            &self.api_token_id,
            &self.api_token_secret_file,
            &self.ca_file,
        );
        if let Some(p) = &self.name_prefix {
            let ok = p.get_ref().len() <= 20
                && p.get_ref().starts_with(|ch: char| ch.is_ascii_lowercase())
                && p.get_ref().chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_'
                });
            if !ok {
                c.err(p.span(), format!("name_prefix {:?} cannot start a Proxmox snapshot name", p.get_ref()), "use lowercase letters, digits, - and _, starting with a letter, at most 20 characters");
            }
        }
        if let Some(n) = &self.concurrency {
            if *n.get_ref() == 0 {
                c.err(
                    n.span(),
                    "concurrency must be at least 1",
                    "concurrency = 2 is the default",
                );
            }
        }
    }
}

/// Build `[snapshots]`: the connection is `[proxmox]` with any connection
/// key still written here winning (and a notice to move it); without either
/// the required keys are reported as missing from `[proxmox]`.
pub(super) fn build(
    mut raw: RawSnapshots,
    ctx: &Ctx,
    proxmox: Option<&ProxmoxConfig>,
    notices: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) -> Option<SnapshotConfig> {
    let written = LegacyConnection::written(&raw);
    if !written.is_empty() {
        notices.push(format!(
            "[snapshots] still holds the Proxmox connection ({}): move these keys to a [proxmox] section, which [vm_backup] shares",
            written.join(", ")
        ));
    }
    let legacy = LegacyConnection::build(&mut raw, "snapshots", ctx, problems)?;
    let conn = match proxmox {
        Some(p) => ProxmoxConfig {
            api_url: legacy.api_url.unwrap_or_else(|| p.api_url.clone()),
            api_token_id: legacy
                .api_token_id
                .unwrap_or_else(|| p.api_token_id.clone()),
            api_token_secret_file: legacy
                .api_token_secret_file
                .unwrap_or_else(|| p.api_token_secret_file.clone()),
            ca_file: legacy.ca_file.unwrap_or_else(|| p.ca_file.clone()),
            node: legacy.node.unwrap_or_else(|| p.node.clone()),
        },
        None => {
            let (Some(api_token_id), Some(api_token_secret_file)) =
                (legacy.api_token_id, legacy.api_token_secret_file)
            else {
                problems.push(
                    Problem::general("[snapshots] needs the Proxmox API connection: there is no [proxmox] section")
                        .hint("add [proxmox] with api_token_id and api_token_secret_file (and api_url, ca_file, node if not the defaults)"),
                );
                return None;
            };
            ProxmoxConfig {
                api_url: legacy
                    .api_url
                    .unwrap_or_else(|| "https://127.0.0.1:8006/api2/json".into()),
                api_token_id,
                api_token_secret_file,
                ca_file: legacy
                    .ca_file
                    .unwrap_or_else(|| "/etc/pve/pve-root-ca.pem".into()),
                node: legacy.node.unwrap_or_default(),
            }
        }
    };
    let mut s = SnapshotConfig::build(&mut raw, "snapshots", ctx, problems, conn)?;
    if s.proxmox.node.is_empty() {
        s.proxmox.node.clone_from(&ctx.host_name);
    }
    Some(s)
}
