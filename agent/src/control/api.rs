//! The control-plane API (SPEC §6, `docs/api.yaml`): authorisation by client
//! certificate SAN, per-identity rate limit, routing, and the audit record of
//! every request that is not GET/HEAD/OPTIONS (and of every refusal with 403).
//!
//! Owns: HTTP semantics of the API. Never: runs a job or reloads the
//! configuration itself — it calls [`Runner::submit`] and [`Runner::reload`].

use super::shared::Shared;
use crate::audit::AuditEntry;
use crate::jobs::{JobKind, JobParams};
use crate::runner::{SubmitError, Trigger};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted, bytes (job parameters are tiny).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most audit records one `GET /v1/audit` returns.
pub const MAX_AUDIT_LIMIT: usize = 1000;

/// What the connection knows about its peer.
#[derive(Debug)]
pub struct ConnInfo {
    /// Source address.
    pub peer: SocketAddr,
    /// Names in the verified client certificate.
    pub identity: super::tls::Identity,
}

/// What a route produced.
struct Reply {
    status: StatusCode,
    body: Value,
    /// Audit action (`api.…`).
    action: &'static str,
    detail: Value,
    location: Option<String>,
}

impl Reply {
    fn new(status: StatusCode, body: Value, action: &'static str) -> Reply {
        Reply {
            status,
            body,
            action,
            detail: Value::Null,
            location: None,
        }
    }

    fn error(status: StatusCode, action: &'static str, msg: impl Into<String>) -> Reply {
        let msg = msg.into();
        Reply {
            detail: json!({"error": msg}),
            ..Reply::new(status, json!({"error": msg}), action)
        }
    }
}

/// The HTTP status for a refused job submission, and a machine-readable reason.
pub fn submit_error_status(e: &SubmitError) -> (StatusCode, &'static str) {
    match e {
        SubmitError::AlreadyRunning { .. } => (StatusCode::CONFLICT, "already_running"),
        // The request is well-formed but this host cannot run that job: the
        // control plane must not retry it as if it were busy (409).
        SubmitError::NotConfigured(_) => (StatusCode::UNPROCESSABLE_ENTITY, "not_configured"),
        SubmitError::Setup(_) => (StatusCode::INTERNAL_SERVER_ERROR, "setup_failed"),
    }
}

fn header(req: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `X-Request-Id` when it is a sane token, else a fresh id.
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
        {
            v.to_owned()
        }
        _ => crate::util::new_id(),
    }
}

