//! `[snapshots]`: Proxmox VE guests to snapshot nightly and how long to keep them.

use super::common::*;
use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;

/// `[snapshots]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshots {
    schedule: Opt<String>,
    api_url: Opt<String>,
    api_token_id: Opt<String>,
    api_token_secret_file: Opt<PathBuf>,
    ca_file: Opt<PathBuf>,
    node: Opt<String>,
    include: Opt<Vec<u32>>,
    exclude: Opt<Vec<u32>>,
    vmstate: Opt<bool>,
    retention_days: Opt<u32>,
    keep_min: Opt<u32>,
    concurrency: Opt<u32>,
    name_prefix: Opt<String>,
    create_timeout_seconds: Opt<u64>,
    delete_timeout_seconds: Opt<u64>,
    lock_retry_seconds: Opt<u64>,
}

/// Validated `[snapshots]`.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// When the daemon runs the job.
    pub schedule: Schedule,
    /// e.g. `https://127.0.0.1:8006/api2/json`.
    pub api_url: String,
    /// `user@realm!tokenname`.
    pub api_token_id: String,
    /// File holding the token secret.
    pub api_token_secret_file: PathBuf,
    /// CA that signed the node's API certificate (pve-root-ca).
    pub ca_file: PathBuf,
    /// Node name (default: host name).
    pub node: String,
    /// VMIDs to include; empty = every guest on the node.
    pub include: Vec<u32>,
    /// VMIDs never snapshotted.
    pub exclude: Vec<u32>,
    /// Include RAM state (default false: `vmstate=0`).
    pub vmstate: bool,
    /// Our snapshots older than this are pruned.
    pub retention_days: u32,
    /// Newest N of our snapshots per guest always kept.
    pub keep_min: u32,
    /// Guests worked on at once.
    pub concurrency: u32,
    /// Snapshot name prefix (`{prefix}-YYYYMMDDhhmmss`).
    pub name_prefix: String,
    /// Deadline for one create task.
    pub create_timeout_seconds: u64,
    /// Deadline for one delete task.
    pub delete_timeout_seconds: u64,
    /// How long, across the run, to retry guests that are locked.
    pub lock_retry_seconds: u64,
}

impl RawSnapshots {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        check_cron(c, &self.schedule);
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
            if !t.get_ref().contains('!') || !t.get_ref().contains('@') {
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

    /// Merge a later fragment over this one.
    pub fn merge(&mut self, o: RawSnapshots) {
        merge_fields!(self, o; schedule, api_url, api_token_id, api_token_secret_file, ca_file, node, include,
            exclude, vmstate, retention_days, keep_min, concurrency, name_prefix, create_timeout_seconds,
            delete_timeout_seconds, lock_retry_seconds);
    }

    /// Build the validated section.
    pub fn build(self, host_name: &str, problems: &mut Vec<Problem>) -> Option<SnapshotConfig> {
        let schedule = Schedule::parse(&or(self.schedule, "0 1 * * *".into())).ok()?;
        let token_id = required(self.api_token_id, "snapshots", "api_token_id", problems);
        let secret = required(
            self.api_token_secret_file,
            "snapshots",
            "api_token_secret_file",
            problems,
        );
        Some(SnapshotConfig {
            schedule,
            api_url: or(self.api_url, "https://127.0.0.1:8006/api2/json".into()),
            api_token_id: token_id?,
            api_token_secret_file: secret?,
            ca_file: or(self.ca_file, "/etc/pve/pve-root-ca.pem".into()),
            node: self
                .node
                .map(toml::Spanned::into_inner)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| host_name.to_owned()),
            include: or(self.include, vec![]),
            exclude: or(self.exclude, vec![]),
            vmstate: or(self.vmstate, false),
            retention_days: or(self.retention_days, 7),
            keep_min: or(self.keep_min, 1),
            concurrency: or(self.concurrency, 2),
            name_prefix: or(self.name_prefix, "cnx".into()),
            create_timeout_seconds: or(self.create_timeout_seconds, 600),
            delete_timeout_seconds: or(self.delete_timeout_seconds, 900),
            lock_retry_seconds: or(self.lock_retry_seconds, 1800),
        })
    }
}
