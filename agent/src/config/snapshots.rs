//! `[snapshots]`: Proxmox VE guests to snapshot nightly and how long to keep them.

use super::common::{check_file_exists, check_secret};
use super::problem::{Check, Problem};
use super::schema::{fragment, Ctx, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[snapshots]` as written in one file.
    raw RawSnapshots;
    /// Validated `[snapshots]`.
    #[derive(Debug, Clone)]
    pub struct SnapshotConfig {
        /// When the daemon runs the job.
        schedule: Schedule = ("0 1 * * *"),
        /// e.g. `https://127.0.0.1:8006/api2/json`.
        api_url: String = ("https://127.0.0.1:8006/api2/json"),
        /// `user@realm!tokenname`.
        api_token_id: String = required,
        /// File holding the token secret.
        api_token_secret_file: PathBuf = required,
        /// CA that signed the node's API certificate (pve-root-ca).
        ca_file: PathBuf = ("/etc/pve/pve-root-ca.pem"),
        /// Node name (default: host name).
        node: String = {|c| c.host_name.clone()},
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
    }
}

impl Rules for RawSnapshots {
    fn rules(&self, c: &mut Check) {
        check_secret(
            c,
            "api_token_secret_file",
            &self.api_token_secret_file,
            false,
        );
        check_file_exists(c, "ca_file", &self.ca_file);
        if let Some(u) = &self.api_url {
            let rest = u.get_ref().strip_prefix("https://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') {
                c.err(
                    u.span(),
                    format!("api_url {:?} is not an https:// URL", u.get_ref()),
                    "the Proxmox API is only spoken over verified TLS, e.g. api_url = \"https://127.0.0.1:8006/api2/json\"",
                );
            }
        }
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
        if let Some(t) = &self.api_token_id {
            if t.get_ref().contains('=') {
                // `user@realm!name=SECRET` is how Proxmox shows a new token.
                c.err(
                    t.span(),
                    "api_token_id holds the token's secret (the part after '=')",
                    "keep only user@realm!tokenname here and put the secret in api_token_secret_file (mode 0600)",
                );
            } else if !t.get_ref().contains('!') || !t.get_ref().contains('@') {
                c.err(
                    t.span(),
                    format!(
                        "api_token_id {:?} is not of the form user@realm!token",
                        t.get_ref()
                    ),
                    "e.g. api_token_id = \"cloudnx@pve!agent\"",
                );
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

/// Build `[snapshots]`; an empty `node` means the host name too.
pub(super) fn build(
    mut raw: RawSnapshots,
    ctx: &Ctx,
    problems: &mut Vec<Problem>,
) -> Option<SnapshotConfig> {
    let mut s = SnapshotConfig::build(&mut raw, "snapshots", ctx, problems)?;
    if s.node.is_empty() {
        s.node.clone_from(&ctx.host_name);
    }
    Some(s)
}
