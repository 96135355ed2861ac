//! The four duties. Each is `async fn run(&JobContext) -> anyhow::Result<Outcome>`;
//! none writes metrics, audit records, events or locks itself — the runner does
//! that with what the duty returns (and with [`JobContext::audit`] /
//! [`JobContext::event`] for things that must be recorded the moment they happen).

pub mod backup;
pub mod drill;
pub mod luks;
pub mod snapshot;

use crate::audit::{AuditEntry, AuditLog};
use crate::config::Config;
use crate::control::outbox::{Event, Outbox, Severity};
use crate::metrics::MetricsUpdate;
use crate::schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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

    /// Whether the duty is implemented in this build.
    pub fn built(self) -> bool {
        match self {
            JobKind::Backup => backup::BUILT,
            JobKind::RestoreDrill => drill::BUILT,
            JobKind::Snapshot => snapshot::BUILT,
            JobKind::LuksCheck => luks::BUILT,
        }
    }

    /// How loudly a failure of this kind is reported: a failed drill pages.
    pub fn failure_severity(self) -> Severity {
        match self {
            JobKind::RestoreDrill => Severity::Page,
            _ => Severity::Warning,
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

/// What a duty sees of the run it is part of.
pub struct JobContext {
    /// Job id (also the audit `request_id` of its records).
    pub id: String,
    /// Which duty.
    pub kind: JobKind,
    /// The configuration in force when the job started.
    pub config: Arc<Config>,
    /// Parameters of this run.
    pub params: JobParams,
    /// Cancelled on shutdown: stop at the next safe point, leave nothing looking complete.
    pub cancel: CancellationToken,
    /// Who started it (audit actor).
    pub actor: String,
    pub(crate) audit_log: AuditLog,
    pub(crate) outbox: Outbox,
}

impl JobContext {
    /// Record a state change now (a retention deletion, a LUKS open), attributed to this job.
    pub async fn audit(&self, action: &str, detail: serde_json::Value) -> anyhow::Result<u64> {
        let entry = AuditEntry {
            actor: self.actor.clone(),
            path: Some(format!("/v1/jobs/{}", self.kind)),
            request_id: Some(self.id.clone()),
            action: action.to_owned(),
            detail,
            ..Default::default()
        };
        self.audit_log.append_async(entry).await
    }

    /// Queue an event for the control plane now (drift found, …).
    pub async fn event(
        &self,
        kind: &str,
        severity: Severity,
        data: serde_json::Value,
    ) -> anyhow::Result<()> {
        let ev = Event::new(&self.config.host_id, kind, severity, data);
        self.outbox.push_async(ev).await
    }
}

/// What a run of a duty produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the duty did what it promises.
    pub succeeded: bool,
    /// One human line.
    pub summary: String,
    /// Why it failed: the failing step and its cause.
    pub error: Option<String>,
    /// Structured detail for the API, events and `--json`.
    pub result: serde_json::Value,
    /// Duty-specific metrics (the runner adds the `cloudnx_job_*` series).
    pub metrics: MetricsUpdate,
    /// Whether anything changed (false: a no-op run, safe to retry).
    pub changed: bool,
}

impl Outcome {
    /// A successful run.
    pub fn success(summary: impl Into<String>, result: serde_json::Value) -> Self {
        Outcome {
            succeeded: true,
            summary: summary.into(),
            error: None,
            result,
            metrics: MetricsUpdate::default(),
            changed: true,
        }
    }

    /// A failed run with its cause.
    pub fn failure(error: impl Into<String>, result: serde_json::Value) -> Self {
        let error = error.into();
        Outcome {
            succeeded: false,
            summary: error.clone(),
            error: Some(error),
            result,
            metrics: MetricsUpdate::default(),
            changed: false,
        }
    }
}

/// Run a duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    match ctx.kind {
        JobKind::Backup => backup::run(ctx).await,
        JobKind::RestoreDrill => drill::run(ctx).await,
        JobKind::Snapshot => snapshot::run(ctx).await,
        JobKind::LuksCheck => luks::run(ctx).await,
    }
}
