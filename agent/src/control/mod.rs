//! The control plane side of the agent: the durable event outbox, the mTLS
//! API server, the event pusher with its heartbeat, certificate reload, and
//! the operator client `ctl`.
//!
//! Owns: everything that crosses the network to or from the control plane.
//! Never: runs a duty, writes a job's audit records or metrics itself — jobs go
//! through [`Runner::submit`] like every other trigger.

pub mod api;
pub mod limit;
pub mod pusher;
pub mod server;
pub mod shared;
pub mod tls;

use crate::runner::Runner;
pub use shared::Shared;
use std::sync::Arc;
use std::time::Duration;

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
    let shared = Arc::new(Shared::new(runner.clone(), material));
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
