//! The API listener: TCP accept with a connection bound, the TLS handshake
//! with a deadline, HTTP/1.1 with header size and header-read deadlines.
//!
//! Owns: connection-level limits (slowloris, connection floods). Never:
//! decides what a request may do — that is [`super::api`].

use super::api;
use super::shared::Shared;
use crate::config::ControlPlaneConfig;
use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Largest request head (request line + headers) accepted, bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Bind `listen` and serve in the background until shutdown.
pub async fn bind_and_serve(shared: Arc<Shared>, cp: &ControlPlaneConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cp.listen).await.with_context(|| {
        format!(
            "binding the control-plane API on {} (is another process listening? change [control_plane] listen)",
            cp.listen
        )
    })?;
    tracing::info!("control-plane API listening on https://{}", cp.listen);
    let slots = Arc::new(Semaphore::new(cp.max_connections as usize));
    let timeout = Duration::from_secs(cp.header_timeout_seconds);
    let token = shared.runner.shutdown_token();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = token.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accepting a control-plane connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: max_connections reached");
                drop(tcp);
                continue;
            };
            let shared = shared.clone();
            let token = token.clone();
            tokio::spawn(async move {
                serve(shared, tcp, peer, timeout, token).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    token: tokio_util::sync::CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // New connections take the material in force now; existing ones keep theirs.
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls().server.clone());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake not completed within {timeout:?}; closed");
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| super::tls::Identity::of(c.as_ref()))
        .unwrap_or_default();
    let conn_info = Arc::new(api::ConnInfo { peer, identity });
    let svc = hyper::service::service_fn(move |req| {
        api::handle(shared.clone(), conn_info.clone(), timeout, req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(%peer, "control-plane connection ended: {e}");
        },
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