/// Serve one request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    body_timeout: Duration,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let rid = request_id(header(&req, "x-request-id").as_deref());
    let user_agent = header(&req, "user-agent");
    let cp = shared.cp();
    let (allowed, rate) = cp.as_ref().map_or((vec![], 1), |c| {
        (c.allowed_clients.clone(), c.requests_per_second)
    });
    let actor = conn
        .identity
        .allowed(&allowed)
        .map_or_else(|| conn.identity.label.clone(), str::to_owned);

    let limited = path != "/healthz"
        && !shared
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(&conn.identity.label, rate, started);
    let reply = if limited {
        Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "api.rate_limited",
            format!("more than {rate} requests per second from {actor}; slow down"),
        )
    } else if conn.identity.allowed(&allowed).is_none() {
        tracing::warn!(peer = %conn.peer, client = %conn.identity.label, names = ?conn.identity.names, "{method} {path} refused: client not in allowed_clients");
        Reply::error(
            StatusCode::FORBIDDEN,
            "api.forbidden",
            format!(
                "client certificate {} carries no SAN listed in allowed_clients",
                conn.identity.label
            ),
        )
    } else {
        route(
            &shared,
            &actor,
            &rid,
            &method,
            &path,
            &query,
            req,
            body_timeout,
        )
        .await
    };

    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let reading = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !reading || reply.status == StatusCode::FORBIDDEN {
        let entry = AuditEntry {
            actor: actor.clone(),
            source_ip: Some(conn.peer.ip().to_string()),
            method: Some(method.to_string()),
            path: Some(path.clone()),
            status: Some(reply.status.as_u16()),
            request_id: Some(rid.clone()),
            user_agent: user_agent.clone(),
            duration_ms: Some(duration_ms),
            action: reply.action.into(),
            detail: reply.detail.clone(),
        };
        if let Err(e) = shared.runner.audit(entry).await {
            tracing::error!(request_id = %rid, "could not audit {method} {path}: {e:#}");
        }
    }
    tracing::debug!(request_id = %rid, client = %actor, status = reply.status.as_u16(), "{method} {path}");
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut resp = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .header("x-request-id", &rid);
    if let Some(l) = &reply.location {
        resp = resp.header("location", l);
    }
    if reply.status == StatusCode::TOO_MANY_REQUESTS {
        resp = resp.header("retry-after", "1");
    }
    Ok(resp
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[allow(clippy::too_many_arguments)]
async fn route(
    shared: &Arc<Shared>,
    actor: &str,
    rid: &str,
    method: &Method,
    path: &str,
    query: &str,
    req: Request<hyper::body::Incoming>,
    body_timeout: Duration,
) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, ["healthz"]) => {
            Reply::new(StatusCode::OK, json!({"status": "ok"}), "api.healthz")
        }
        (&Method::GET | &Method::HEAD, ["v1", "status"]) => {
            Reply::new(StatusCode::OK, status(shared).await, "api.status")
        }
        (&Method::POST, ["v1", "jobs", kind]) => {
            let body = match read_body(req, body_timeout).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            submit(shared, actor, rid, kind, &body)
        }
        (&Method::GET | &Method::HEAD, ["v1", "jobs", id]) => match shared.runner.job(id) {
            Some(rec) => Reply::new(
                StatusCode::OK,
                serde_json::to_value(rec).unwrap_or_default(),
                "api.job",
            ),
            None => Reply::error(
                StatusCode::NOT_FOUND,
                "api.job",
                format!("no job {id} in the recent history of this agent (records are kept for the last {} jobs of this daemon)", crate::runner::KEEP_RECORDS),
            ),
        },
        (&Method::GET | &Method::HEAD, ["v1", "audit"]) => audit_page(shared, query).await,
        (&Method::POST, ["v1", "config", "reload"]) => {
            match shared.runner.reload(actor).await {
                Ok(()) => Reply {
                    detail: json!({"accepted": true}),
                    ..Reply::new(
                        StatusCode::OK,
                        json!({"status": "reloaded", "files": shared.runner.config().files}),
                        "api.config.reload",
                    )
                },
                Err(p) => {
                    let problems: Vec<String> = p.0.iter().map(ToString::to_string).collect();
                    Reply {
                        detail: json!({"accepted": false, "problems": problems}),
                        ..Reply::new(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "the new configuration was refused; the previous one stays in force", "problems": problems}),
                            "api.config.reload",
                        )
                    }
                }
            }
        }
        (_, ["healthz"] | ["v1", "status"] | ["v1", "jobs", _] | ["v1", "audit"] | ["v1", "config", "reload"]) => {
            Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "api.method_not_allowed",
                format!("{method} is not allowed on {path} (see docs/api.yaml)"),
            )
        }
        _ => Reply::error(
            StatusCode::NOT_FOUND,
            "api.not_found",
            format!("no such endpoint {path} (see docs/api.yaml)"),
        ),
    }
}

async fn read_body(req: Request<hyper::body::Incoming>, timeout: Duration) -> Result<Bytes, Reply> {
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "api.body_too_large",
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(e)) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "api.bad_body",
            format!("reading the request body: {e}"),
        )),
        Err(_) => Err(Reply::error(
            StatusCode::REQUEST_TIMEOUT,
            "api.body_timeout",
            format!("request body not received within {timeout:?}"),
        )),
    }
}

fn submit(shared: &Arc<Shared>, actor: &str, rid: &str, kind: &str, body: &[u8]) -> Reply {
    let Some(kind) = JobKind::parse(kind) else {
        let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        return Reply::error(
            StatusCode::NOT_FOUND,
            "api.job.submit",
            format!("unknown job kind {kind:?}; one of {kinds:?}"),
        );
    };
    if !kind.startable_by_api() {
        return Reply::error(
            StatusCode::FORBIDDEN,
            "api.job.submit",
            format!("{kind} runs only from the host itself (cloudnx-agent {kind}), never through the API"),
        );
    }
    let params = match job_params(body) {
        Ok(p) if p.restore.is_some() => {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "api.job.submit",
                format!("`restore` parameters are not accepted for {kind}"),
            )
        }
        Ok(p) => p,
        Err(e) => {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "api.job.submit",
                format!("the body is not valid job parameters for {kind}: {e}"),
            )
        }
    };
    let trigger = Trigger::Api {
        actor: actor.to_owned(),
        request_id: rid.to_owned(),
    };
    match shared.runner.submit(kind, trigger, params) {
        Ok(rec) => Reply {
            detail: json!({"kind": kind, "job_id": rec.id}),
            location: Some(format!("/v1/jobs/{}", rec.id)),
            ..Reply::new(
                StatusCode::ACCEPTED,
                json!({"id": rec.id, "kind": kind, "state": rec.state}),
                "api.job.submit",
            )
        },
        Err(e) => {
            let (status, reason) = submit_error_status(&e);
            let msg = e.to_string();
            Reply {
                detail: json!({"kind": kind, "reason": reason, "error": msg}),
                ..Reply::new(
                    status,
                    json!({"error": msg, "reason": reason, "kind": kind}),
                    "api.job.submit",
                )
            }
        }
    }
}

