//! THE job runner: every trigger (schedule, CLI one-shot, control plane) goes
//! through [`Runner::submit`] or [`Runner::run_now`], and every run goes
//! lock → audit start → duty → metrics → audit finish → event → release.
//!
//! Owns: job states (queued → running → succeeded | failed), the per-kind
//! cross-process lock (`flock` on `state_dir/locks/{kind}.lock`), cancellation,
//! the in-memory job table, and the configuration in force (reload swaps it
//! only after a full successful load).

use crate::audit::{AuditEntry, AuditLog};
use crate::config::{self, Config, Problems};
use crate::fsx;
use crate::jobs::{self, JobContext, JobKind, JobParams, Outcome};
use crate::metrics::{Family, MetricsStore};
use crate::outbox::{Event, Outbox, Severity};
use crate::util::{new_id, now_rfc3339, unix_now};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many finished job records the API can still show. Enough for a control
/// plane polling the jobs it submitted; every record (with its result) stays
/// in memory, so this bounds the daemon's memory, not just the listing.
pub const KEEP_RECORDS: usize = 64;

/// Who started a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// The daemon's schedule.
    Schedule,
    /// A one-shot CLI run by this Unix user.
    Cli {
        /// Unix user name.
        user: String,
    },
    /// The control-plane API.
    Api {
        /// Client certificate SAN.
        actor: String,
        /// Request id (from `X-Request-Id` or generated).
        request_id: String,
    },
}

impl Trigger {
    /// The audit `actor`.
    pub fn actor(&self) -> String {
        match self {
            Trigger::Schedule => "schedule".into(),
            Trigger::Cli { user } => format!("cli:{user}"),
            Trigger::Api { actor, .. } => actor.clone(),
        }
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// The duty is working.
    Running,
    /// Done, and it did what it promises.
    Succeeded,
    /// Done, and it did not (see `error`).
    Failed,
}

impl JobState {
    /// Where a finished run ended.
    fn of(outcome: &Outcome) -> JobState {
        if outcome.succeeded {
            JobState::Succeeded
        } else {
            JobState::Failed
        }
    }
}

/// A job as the API and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Unique id.
    pub id: String,
    /// Which duty.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Who started it.
    pub actor: String,
    /// RFC 3339.
    pub queued_at: String,
    /// RFC 3339, once running.
    pub started_at: Option<String>,
    /// RFC 3339, once done.
    pub finished_at: Option<String>,
    /// The failing step and cause.
    pub error: Option<String>,
    /// One line.
    pub summary: Option<String>,
    /// Duty-specific result.
    pub result: serde_json::Value,
}

/// Why a job could not be started. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The section is absent.
    #[error("the {kind} job is not configured: add a [{section}] section to the configuration", section = .0.section(), kind = .0)]
    NotConfigured(JobKind),
    /// Another run of the same kind holds the lock.
    #[error("another {kind} job is already running ({holder}); try again when it has finished")]
    AlreadyRunning {
        /// Kind.
        kind: JobKind,
        /// Who holds it (pid, or the job id in this process).
        holder: String,
    },
    /// The run could not be set up (state dir, lock file, audit log).
    #[error("{0:#}")]
    Setup(anyhow::Error),
}

/// The last finished run of a kind, as this process saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// Job id.
    pub id: String,
    /// Succeeded or failed.
    pub state: JobState,
    /// RFC 3339.
    pub finished_at: String,
    /// The error, if failed.
    pub error: Option<String>,
}

#[derive(Default)]
struct Table {
    records: VecDeque<JobRecord>,
    running: HashMap<JobKind, (String, CancellationToken)>,
    last: HashMap<JobKind, LastRun>,
    last_success: HashMap<JobKind, String>,
}

/// The runner: one per process.
pub struct Runner {
    config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    table: Mutex<Table>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Notified whenever a new configuration is swapped in.
    pub reloaded: tokio::sync::Notify,
    /// Signalled (one stored permit) whenever a job starts or finishes.
    pub jobs_changed: tokio::sync::Notify,
}

