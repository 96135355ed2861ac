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
}

impl JobKind {
    /// Every kind, in a fixed order.
    pub const ALL: [JobKind; 4] = [
        JobKind::Backup,
        JobKind::RestoreDrill,
        JobKind::Snapshot,
        JobKind::LuksCheck,
    ];

    /// The name used in the CLI, the API, metrics and locks.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::RestoreDrill => "restore-drill",
            JobKind::Snapshot => "snapshot",
            JobKind::LuksCheck => "luks-check",
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
        }
    }

    /// The kind's schedule, when its section is configured.
    pub fn schedule(self, cfg: &Config) -> Option<&Schedule> {
        match self {
            JobKind::Backup => cfg.backup.as_ref().map(|s| &s.schedule),
            JobKind::RestoreDrill => cfg.restore_drill.as_ref().map(|s| &s.schedule),
            JobKind::Snapshot => cfg.snapshots.as_ref().map(|s| &s.schedule),
            JobKind::LuksCheck => cfg.luks.as_ref().map(|s| &s.schedule),
        }
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
    /// Restore drill: fetch from this destination (default: as configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}
