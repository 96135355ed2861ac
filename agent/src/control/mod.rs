//! The control plane side of the agent: the durable event outbox, the mTLS
//! API server, the event pusher with its heartbeat, certificate reload, and
//! the operator client `ctl`.
//!
//! Owns: everything that crosses the network to or from the control plane.
//! Never: runs a duty, writes a job's audit records or metrics itself — jobs go
//! through [`Runner::submit`] like every other trigger.

pub mod api;
pub mod ctl;
pub mod outbox;
pub mod pusher;
pub mod server;
pub mod tls;

use crate::audit::AuditEntry;
use crate::config::ControlPlaneConfig;
use crate::metrics::MetricsUpdate;
use crate::runner::Runner;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// State shared by the API, the pusher and the certificate watcher.
pub struct Shared {
    /// The one runner.
    pub runner: Arc<Runner>,
    /// TLS material in force; swapped whole on a successful reload.
    tls: RwLock<Arc<tls::Material>>,
    /// RFC 3339 start time of the daemon.
    pub started_at: String,
    /// Per-identity request budget.
    pub limiter: Mutex<api::RateLimiter>,
    /// Wakes the pusher (new event, new certificate).
    pub wake: tokio::sync::Notify,
    reload_failures: AtomicU64,
}

impl Shared {
    /// The TLS material in force.
    pub fn tls(&self) -> Arc<tls::Material> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `[control_plane]` in force (None if a reload removed it).
    pub fn cp(&self) -> Option<ControlPlaneConfig> {
        self.runner.config().control_plane.clone()
    }

    /// Reload certificate, key, CA and CRL from the files the configuration
    /// names. A pair that fails validation is refused: the old material stays
    /// in force, the failure is logged, counted and audited.
    pub async fn reload_tls(&self, why: &str) {
        let Some(cp) = self.cp() else { return };
        let old_serial = self.tls().cert_serial.clone();
        let loaded = {
            let cp = cp.clone();
            tokio::task::spawn_blocking(move || tls::load(&cp))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("reload task failed: {e}")))
        };
        let detail = match &loaded {
            Ok(m) => {
                tracing::info!(serial = %m.cert_serial, "TLS certificate reloaded ({why}); new connections use it");
                serde_json::json!({"accepted": true, "reason": why, "serial": m.cert_serial,
                    "previous_serial": old_serial, "not_after": m.cert_not_after})
            }
            Err(e) => {
                let n = self.reload_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    "TLS reload refused ({why}), the previous certificate stays in force: {e:#}"
                );
                serde_json::json!({"accepted": false, "reason": why, "error": format!("{e:#}"),
                    "serving_serial": old_serial, "failures": n})
            }
        };
        if let Ok(m) = loaded {
            *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
            self.wake.notify_one();
        }
        self.publish_tls_metrics().await;
        let entry = AuditEntry {
            actor: "daemon".into(),
            action: "tls.reload".into(),
            detail,
            ..Default::default()
        };
        if let Err(e) = self.runner.audit(entry).await {
            tracing::error!("could not audit the TLS reload: {e:#}");
        }
    }

    async fn publish_tls_metrics(&self) {
        let m = self.tls();
        let mut u = MetricsUpdate::default();
        #[allow(clippy::cast_precision_loss)]
        {
            u.set(
                "cloudnx_tls_certificate_expiry_timestamp_seconds",
                &[("cert", "agent")],
                m.cert_not_after as f64,
            );
            u.set(
                "cloudnx_tls_certificate_expiry_timestamp_seconds",
                &[("cert", "ca")],
                m.ca_not_after as f64,
            );
            u.set(
                "cloudnx_tls_reload_failures_total",
                &[],
                self.reload_failures.load(Ordering::Relaxed) as f64,
            );
        }
        apply_metrics(&self.runner, u).await;
    }
}

/// Apply a metrics update from async code, logging (not failing) on error.
pub(crate) async fn apply_metrics(runner: &Runner, u: MetricsUpdate) {
    if let Err(e) = runner.metrics().apply_async(u).await {
        tracing::error!("writing metrics: {e:#}");
    }
}