/// A held per-kind lock; released on drop.
pub struct JobLock {
    _lock: fsx::Locked,
}

impl JobLock {
    /// Take the lock for `kind` without waiting.
    pub fn try_acquire(state_dir: &Path, kind: JobKind) -> Result<JobLock, SubmitError> {
        let dir = state_dir.join("locks");
        fsx::ensure_private_dir(&dir).map_err(SubmitError::Setup)?;
        let path = dir.join(format!("{kind}.lock"));
        match fsx::lock_file(&path, false) {
            Ok(mut lock) => {
                fsx::note_holder(&mut lock);
                Ok(JobLock { _lock: lock })
            }
            Err(e @ fsx::LockError::Held { .. }) => Err(SubmitError::AlreadyRunning {
                kind,
                holder: format!("{e}, lock {}", path.display()),
            }),
            Err(fsx::LockError::Io(e)) => Err(SubmitError::Setup(e)),
        }
    }
}

/// One admitted run on its way through [`Runner::execute`].
struct Run {
    progress: Arc<crate::progress::Progress>,
    id: String,
    kind: JobKind,
    trigger: Trigger,
    params: JobParams,
    cfg: Arc<Config>,
    cancel: CancellationToken,
    lock: JobLock,
}

impl Run {
    fn actor(&self) -> String {
        self.trigger.actor()
    }

    /// The audit `method` and `request_id` of this run's records.
    fn request(&self) -> (Option<String>, Option<String>) {
        match &self.trigger {
            Trigger::Api { request_id, .. } => (Some("POST".into()), Some(request_id.clone())),
            _ => (None, Some(self.id.clone())),
        }
    }

    fn audit_entry(&self, action: &str, detail: serde_json::Value) -> AuditEntry {
        let (method, request_id) = self.request();
        AuditEntry {
            actor: self.actor(),
            method,
            path: Some(format!("/v1/jobs/{}", self.kind)),
            request_id,
            action: action.into(),
            detail,
            ..Default::default()
        }
    }

    fn audit_log(&self) -> AuditLog {
        AuditLog::new(&self.cfg.audit.path, self.cfg.audit.rotate_bytes)
    }
}

