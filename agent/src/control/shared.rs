//! What the API, the pusher and the certificate watcher share: the runner,
//! the TLS material in force (swapped whole on a good reload), the rate limiter.

use super::limit::RateLimiter;
use super::tls;
use crate::audit::AuditEntry;
use crate::config::ControlPlaneConfig;
use crate::metrics::{Family, MetricsUpdate};
use crate::runner::Runner;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// State shared by the API, the pusher and the certificate watcher.
pub struct Shared {
    /// The one runner.
    pub runner: Arc<Runner>,
    /// TLS material in force; swapped whole on a successful reload.
    tls: RwLock<Arc<tls::Material>>,
    /// RFC 3339 start time of the daemon.
    pub started_at: String,
    /// Per-identity request budget.
    pub limiter: Mutex<RateLimiter>,
    /// Wakes the pusher (new event, new certificate).
    pub wake: tokio::sync::Notify,
    reload_failures: AtomicU64,
}

impl Shared {
    /// The state of a daemon whose TLS material was just loaded.
    pub fn new(runner: Arc<Runner>, material: tls::Material) -> Self {
        Shared {
            runner,
            tls: RwLock::new(Arc::new(material)),
            started_at: crate::util::now_rfc3339(),
            limiter: Mutex::new(RateLimiter::default()),
            wake: tokio::sync::Notify::new(),
            reload_failures: AtomicU64::new(0),
        }
    }

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

    /// The certificates' expiry and the refused reloads, as metrics.
    pub async fn publish_tls_metrics(&self) {
        let m = self.tls();
        let mut u = MetricsUpdate::default();
        #[allow(clippy::cast_precision_loss)]
        {
            u.set(
                Family::TlsCertExpiry,
                &[("cert", "agent")],
                m.cert_not_after as f64,
            );
            u.set(
                Family::TlsCertExpiry,
                &[("cert", "ca")],
                m.ca_not_after as f64,
            );
            u.set(
                Family::TlsReloadFailures,
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
