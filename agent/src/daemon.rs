//! The daemon's lifecycle: sd_notify (READY, STATUS, WATCHDOG, RELOADING,
//! STOPPING), signals, the scheduler loop, reload, shutdown.
//!
//! Never runs a duty itself: the scheduler hands fire times to the runner.

use crate::config::Config;
use crate::jobs::{JobKind, JobParams};
use crate::metrics::{Family, MetricsUpdate};
use crate::outbox::Severity;
use crate::runner::{Runner, SubmitError, Trigger};
use chrono::Utc;
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Longest the scheduler sleeps before re-reading the wall clock (clock jumps, suspend).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How often the daemon rewrites its metrics file even when nothing ran, so its
/// mtime proves liveness to the `CloudnxMetricsStale` alert (30 min threshold).
const METRICS_REFRESH: Duration = Duration::from_secs(300);
/// How long running jobs get to wind down on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(8);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// The metrics the daemon itself owns: next fire time of each scheduled kind.
fn schedule_metrics(runner: &Runner) -> MetricsUpdate {
    let mut u = MetricsUpdate {
        clear: vec![Family::JobNextRun],
        ..Default::default()
    };
    for (k, t) in runner.next_fires(Utc::now()) {
        u.set(
            Family::JobNextRun,
            &[("kind", k.as_str())],
            t.timestamp() as f64,
        );
    }
    // The legal hold is shown from the daemon's start, whatever runs when.
    let held = crate::hold::holding(&runner.config().state_dir);
    u.set(Family::LegalHold, &[], if held { 1.0 } else { 0.0 });
    u
}

fn status_line(runner: &Runner) -> String {
    let running: Vec<&str> = JobKind::ALL
        .iter()
        .filter(|k| runner.is_running(**k))
        .map(|k| k.as_str())
        .collect();
    let next = runner
        .next_fires(Utc::now())
        .into_iter()
        .min_by_key(|(_, t)| *t);
    let next = next.map_or("no job scheduled".to_owned(), |(k, t)| {
        format!("next {k} at {}", t.format("%Y-%m-%dT%H:%M:%SZ"))
    });
    if running.is_empty() {
        format!("idle; {next}")
    } else {
        format!("running {}; {next}", running.join(", "))
    }
}

async fn publish_schedule(runner: &Runner) -> anyhow::Result<()> {
    write_schedule_metrics(runner).await?;
    for (k, t) in runner.next_fires(Utc::now()) {
        tracing::info!(kind = %k, "next {k} run at {} ({})", t.to_rfc3339(), t.with_timezone(&runner.config().timezone).format("%Y-%m-%d %H:%M %Z"));
    }
    Ok(())
}

/// The watchdog interval systemd asked for, per sd_watchdog_enabled(3): from
/// `WATCHDOG_USEC`, and only if `WATCHDOG_PID` is unset or names this process.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC")
        .ok()?
        .parse()
        .ok()
        .filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        None => Some(usec),
        Some(Ok(pid)) if pid == std::process::id() => Some(usec),
        Some(_) => None,
    }
}

/// Re-render the metrics file with the current next-fire times.
async fn write_schedule_metrics(runner: &Runner) -> anyhow::Result<()> {
    runner.metrics().apply_async(schedule_metrics(runner)).await
}

