//! What a duty is given ([`JobContext`]) and what it gives back ([`Outcome`]).

use super::kind::{JobKind, JobParams};
use crate::alert::Page;
use crate::audit::{AuditEntry, AuditLog};
use crate::config::Config;
use crate::metrics::MetricsUpdate;
use crate::outbox::{Event, Outbox, Severity};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    /// How far the run has got (drawn on a terminal by the CLI).
    pub progress: Arc<crate::progress::Progress>,
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

    /// The audit log's head now, for a backup manifest's `audit_head`
    /// (SPEC §11), read off the async runtime from the runner's own log.
    pub async fn audit_head(&self) -> anyhow::Result<Option<crate::audit::Head>> {
        use anyhow::Context;
        let log = self.audit_log.clone();
        tokio::task::spawn_blocking(move || log.head())
            .await
            .context("reading the audit log head")?
            .context("reading the audit log head for the manifest; no manifest written")
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
    /// Wake someone now: the runner sends it to the kind's Alertmanager
    /// ([`JobKind::pager`]), beside the `job.finished` event.
    pub page: Option<Page>,
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
            page: None,
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
            page: None,
        }
    }
}
