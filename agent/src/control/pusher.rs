//! Delivery of the outbox to `POST {report_url}/v1/agents/{host_id}/events`
//! (body `{"events": [...]}`, in append order, batched), with exponential
//! backoff and jitter; and the heartbeat event.
//!
//! Owns: the at-least-once contract. An event leaves the outbox only after
//! the control plane answered 2xx for a batch holding it; a crash between the
//! answer and the compaction only repeats events (same `id`), never loses one.
//! Never: reorders — a failed batch stops the pass, the next pass starts again
//! from the oldest event still in the file.

use super::shared::Shared;
use crate::outbox::{Event, Outbox, Severity, HEARTBEAT};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events per POST.
pub const BATCH: usize = 200;
/// How often the outbox is looked at when idle (CLI one-shots append from
/// other processes without telling the daemon).
const POLL: Duration = Duration::from_secs(1);
/// Without `report_url` nothing is delivered: the loop only keeps the outbox
/// bounded and its metric current, which needs no per-second wake-ups
/// (they were ~120 of an idle daemon's ~140 per minute).
const IDLE_POLL: Duration = Duration::from_secs(30);
/// Per-request deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Compact at least this often during a long backlog, so a crash repeats
/// little.
const COMPACT_EVERY: usize = 2_000;

/// The delay before retry `attempt` (0-based): `base × 2^attempt` capped at
/// `max`, then "equal jitter" — half fixed, half random (`jitter` in 0..1) —
/// so a fleet recovering from one outage does not retry in lockstep.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(30)));
    let capped = exp.min(max);
    capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// The events URL of a host.
pub fn events_url(report_url: &str, host_id: &str) -> String {
    format!(
        "{}/v1/agents/{host_id}/events",
        report_url.trim_end_matches('/')
    )
}

fn client(m: &super::tls::Material) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(m.client.clone())
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("cloudnx-agent/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

async fn send(client: &reqwest::Client, url: &str, batch: &[Event]) -> anyhow::Result<()> {
    let resp = client
        .post(url)
        .json(&serde_json::json!({ "events": batch }))
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("POST {url}")))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    anyhow::bail!("POST {url}: control plane answered {status}: {body}")
}