/// Run the daemon until SIGTERM/SIGINT. `config` is already loaded and valid.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    crate::fsx::ensure_private_dir(&config.state_dir)?;
    let runner = Runner::new(config_path, config);
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    publish_schedule(&runner).await?;
    // Long-lived services; returns once the API listener (if configured) is bound,
    // so READY=1 below means the control plane can reach us.
    crate::control::start(runner.clone()).await?;
    let checkpointer = spawn_checkpointer(runner.clone());
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&runner)),
    ]);
    tracing::info!(host_id = %runner.config().host_id, "cloudnx-agent {} ready", env!("CARGO_PKG_VERSION"));

    if let Some(watchdog_usec) = watchdog_usec() {
        let token = runner.shutdown_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(watchdog_usec / 2));
            loop {
                tokio::select! {
                    _ = tick.tick() => notify(&[NotifyState::Watchdog]),
                    () = token.cancelled() => break,
                }
            }
        });
    }
    let scheduler = tokio::spawn(schedule_loop(runner.clone()));

    loop {
        tokio::select! {
            _ = hup.recv() => {
                let mono = NotifyState::monotonic_usec_now().ok();
                let mut states = vec![NotifyState::Reloading];
                states.extend(mono);
                notify(&states);
                match runner.reload("signal:SIGHUP").await {
                    Ok(()) => { let _ = publish_schedule(&runner).await; }
                    Err(p) => tracing::error!("configuration reload refused, the previous configuration stays in force:\n{p}"),
                }
                notify(&[NotifyState::Ready, NotifyState::Status(&status_line(&runner))]);
            }
            () = runner.jobs_changed.notified() => notify(&[NotifyState::Status(&status_line(&runner))]),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: cancelling running jobs"),
    ]);
    tracing::info!("stopping: cancelling running jobs");
    scheduler.abort();
    if !runner.shutdown(STOP_GRACE).await {
        tracing::warn!("some jobs did not finish cancelling within {STOP_GRACE:?}");
    }
    // The checkpointer seals the records of the last moments before it returns.
    if tokio::time::timeout(STOP_GRACE, checkpointer)
        .await
        .is_err()
    {
        tracing::warn!(
            "the audit checkpointer did not finish its final seal within {STOP_GRACE:?}"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Kinds whose latest scheduled slot passed while the agent was down.
fn catch_up(runner: &Arc<Runner>) {
    let cfg = runner.config();
    let store = runner.metrics();
    let now = Utc::now();
    for kind in JobKind::ALL {
        let Some(schedule) = kind.schedule(&cfg) else {
            continue;
        };
        let last = store
            .read(Family::JobLastRun, &[("kind", kind.as_str())])
            // Whole seconds since the epoch: far inside i64.
            .and_then(|t| {
                chrono::DateTime::from_timestamp(
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        t as i64
                    },
                    0,
                )
            });
        if let Some(slot) = crate::schedule::missed_slot(schedule, cfg.timezone, last, now) {
            tracing::warn!(kind = %kind, "the {kind} run scheduled for {} was missed while the agent was down; running it once now", slot.to_rfc3339());
            match runner.submit(kind, Trigger::Schedule, JobParams::default()) {
                Ok(rec) => tracing::info!(job = %rec.id, "catch-up {kind} queued"),
                Err(e) => tracing::warn!("catch-up {kind} not started: {e}"),
            }
        }
    }
}

async fn schedule_loop(runner: Arc<Runner>) {
    catch_up(&runner);
    let mut published = tokio::time::Instant::now();
    loop {
        if published.elapsed() >= METRICS_REFRESH {
            // Also re-renders the file: a fresh mtime even on an idle host.
            if let Err(e) = write_schedule_metrics(&runner).await {
                tracing::error!("refreshing metrics: {e:#}");
            }
            published = tokio::time::Instant::now();
        }
        let now = Utc::now();
        let next = runner.next_fires(now);
        let soonest = next.iter().map(|(_, t)| *t).min();
        let wait = soonest.map_or(MAX_SLEEP, |t| {
            (t - now).to_std().unwrap_or_default().min(MAX_SLEEP)
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = runner.reloaded.notified() => continue,
        }
        let now = Utc::now();
        let due: Vec<JobKind> = next
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(k, _)| *k)
            .collect();
        if due.is_empty() {
            continue;
        }
        for kind in due {
            match runner.submit(kind, Trigger::Schedule, JobParams::default()) {
                Ok(rec) => tracing::debug!(job = %rec.id, "scheduled {kind} queued"),
                Err(e @ SubmitError::AlreadyRunning { .. }) => {
                    tracing::warn!("scheduled {kind} skipped: {e}")
                }
                Err(e) => tracing::error!("scheduled {kind} could not start: {e}"),
            }
        }
        notify(&[NotifyState::Status(&status_line(&runner))]);
        let _ = publish_schedule(&runner).await;
        published = tokio::time::Instant::now();
    }
}

/// Start the task that seals the audit head every `checkpoint_interval_seconds`
/// and once more at shutdown; returns its handle so the caller may wait for
/// the final seal.
pub fn spawn_checkpointer(runner: Arc<Runner>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let token = runner.shutdown_token();
        let mut first = true;
        loop {
            if !first {
                let every = runner.config().audit.checkpoint_interval_seconds.max(1);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(every)) => {}
                    () = token.cancelled() => {
                        seal_pass(&runner).await;
                        break;
                    }
                }
            }
            seal_pass(&runner).await;
            // Shipping runs beside the checkpointer: a slow or absent
            // destination never delays a seal (a pass already running makes
            // this one return at once).
            tokio::spawn(ship_pass(runner.clone()));
            first = false;
        }
    })
}