async fn status(shared: &Arc<Shared>) -> Value {
    let r = &shared.runner;
    let cfg = r.config();
    let last = r.last_runs();
    let ok = r.last_successes();
    let next: HashMap<JobKind, String> = r
        .next_fires(chrono::Utc::now())
        .into_iter()
        .map(|(k, t)| (k, t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .collect();
    let mut jobs = serde_json::Map::new();
    for k in JobKind::ALL {
        jobs.insert(
            k.as_str().into(),
            json!({
                "configured": k.configured(&cfg),
                "running": r.is_running(k),
                "next_run": next.get(&k),
                "last_run": last.get(&k),
                "last_success": ok.get(&k),
            }),
        );
    }
    // LUKS volume states as the last luks-check of this daemon reported them.
    let luks = last
        .get(&JobKind::LuksCheck)
        .and_then(|l| r.job(&l.id))
        .map(|j| j.result.get("volumes").cloned().unwrap_or(j.result));
    let outbox = crate::outbox::Outbox::new(&cfg.state_dir);
    let pending = tokio::task::spawn_blocking(move || outbox.pending().map(|p| p.len()))
        .await
        .ok()
        .and_then(Result::ok);
    json!({
        "host_id": cfg.host_id,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": shared.started_at,
        "jobs": jobs,
        "luks": {"volumes": luks},
        "outbox": {"pending": pending},
        "tls": {"serial": shared.tls().cert_serial, "not_after": shared.tls().cert_not_after},
    })
}

/// The parameters of `POST /v1/jobs/{kind}`: an empty (or all-whitespace) body means the defaults.
pub fn job_params(body: &[u8]) -> Result<JobParams, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(JobParams::default())
    } else {
        serde_json::from_slice(body)
    }
}

/// `after_seq` and `limit` from a query string (defaults 0 and 100).
pub fn audit_query(query: &str) -> Result<(u64, usize), String> {
    let (mut after, mut limit) = (0u64, 100usize);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after_seq" => {
                after = v
                    .parse()
                    .map_err(|_| format!("after_seq {v:?} is not a number"))?
            }
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| format!("limit {v:?} is not a number"))?;
                if limit == 0 || limit > MAX_AUDIT_LIMIT {
                    return Err(format!("limit must be 1..={MAX_AUDIT_LIMIT}"));
                }
            }
            _ => return Err(format!("unknown query parameter {k:?} (after_seq, limit)")),
        }
    }
    Ok((after, limit))
}

async fn audit_page(shared: &Arc<Shared>, query: &str) -> Reply {
    let (after, limit) = match audit_query(query) {
        Ok(q) => q,
        Err(e) => return Reply::error(StatusCode::BAD_REQUEST, "api.audit", e),
    };
    let path = shared.runner.config().audit.path.clone();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Value>> {
        use std::io::BufRead;
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v.get("seq")
                .and_then(Value::as_u64)
                .is_some_and(|s| s > after)
            {
                out.push(v);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await;
    match read {
        Ok(Ok(records)) => Reply::new(StatusCode::OK, json!({"records": records}), "api.audit"),
        Ok(Err(e)) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.audit",
            format!("reading the audit log: {e}"),
        ),
        Err(e) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.audit",
            format!("reading the audit log: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_errors_map_to_distinct_statuses() {
        let table = [
            (
                SubmitError::AlreadyRunning {
                    kind: JobKind::Backup,
                    holder: "pid 1".into(),
                },
                409,
                "already_running",
            ),
            (
                SubmitError::NotConfigured(JobKind::Snapshot),
                422,
                "not_configured",
            ),
            (
                SubmitError::Setup(anyhow::anyhow!("disk full")),
                500,
                "setup_failed",
            ),
        ];
        for (e, code, reason) in table {
            assert_eq!(
                submit_error_status(&e),
                (StatusCode::from_u16(code).unwrap(), reason),
                "{e}"
            );
        }
    }

    #[test]
    fn audit_query_parses_defaults_bounds_and_rejects_junk() {
        type Row<'a> = (&'a str, Result<(u64, usize), ()>);
        let table: &[Row] = &[
            ("", Ok((0, 100))),
            ("after_seq=5&limit=2", Ok((5, 2))),
            ("limit=1000", Ok((0, 1000))),
            ("limit=1001", Err(())),
            ("limit=0", Err(())),
            ("after_seq=x", Err(())),
            ("since=3", Err(())),
        ];
        for (q, want) in table {
            assert_eq!(audit_query(q).map_err(|_| ()), *want, "{q}");
        }
    }

    #[test]
    fn request_id_is_honoured_when_sane_else_generated() {
        assert_eq!(request_id(Some("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [Some(""), Some("a b"), Some("<script>"), None] {
            let r = request_id(bad);
            assert_eq!(r.len(), 32, "{bad:?}");
        }
        assert_eq!(request_id(Some(&"x".repeat(129))).len(), 32);
    }
}
