//! Job kinds (SPEC §1) and the parameters of one run.

use crate::config::Config;
use crate::outbox::Severity;
use crate::schedule::Schedule;
use serde::{Deserialize, Serialize};

/// A job kind (SPEC §1). The label `kind` in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// PostgreSQL dumps to every destination.
    Backup,
    /// Restore the newest backup into a throwaway cluster and check it.
    RestoreDrill,
    /// Proxmox VE guest snapshots.
    Snapshot,
    /// LUKS policy, live state, re-open, header backups.
    LuksCheck,
    /// Patch and reboot state of the host (read-only).
    Posture,
    /// Get one backup back on command (CLI only, never scheduled).
    Restore,
    /// vzdump archives of this node's guests to every destination (SPEC §12).
    VmBackup,
    /// Get one VM backup back into Proxmox as a new guest (CLI only).
    VmRestore,
}

impl JobKind {
    /// Every kind, in a fixed order.
    pub const ALL: [JobKind; 8] = [
        JobKind::Backup,
        JobKind::RestoreDrill,
        JobKind::Snapshot,
        JobKind::LuksCheck,
        JobKind::Posture,
        JobKind::Restore,
        JobKind::VmBackup,
        JobKind::VmRestore,
    ];

    /// The name used in the CLI, the API, metrics and locks.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::RestoreDrill => "restore-drill",
            JobKind::Snapshot => "snapshot",
            JobKind::LuksCheck => "luks-check",
            JobKind::Posture => "posture",
            JobKind::Restore => "restore",
            JobKind::VmBackup => "vm-backup",
            JobKind::VmRestore => "vm-restore",
        }
    }

    /// Parse a kind name.
    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The configuration section that turns this job on.
    pub fn section(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::RestoreDrill => "restore_drill",
            JobKind::Snapshot => "snapshots",
            JobKind::LuksCheck => "luks",
            JobKind::Posture => "posture",
            JobKind::Restore => "destinations",
            JobKind::VmBackup | JobKind::VmRestore => "vm_backup",
        }
    }

    /// The kind's schedule, when its section is configured (never for
    /// kinds that only run on command).
    pub fn schedule(self, cfg: &Config) -> Option<&Schedule> {
        match self {
            JobKind::Backup => cfg.backup.as_ref().map(|s| &s.schedule),
            JobKind::RestoreDrill => cfg.restore_drill.as_ref().map(|s| &s.schedule),
            JobKind::Snapshot => cfg.snapshots.as_ref().map(|s| &s.schedule),
            JobKind::LuksCheck => cfg.luks.as_ref().map(|s| &s.schedule),
            JobKind::Posture => cfg.posture.as_ref().map(|s| &s.schedule),
            JobKind::VmBackup => cfg.vm_backup.as_ref().map(|s| &s.schedule),
            JobKind::Restore | JobKind::VmRestore => None,
        }
    }

    /// Whether this host's configuration lets the kind run at all.
    pub fn configured(self, cfg: &Config) -> bool {
        match self {
            JobKind::Restore => !cfg.destinations.is_empty(),
            JobKind::VmRestore => cfg.vm_backup.is_some(),
            k => k.schedule(cfg).is_some(),
        }
    }

    /// Whether the control plane may start it. A restore writes into a live
    /// database or a file on this host: only someone on the host decides that.
    pub fn startable_by_api(self) -> bool {
        !matches!(self, JobKind::Restore | JobKind::VmRestore)
    }

    /// How loudly a failure of this kind is reported: a failed drill pages.
    pub fn failure_severity(self) -> Severity {
        match self {
            JobKind::RestoreDrill => Severity::Page,
            _ => Severity::Warning,
        }
    }

    /// The Alertmanager that an [`Outcome::page`] of this kind goes to, if
    /// one is configured (the drill's `alertmanager_url`).
    pub fn pager(self, cfg: &Config) -> Option<&str> {
        match self {
            JobKind::RestoreDrill => cfg.restore_drill.as_ref()?.alertmanager_url.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-run parameters (CLI flags or the API request body).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    /// Backup: only these databases (default: as configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// Restore drill, restore: fetch from this destination (default: as configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Restore: what to get back and where to (CLI only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreParams>,
    /// VM backup: only these guests (default: as configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vmids: Vec<u32>,
    /// VM restore: what to get back and as which guest (CLI only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_restore: Option<VmRestoreParams>,
}

/// What `cloudnx-agent vm-restore` was asked (SPEC §12). Audited as given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmRestoreParams {
    /// The guest whose backup to restore.
    pub vmid: u32,
    /// A stamp; None = the newest complete backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The new guest's id (default: `vmid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vmid: Option<u32>,
    /// The Proxmox storage for the new guest's disks.
    pub storage: String,
    /// The OpenPGP secret key (default: `[restore_drill] decryption_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
}

/// What `cloudnx-agent restore` was asked (SPEC §9). No secret ever goes in
/// here: it is audited as given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    /// The database (with `output`, `_globals` is the cluster's roles and
    /// tablespaces, as `globals`).
    pub database: String,
    /// The cluster's roles and tablespaces (`pg_dumpall --globals-only`), not a database.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub globals: bool,
    /// A stamp (`YYYYMMDDTHHMMSSZ`); None = the newest complete backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Another host's backups (its prefix) on the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The OpenPGP secret key (default: `[restore_drill] decryption_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// libpq conninfo of the server to restore into (no password: .pgpass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The database to restore into (default: the original name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_database: Option<String>,
    /// Drop and re-create the objects of a non-empty target database.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean: bool,
    /// `pg_restore --jobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// Write the decrypted dump to this file instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<std::path::PathBuf>,
}