/// One shipping pass to every `[audit] destinations` entry (SPEC §11), then
/// `cloudnx_audit_offhost_lag_seconds` per destination. A destination that
/// fails keeps its progress and is retried at the next tick, in order.
pub async fn ship_pass(runner: Arc<Runner>) {
    let cfg = runner.config();
    if cfg.audit.destinations.is_empty() {
        return;
    }
    let log = runner.audit_log();
    let token = runner.shutdown_token();
    let mut u = MetricsUpdate::default();
    for name in &cfg.audit.destinations {
        let target = match cfg.audit.target(&cfg.destinations, name, &token) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("audit off-host copy to {name}: {e:#}");
                continue;
            }
        };
        match crate::audit::offhost::ship(log.files(), &cfg.host_id, &cfg.state_dir, &target).await
        {
            Ok(Some(s)) if s.checkpoints > 0 => {
                tracing::info!(destination = %name, checkpoints = s.checkpoints, seq = s.progress.seq, "audit log shipped off the host");
            }
            Ok(_) => {}
            Err(e) => tracing::error!("audit off-host copy to {name}: {e:#}"),
        }
        let (files, state, n) = (log.files().clone(), cfg.state_dir.clone(), name.clone());
        match tokio::task::spawn_blocking(move || {
            crate::audit::offhost::standing(&files, &state, &n)
        })
        .await
        {
            Ok(Ok(s)) => u.set(
                Family::AuditOffhostLag,
                &[("destination", name)],
                crate::audit::offhost::lag_seconds(&s, Utc::now().timestamp()),
            ),
            Ok(Err(e)) => tracing::error!("audit off-host lag for {name}: {e:#}"),
            Err(e) => tracing::error!("audit off-host lag for {name}: {e}"),
        }
    }
    if let Err(e) = runner.metrics().apply_async(u).await {
        tracing::error!("writing the audit off-host metrics: {e:#}");
    }
    let (dests, days, state) = (
        cfg.audit.destinations.clone(),
        cfg.audit.retention_days,
        cfg.state_dir.clone(),
    );
    let now = Utc::now().timestamp();
    match tokio::task::spawn_blocking(move || {
        crate::audit::retention::prune(&log, &state, &dests, days, now)
    })
    .await
    {
        Ok(Ok(p)) => {
            for (f, a, b) in &p.removed {
                tracing::info!(
                    "audit retention: removed {f} (seq {a}..={b}, confirmed off the host)"
                );
            }
        }
        Ok(Err(e)) => tracing::error!("audit retention: {e:#}"),
        Err(e) => tracing::error!("audit retention: {e}"),
    }
}

/// One sealing pass: seal, queue the event, publish the metrics. Failures are
/// logged and retried at the next tick (the records themselves are already durable).
async fn seal_pass(runner: &Runner) {
    let cfg = runner.config();
    let log = runner.audit_log();
    let (key, host) = (cfg.audit.key_source(), cfg.host_id.clone());
    let sealed = match tokio::task::spawn_blocking(move || {
        crate::audit::checkpoint::seal_from(&log, &key, &host)
    })
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!("sealing an audit checkpoint: {e:#}");
            return;
        }
        Err(e) => {
            tracing::error!("sealing an audit checkpoint: {e}");
            return;
        }
    };
    if let (true, Some(cp)) = (sealed.wrote, &sealed.last) {
        tracing::info!(seq = cp.seq, hash = %cp.hash, "audit checkpoint sealed");
        let data = serde_json::to_value(cp).unwrap_or_default();
        if let Err(e) = runner.event("audit.checkpoint", Severity::Info, data).await {
            tracing::error!("queueing the audit.checkpoint event: {e:#}");
        }
    }
    let mut u = MetricsUpdate::default();
    u.set(
        Family::AuditRecords,
        &[],
        sealed.head.as_ref().map_or(0, |h| h.seq) as f64,
    );
    if let Some(ts) = sealed
        .last
        .as_ref()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c.ts).ok())
    {
        u.set(
            Family::AuditLastCheckpoint,
            &[],
            ts.timestamp_millis() as f64 / 1000.0,
        );
    }
    // The signing key's age (SPEC §10, `key="audit:<kid>"`): a key file's
    // creation time; a key on a token has no date the agent can read, so
    // it exports none (its series leave on rotation like any other).
    let mut live = std::collections::BTreeSet::new();
    if cfg.audit.signing_key_pkcs11.is_none() {
        match crate::audit::key::info(&cfg.audit.signing_key_file) {
            Ok((kid, created)) => {
                let key = format!("audit:{kid}");
                u.set(Family::KeyCreated, &[("key", &key)], created as f64);
                live.insert(key);
                u.keep_scoped(Family::KeyCreated, "key", "audit:", live);
            }
            Err(e) => tracing::error!("reading the audit key's date: {e:#}"),
        }
    } else {
        u.keep_scoped(Family::KeyCreated, "key", "audit:", live);
    }
    if let Err(e) = runner.metrics().apply_async(u).await {
        tracing::error!("writing the audit metrics: {e:#}");
    }
}