/// Start the control-plane services of the daemon (API listener, event pusher,
/// heartbeat, certificate watcher). Returns once the listener is bound, so
/// READY=1 follows it; everything stops on the runner's shutdown token.
/// Without `[control_plane]` there is nothing to start (events stay in the outbox).
pub async fn start(runner: Arc<Runner>) -> anyhow::Result<()> {
    let Some(cp) = runner.config().control_plane.clone() else {
        return Ok(());
    };
    let material = {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || tls::load(&cp)).await??
    };
    tracing::info!(serial = %material.cert_serial, "control-plane TLS certificate loaded");
    let shared = Arc::new(Shared {
        runner: runner.clone(),
        tls: RwLock::new(Arc::new(material)),
        started_at: crate::util::now_rfc3339(),
        limiter: Mutex::new(api::RateLimiter::default()),
        wake: tokio::sync::Notify::new(),
        reload_failures: AtomicU64::new(0),
    });
    shared.publish_tls_metrics().await;
    server::bind_and_serve(shared.clone(), &cp).await?;
    let token = runner.shutdown_token();
    tokio::spawn(pusher::deliver(shared.clone(), token.clone()));
    tokio::spawn(pusher::heartbeat(shared.clone(), token.clone()));
    tokio::spawn(watch_certificates(shared, token));
    Ok(())
}

/// Quiet time after a file event before reloading: a rotation writes the key
/// and the certificate separately, and the half-written pair must not count.
const DEBOUNCE: Duration = Duration::from_millis(700);

async fn watch_certificates(shared: Arc<Shared>, token: tokio_util::sync::CancellationToken) {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<std::path::PathBuf>>();
    let mut watcher = match notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        // Reads (ours, openssl's, curl's) are events too: only changes count.
        match r {
            Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
                let _ = tx.send(ev.paths);
            }
            _ => {}
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch the certificate files ({e}); certificates reload only on SIGHUP or POST /v1/config/reload");
            return;
        }
    };
    let mut watched: Vec<std::path::PathBuf> = vec![];
    let mut files: Vec<std::path::PathBuf> = vec![];
    loop {
        // (Re)arm on the files the configuration in force names; watch their
        // directories, since rotation usually renames a new file into place.
        if let Some(cp) = shared.cp() {
            let want: Vec<_> = [
                Some(&cp.cert_file),
                Some(&cp.key_file),
                Some(&cp.ca_file),
                cp.crl_file.as_ref(),
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
            if want != files {
                for d in watched.drain(..) {
                    let _ = watcher.unwatch(&d);
                }
                for f in &want {
                    let dir = f.parent().unwrap_or(std::path::Path::new("/")).to_owned();
                    if !watched.contains(&dir) {
                        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                            Ok(()) => {
                                tracing::debug!(
                                    "watching {} for certificate changes",
                                    dir.display()
                                );
                                watched.push(dir);
                            }
                            Err(e) => tracing::error!("cannot watch {}: {e}", dir.display()),
                        }
                    }
                }
                files = want;
            }
        }
        let why = tokio::select! {
            () = token.cancelled() => return,
            () = shared.runner.reloaded.notified() => "configuration reload",
            Some(paths) = rx.recv() => {
                tracing::debug!(?paths, "certificate directory changed");
                if !paths.iter().any(|p| files.contains(p)) {
                    continue;
                }
                // Debounce: wait until our files are quiet (bounded, so a file
                // rewritten forever still gets looked at).
                let give_up = tokio::time::Instant::now() + 10 * DEBOUNCE;
                let mut quiet = tokio::time::Instant::now() + DEBOUNCE;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(quiet.min(give_up)) => break,
                        more = rx.recv() => match more {
                            None => break,
                            Some(p) if p.iter().any(|p| files.contains(p)) => {
                                quiet = tokio::time::Instant::now() + DEBOUNCE;
                            }
                            Some(_) => {}
                        },
                    }
                }
                "certificate files changed"
            }
        };
        shared.reload_tls(why).await;
    }
}