impl Runner {
    /// A runner for a loaded configuration.
    pub fn new(config_path: PathBuf, config: Config) -> Arc<Self> {
        Arc::new(Runner {
            config_path,
            config: RwLock::new(Arc::new(config)),
            table: Mutex::new(Table::default()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            reloaded: tokio::sync::Notify::new(),
            jobs_changed: tokio::sync::Notify::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics store of the configuration in force.
    pub fn metrics(&self) -> MetricsStore {
        let c = self.config();
        MetricsStore::new(&c.state_dir, &c.textfile_dir, &c.host_id)
    }

    /// The audit log of the configuration in force.
    pub fn audit_log(&self) -> AuditLog {
        let c = self.config();
        AuditLog::new(&c.audit.path, c.audit.rotate_bytes)
    }

    /// Append an audit record (from the API or the daemon).
    pub async fn audit(&self, entry: AuditEntry) -> anyhow::Result<u64> {
        self.audit_log().append_async(entry).await
    }

    /// Queue an event for the control plane.
    pub async fn event(
        &self,
        kind: &str,
        severity: Severity,
        data: serde_json::Value,
    ) -> anyhow::Result<()> {
        let c = self.config();
        let ev = Event::new(&c.host_id, kind, severity, data);
        Outbox::new(&c.state_dir).push_async(ev).await
    }

    /// Load the configuration again through the startup path; swap it in only if valid.
    /// The outcome (accepted or refused) is audited.
    pub async fn reload(&self, actor: &str) -> Result<(), Problems> {
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(Problems(vec![config::Problem::general(format!(
                    "reload task failed: {e}"
                ))]))
            });
        let detail = match &loaded {
            Ok(c) => serde_json::json!({"accepted": true, "files": c.files}),
            Err(p) => {
                serde_json::json!({"accepted": false, "problems": p.0.iter().map(ToString::to_string).collect::<Vec<_>>()})
            }
        };
        let accepted = loaded.is_ok();
        if let Ok(c) = &loaded {
            *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c.clone());
            self.reloaded.notify_waiters();
        }
        let entry = AuditEntry {
            actor: actor.to_owned(),
            action: "config.reload".into(),
            detail,
            ..Default::default()
        };
        if let Err(e) = self.audit(entry).await {
            tracing::error!("could not audit the configuration reload: {e:#}");
        }
        if accepted {
            tracing::info!("configuration reloaded");
        }
        loaded.map(|_| ())
    }

    /// Check that `kind` can run now and take its lock.
    fn admit(&self, kind: JobKind, cfg: &Config) -> Result<JobLock, SubmitError> {
        if !kind.configured(cfg) {
            return Err(SubmitError::NotConfigured(kind));
        }
        if let Some((id, _)) = self.lock_table().running.get(&kind) {
            return Err(SubmitError::AlreadyRunning {
                kind,
                holder: format!("job {id} in this process"),
            });
        }
        JobLock::try_acquire(&cfg.state_dir, kind)
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, kind: JobKind, trigger: &Trigger) -> (JobRecord, CancellationToken) {
        let id = format!("{}-{}", kind, &new_id()[..12]);
        let rec = JobRecord {
            id: id.clone(),
            kind,
            state: JobState::Queued,
            actor: trigger.actor(),
            queued_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            error: None,
            summary: None,
            result: serde_json::Value::Null,
        };
        let cancel = self.shutdown.child_token();
        let mut t = self.lock_table();
        t.running.insert(kind, (id, cancel.clone()));
        t.records.push_back(rec.clone());
        while t.records.len() > KEEP_RECORDS {
            t.records.pop_front();
        }
        (rec, cancel)
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let mut t = self.lock_table();
        let r = t.records.iter_mut().find(|r| r.id == id)?;
        f(r);
        Some(r.clone())
    }

    /// Admit a job under the configuration in force and queue its record.
    fn prepare(
        &self,
        kind: JobKind,
        trigger: Trigger,
        params: JobParams,
    ) -> Result<(Run, JobRecord), SubmitError> {
        let cfg = self.config();
        let lock = self.admit(kind, &cfg)?;
        let (rec, cancel) = self.enqueue(kind, &trigger);
        let run = Run {
            progress: Arc::default(),
            id: rec.id.clone(),
            kind,
            trigger,
            params,
            cfg,
            cancel,
            lock,
        };
        Ok((run, rec))
    }

    /// Start a job in the background; returns its queued record at once.
    pub fn submit(
        self: &Arc<Self>,
        kind: JobKind,
        trigger: Trigger,
        params: JobParams,
    ) -> Result<JobRecord, SubmitError> {
        let (run, rec) = self.prepare(kind, trigger, params)?;
        let me = self.clone();
        self.tasks.spawn(async move { me.execute(run).await });
        Ok(rec)
    }

    /// Run a job to completion in this task (the CLI one-shot path);
    /// `progress` is updated as it goes.
    pub async fn run_now(
        self: &Arc<Self>,
        kind: JobKind,
        trigger: Trigger,
        params: JobParams,
        progress: Arc<crate::progress::Progress>,
    ) -> Result<JobRecord, SubmitError> {
        let (mut run, _) = self.prepare(kind, trigger, params)?;
        run.progress = progress;
        Ok(self.execute(run).await)
    }

    /// A job record by id (bounded history).
    pub fn job(&self, id: &str) -> Option<JobRecord> {
        self.lock_table()
            .records
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// The last finished run of each kind seen by this process.
    pub fn last_runs(&self) -> HashMap<JobKind, LastRun> {
        self.lock_table().last.clone()
    }

    /// When each kind last succeeded, as seen by this process.
    pub fn last_successes(&self) -> HashMap<JobKind, String> {
        self.lock_table().last_success.clone()
    }

    /// Whether a kind is running in this process.
    pub fn is_running(&self, kind: JobKind) -> bool {
        self.lock_table().running.contains_key(&kind)
    }

    /// Cancel every running job and wait (up to `grace`) for them to wind down.
    pub async fn shutdown(&self, grace: std::time::Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// The token cancelled at shutdown (for long-lived tasks of the daemon).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Next fire time of every scheduled kind under the configuration in force.
    pub fn next_fires(&self, now: DateTime<Utc>) -> Vec<(JobKind, DateTime<Utc>)> {
        let c = self.config();
        JobKind::ALL
            .iter()
            .filter_map(|k| Some((*k, k.schedule(&c)?.next_after(now, c.timezone)?)))
            .collect()
    }

    /// lock (held by `run`) → running → audit start → duty → metrics → audit
    /// finish → event (and page) → finished; the lock goes with `run`.
    async fn execute(&self, run: Run) -> JobRecord {
        let started = std::time::Instant::now();
        self.mark_running(&run);
        let outcome = self.run_duty(&run).await;
        let duration = started.elapsed();
        self.record_metrics(&run, &outcome, duration.as_secs_f64())
            .await;
        self.audit_finish(&run, &outcome, duration).await;
        self.report(&run, &outcome, duration.as_secs_f64()).await;
        self.finish(run, outcome, duration.as_secs_f64())
    }

    fn mark_running(&self, run: &Run) {
        self.update(&run.id, |r| {
            r.state = JobState::Running;
            r.started_at = Some(now_rfc3339());
        });
        tracing::info!(job = %run.id, kind = %run.kind, actor = %run.actor(), "job started");
        self.jobs_changed.notify_one();
    }

    /// Audit the start, then run the duty. Fail closed: a job whose start
    /// cannot be audited does not run.
    async fn run_duty(&self, run: &Run) -> Outcome {
        let start = run.audit_entry(
            "job.start",
            serde_json::json!({"job_id": run.id, "kind": run.kind, "params": run.params}),
        );
        if let Err(e) = run.audit_log().append_async(start).await {
            return Outcome::failure(
                format!("writing the audit record for the job start: {e:#}"),
                serde_json::Value::Null,
            );
        }
        let ctx = JobContext {
            id: run.id.clone(),
            kind: run.kind,
            config: run.cfg.clone(),
            params: run.params.clone(),
            cancel: run.cancel.clone(),
            actor: run.actor(),
            progress: run.progress.clone(),
            audit_log: run.audit_log(),
            outbox: Outbox::new(&run.cfg.state_dir),
        };
        match jobs::run(&ctx).await {
            Ok(o) => o,
            Err(e) => Outcome::failure(format!("{e:#}"), serde_json::Value::Null),
        }
    }

    /// The duty's series plus the `cloudnx_job_*` ones every kind has.
    async fn record_metrics(&self, run: &Run, outcome: &Outcome, duration: f64) {
        let now = unix_now();
        let mut update = outcome.metrics.clone();
        let k = [("kind", run.kind.as_str())];
        update.set(Family::JobLastRun, &k, now);
        update.set(Family::JobLastDuration, &k, duration);
        update.set(
            Family::JobLastStatus,
            &k,
            if outcome.succeeded { 1.0 } else { 0.0 },
        );
        if outcome.succeeded {
            update.set(Family::JobLastSuccess, &k, now);
        }
        let c = &run.cfg;
        let store = MetricsStore::new(&c.state_dir, &c.textfile_dir, &c.host_id);
        if let Err(e) = store.apply_async(update).await {
            tracing::error!(job = %run.id, "writing metrics: {e:#}");
        }
    }

    async fn audit_finish(&self, run: &Run, outcome: &Outcome, duration: std::time::Duration) {
        let mut entry = run.audit_entry(
            "job.finish",
            serde_json::json!({"job_id": run.id, "kind": run.kind, "state": JobState::of(outcome), "changed": outcome.changed, "error": outcome.error}),
        );
        entry.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = run.audit_log().append_async(entry).await {
            tracing::error!(job = %run.id, "writing the audit record for the job finish: {e:#}");
        }
    }

    /// The `job.finished` event, and the page a failed kind asks for.
    async fn report(&self, run: &Run, outcome: &Outcome, duration: f64) {
        let severity = if outcome.succeeded {
            Severity::Info
        } else {
            run.kind.failure_severity()
        };
        let ev = Event::new(
            &run.cfg.host_id,
            "job.finished",
            severity,
            serde_json::json!({
                "job_id": run.id, "kind": run.kind, "state": JobState::of(outcome), "actor": run.actor(),
                "duration_seconds": duration, "error": outcome.error, "summary": outcome.summary,
                "result": outcome.result,
            }),
        );
        if let Err(e) = Outbox::new(&run.cfg.state_dir).push_async(ev).await {
            tracing::error!(job = %run.id, "queueing the job.finished event: {e:#}");
        }
        if let (Some(page), Some(url)) = (&outcome.page, run.kind.pager(&run.cfg)) {
            if let Err(e) =
                crate::alert::send(url, &run.cfg.host_id, page, run.cfg.policy.min_tls_version)
                    .await
            {
                tracing::error!(job = %run.id, "paging Alertmanager at {url}: {e:#}");
            }
        }
    }

    /// Record the end in the job table, free the kind (and its lock).
    fn finish(&self, run: Run, outcome: Outcome, duration: f64) -> JobRecord {
        let Run { id, kind, lock, .. } = run;
        let state = JobState::of(&outcome);
        let finished_at = now_rfc3339();
        let rec = self.update(&id, |r| {
            r.state = state;
            r.finished_at = Some(finished_at.clone());
            r.error = outcome.error.clone();
            r.summary = Some(outcome.summary.clone());
            r.result = outcome.result.clone();
        });
        {
            let mut t = self.lock_table();
            t.running.remove(&kind);
            t.last.insert(
                kind,
                LastRun {
                    id: id.clone(),
                    state,
                    finished_at: finished_at.clone(),
                    error: outcome.error.clone(),
                },
            );
            if outcome.succeeded {
                t.last_success.insert(kind, finished_at.clone());
            }
        }
        drop(lock);
        self.jobs_changed.notify_one();
        crate::util::trim_heap();
        match &outcome.error {
            None => {
                tracing::info!(job = %id, kind = %kind, duration_s = format!("{duration:.1}"), "job succeeded: {}", outcome.summary)
            }
            Some(e) => {
                tracing::error!(job = %id, kind = %kind, duration_s = format!("{duration:.1}"), "job failed: {e}")
            }
        }
        // The record left the bounded table only if 64 newer jobs were queued meanwhile.
        rec.unwrap_or_else(|| JobRecord {
            id,
            kind,
            state,
            actor: String::new(),
            queued_at: String::new(),
            started_at: None,
            finished_at: Some(finished_at),
            error: outcome.error,
            summary: Some(outcome.summary),
            result: outcome.result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_of_a_kind_is_refused_naming_the_holder_and_freed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let held = JobLock::try_acquire(d.path(), JobKind::Backup).unwrap();
        match JobLock::try_acquire(d.path(), JobKind::Backup) {
            Err(SubmitError::AlreadyRunning { kind, holder }) => {
                assert_eq!(kind, JobKind::Backup);
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected AlreadyRunning, got {:?}", other.map(|_| ())),
        }
        // Other kinds are independent.
        let _snap = JobLock::try_acquire(d.path(), JobKind::Snapshot).unwrap();
        drop(held);
        JobLock::try_acquire(d.path(), JobKind::Backup)
            .expect("free again after the holder dropped it");
    }

    #[test]
    fn lock_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let _l = JobLock::try_acquire(&state, JobKind::LuksCheck).unwrap();
        for p in [&state, &state.join("locks")] {
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o700,
                "{}",
                p.display()
            );
        }
    }
}