type Stamp = (u64, u64, std::time::SystemTime);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// The delivery loop (daemon task).
pub async fn deliver(shared: Arc<Shared>, token: CancellationToken) {
    let mut delivered: HashSet<String> = HashSet::new();
    let mut attempt = 0u32;
    let mut last_count: Option<usize> = None;
    let mut current: Option<(String, reqwest::Client)> = None;
    // The outbox's stamp and event count when it was last read. Only the
    // count is kept: holding the events between passes would keep a whole
    // backlog (up to outbox_max_events, tens of MB) resident while the
    // control plane is down or when there is no report_url at all.
    let mut cache: Option<(Option<Stamp>, usize)> = None;
    loop {
        let cfg = shared.runner.config();
        let Some(cp) = cfg.control_plane.clone() else {
            tokio::select! { () = token.cancelled() => return, () = tokio::time::sleep(POLL) => continue }
        };
        let outbox = Outbox::new(&cfg.state_dir);
        let max = cp.outbox_max_events;
        // Appends only grow the file and compaction replaces it, so an equal
        // (inode, length, mtime) taken before the last read means nothing
        // new: skip re-reading a large idle outbox every second.
        let stamp = stamp(outbox.path());
        let unchanged = match &cache {
            // Nothing new, nothing acknowledged, and nothing to send from it.
            Some((st, n))
                if delivered.is_empty()
                    && stamp.is_some()
                    && *st == stamp
                    && (cp.report_url.is_none() || *n == 0) =>
            {
                Some(*n)
            }
            _ => None,
        };
        let pending = match unchanged {
            Some(_) => Vec::new(),
            None => {
                let acked = std::mem::take(&mut delivered);
                let compacted = {
                    let outbox = outbox.clone();
                    tokio::task::spawn_blocking(move || outbox.compact(&acked, max)).await
                };
                match compacted {
                    Ok(Ok(c)) => {
                        cache = Some((stamp, c.pending.len()));
                        c.pending
                    }
                    Ok(Err(e)) => {
                        tracing::error!("event outbox: {e:#}");
                        tokio::select! { () = token.cancelled() => return, () = tokio::time::sleep(POLL) => continue }
                    }
                    Err(e) => {
                        tracing::error!("event outbox: {e}");
                        tokio::select! { () = token.cancelled() => return, () = tokio::time::sleep(POLL) => continue }
                    }
                }
            }
        };
        if token.is_cancelled() {
            return;
        }
        let count = unchanged.unwrap_or(pending.len());
        if last_count != Some(count) {
            last_count = Some(count);
            let mut u = crate::metrics::MetricsUpdate::default();
            #[allow(clippy::cast_precision_loss)]
            u.set(crate::metrics::Family::OutboxEvents, &[], count as f64);
            super::shared::apply_metrics(&shared.runner, u).await;
        }

        let mut failed = false;
        if let (Some(url), false) = (&cp.report_url, pending.is_empty()) {
            let url = events_url(url, &cfg.host_id);
            let tls = shared.tls();
            if current
                .as_ref()
                .is_none_or(|(serial, _)| *serial != tls.cert_serial)
            {
                match client(&tls) {
                    Ok(c) => current = Some((tls.cert_serial.clone(), c)),
                    Err(e) => tracing::error!("building the event client: {e:#}"),
                }
            }
            if let Some((_, http)) = &current {
                for batch in pending.chunks(BATCH) {
                    let r = tokio::select! {
                        () = token.cancelled() => break,
                        r = send(http, &url, batch) => r,
                    };
                    match r {
                        Ok(()) => {
                            attempt = 0;
                            delivered.extend(batch.iter().map(|e| e.id.clone()));
                            tracing::debug!(n = batch.len(), "events delivered");
                            if delivered.len() >= COMPACT_EVERY {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(
                                pending = pending.len(),
                                attempt,
                                "event delivery failed, will retry: {e:#}"
                            );
                            failed = true;
                            break;
                        }
                    }
                }
            }
        }
        // Not kept across the wait below (see `cache`).
        let was_read = !pending.is_empty();
        drop(pending);
        if was_read {
            crate::util::trim_heap();
        }
        if !delivered.is_empty() && !failed {
            // Compact right away, then look for more.
            continue;
        }
        let stopped = if failed {
            // Only time ends a backoff: heartbeats and reloads must not turn a
            // long outage into a retry storm.
            let max = Duration::from_secs(cp.retry_max_seconds);
            let wait = backoff_delay(attempt, Duration::from_secs(1), max, rand::random::<f64>());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = token.cancelled() => true,
                () = tokio::time::sleep(wait) => false,
            }
        } else {
            let poll = if cp.report_url.is_some() {
                POLL
            } else {
                IDLE_POLL
            };
            tokio::select! {
                () = token.cancelled() => true,
                () = tokio::time::sleep(poll) => false,
                () = shared.wake.notified() => false,
            }
        };
        if stopped {
            // Remove what was delivered before stopping, so a restart does
            // not repeat it.
            let acked = std::mem::take(&mut delivered);
            let _ = tokio::task::spawn_blocking(move || outbox.compact(&acked, max)).await;
            return;
        }
    }
}

/// The heartbeat task: one `heartbeat` event every `heartbeat_seconds`.
pub async fn heartbeat(shared: Arc<Shared>, token: CancellationToken) {
    let started = std::time::Instant::now();
    loop {
        let every = shared.cp().map_or(60, |c| c.heartbeat_seconds).max(1);
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        let running: Vec<&str> = crate::jobs::JobKind::ALL
            .iter()
            .filter(|k| shared.runner.is_running(**k))
            .map(|k| k.as_str())
            .collect();
        let data = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": shared.started_at,
            "uptime_seconds": started.elapsed().as_secs(),
            "running": running,
        });
        match shared.runner.event(HEARTBEAT, Severity::Info, data).await {
            Ok(()) => shared.wake.notify_one(),
            Err(e) => tracing::error!("queueing the heartbeat: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_half_jitter() {
        let s = Duration::from_secs;
        let table = [
            (0, 0.0, s(1) / 2),
            (0, 1.0, s(1)),
            (1, 0.0, s(1)),
            (3, 1.0, s(8)),
            (3, 0.5, s(6)),
            (10, 0.0, s(30)),
            (10, 1.0, s(60)),
            (u32::MAX, 1.0, s(60)),
        ];
        for (attempt, jitter, want) in table {
            assert_eq!(
                backoff_delay(attempt, s(1), s(60), jitter),
                want,
                "attempt {attempt} jitter {jitter}"
            );
        }
    }

    #[test]
    fn events_url_joins_without_double_slash() {
        assert_eq!(
            events_url("https://cp:8443/", "h1"),
            "https://cp:8443/v1/agents/h1/events"
        );
        assert_eq!(
            events_url("https://cp:8443/base", "h1"),
            "https://cp:8443/base/v1/agents/h1/events"
        );
    }
}
