//! A small mTLS control plane for tests, modelled on what the real one
//! checks (docs/api.yaml, `POST /v1/agents/{host_id}/events`): the agent's
//! client certificate must chain to the CA and name `agent.{host_id}`, the
//! URL's host_id must match, the body must be well-formed events with unique
//! ids. It records every batch it got, and can be told to answer 500/503 or
//! to be down (listener closed). Also: the daemon as a real process, and an
//! HTTPS client with a chosen client certificate.

use super::tls::{Pair, Pki};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// How the control plane answers event posts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// 200 for well-formed batches.
    Accept,
    /// This status for every post.
    Fail(u16),
}

/// One POST the control plane got.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Events in the body.
    pub events: Vec<Value>,
    /// What it answered.
    pub status: u16,
}

#[derive(Default)]
struct Recorded {
    batches: Vec<Batch>,
    violations: Vec<String>,
}

/// The test control plane.
pub struct ControlPlane {
    /// Port on 127.0.0.1.
    pub port: u16,
    host_id: String,
    tls: Arc<rustls::ServerConfig>,
    rec: Arc<Mutex<Recorded>>,
    mode: Arc<Mutex<Mode>>,
    rt: tokio::runtime::Runtime,
    running: Mutex<Option<CancellationToken>>,
}

impl ControlPlane {
    /// A control plane for agent `host_id` (not listening until [`up`](Self::up)).
    pub fn new(pki: &Pki, host_id: &str, port: u16) -> ControlPlane {
        Self::with_server_cert(pki, &pki.control_plane, host_id, port)
    }

    /// The same, presenting `server` as its certificate (e.g. an impostor's).
    pub fn with_server_cert(pki: &Pki, server: &Pair, host_id: &str, port: u16) -> ControlPlane {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&pki.ca) {
            roots.add(c).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&server.cert),
                PrivateKeyDer::from_pem_file(&server.key).unwrap(),
            )
            .unwrap();
        ControlPlane {
            port,
            host_id: host_id.to_owned(),
            tls: Arc::new(tls),
            rec: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            running: Mutex::new(None),
        }
    }

    /// Its base URL (the agent's `report_url`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Set how it answers.
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// Start listening (again) on its port.
    pub fn up(&self) {
        let token = CancellationToken::new();
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
            .expect("binding the test control plane");
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let (rec, mode, host, t) = (
            self.rec.clone(),
            self.mode.clone(),
            self.host_id.clone(),
            token.clone(),
        );
        self.rt.spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = t.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (acceptor, rec, mode, host, t) = (
                    acceptor.clone(),
                    rec.clone(),
                    mode.clone(),
                    host.clone(),
                    t.clone(),
                );
                tokio::spawn(async move {
                    // A refused handshake (wrong CA, no cert) just closes.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sans = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| sans(c.as_ref()))
                        .unwrap_or_default();
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, sans.clone(), rec.clone(), mode.clone(), host.clone())
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    tokio::select! { _ = conn => {}, () = t.cancelled() => {} }
                });
            }
        });
        *self.running.lock().unwrap() = Some(token);
    }

    /// Stop listening and drop every connection: the control plane is down.
    pub fn down(&self) {
        if let Some(t) = self.running.lock().unwrap().take() {
            t.cancel();
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "test control plane did not go down"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every batch received so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.rec.lock().unwrap().batches.clone()
    }

    /// Events of the batches it accepted (2xx), in arrival order.
    pub fn accepted_events(&self) -> Vec<Value> {
        self.batches()
            .into_iter()
            .filter(|b| b.status < 300)
            .flat_map(|b| b.events)
            .collect()
    }

    /// Protocol violations seen (must stay empty).
    pub fn violations(&self) -> Vec<String> {
        self.rec.lock().unwrap().violations.clone()
    }
}

fn sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// The problems of one event, if any.
fn check_event(e: &Value, host: &str) -> Vec<String> {
    let mut p = vec![];
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    if s("id").is_none_or(str::is_empty) {
        p.push(format!("event without id: {e}"));
    }
    if s("ts").is_none_or(|t| chrono::DateTime::parse_from_rfc3339(t).is_err()) {
        p.push(format!("event ts not RFC 3339: {e}"));
    }
    if s("host_id") != Some(host) {
        p.push(format!("event host_id is not {host}: {e}"));
    }
    if s("type").is_none_or(str::is_empty) {
        p.push(format!("event without type: {e}"));
    }
    if !matches!(s("severity"), Some("info" | "warning" | "page")) {
        p.push(format!("event severity not info|warning|page: {e}"));
    }
    if e.get("data").is_none() {
        p.push(format!("event without data: {e}"));
    }
    p
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    sans: Vec<String>,
    rec: Arc<Mutex<Recorded>>,
    mode: Arc<Mutex<Mode>>,
    host: String,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |code: u16, msg: &str| {
        Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::json!({"message": msg}).to_string(),
            )))
            .unwrap())
    };
    let violation = |msg: String| rec.lock().unwrap().violations.push(msg);
    if !sans.contains(&format!("agent.{host}")) {
        violation(format!(
            "client certificate names {sans:?}, not agent.{host}"
        ));
        return reply(403, "wrong agent identity");
    }
    let want = format!("/v1/agents/{host}/events");
    if req.method() != hyper::Method::POST || req.uri().path() != want {
        violation(format!(
            "{} {} (expected POST {want})",
            req.method(),
            req.uri().path()
        ));
        return reply(404, "no such endpoint");
    }
    if !req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        violation("content-type is not application/json".into());
        return reply(415, "json only");
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(mut o)) => match o.remove("events") {
            Some(Value::Array(a)) => a,
            _ => {
                violation("object body without an events array".into());
                return reply(400, "events array required");
            }
        },
        _ => {
            violation(format!(
                "body is not JSON: {}",
                String::from_utf8_lossy(&body)
            ));
            return reply(400, "bad json");
        }
    };
    let mut problems: Vec<String> = events.iter().flat_map(|e| check_event(e, &host)).collect();
    let mut ids = std::collections::HashSet::new();
    for e in &events {
        if let Some(id) = e.get("id").and_then(Value::as_str) {
            if !ids.insert(id) {
                problems.push(format!("id {id} twice in one batch"));
            }
        }
    }
    if !problems.is_empty() {
        rec.lock().unwrap().violations.extend(problems);
        return reply(400, "malformed events");
    }
    let m = *mode.lock().unwrap();
    let status = match m {
        Mode::Accept => 200,
        Mode::Fail(c) => c,
    };
    rec.lock().unwrap().batches.push(Batch { events, status });
    reply(
        status,
        if status < 300 {
            "ok"
        } else {
            "failing on purpose"
        },
    )
}

/// The agent daemon as a real process (`cloudnx-agent run --config …`).
pub struct Daemon {
    child: Option<Child>,
    /// Its stderr log.
    pub log: PathBuf,
    /// API port.
    pub port: u16,
}

impl Daemon {
    /// Start it and wait until its API port accepts connections.
    pub fn start(config: &Path, port: u16) -> Daemon {
        let log = config.with_file_name(format!("daemon-{}.log", super::free_port()));
        let child = Command::new(super::agent_bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("CLOUDNX_AGENT_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "cloudnx_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting cloudnx-agent run");
        let mut d = Daemon {
            child: Some(child),
            log,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({st}) before listening:\n{}", d.logs());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not listening on {port} in 20 s:\n{}",
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// What it logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st}:\n{}", self.logs());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon ignored SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTPS client presenting `pair` (TLS 1.3, the PKI's CA as the only root).
pub fn client(pki: &Pki, pair: &Pair) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.ca) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&pair.cert),
            PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
        )
        .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Run curl against the agent with `args`; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(super::require("curl"))
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// curl arguments presenting `pair` and trusting the PKI's CA.
pub fn curl_identity(pki: &Pki, pair: &Pair) -> Vec<String> {
    vec![
        "--cacert".into(),
        pki.ca.display().to_string(),
        "--cert".into(),
        pair.cert.display().to_string(),
        "--key".into(),
        pair.key.display().to_string(),
    ]
}

/// Poll `f` until it returns Some, or panic with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit log lines (parsed) of a scratch state dir.
pub fn audit_records(state: &Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        // A line being appended right now may be incomplete: take whole ones.
        .map_while(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Address of the agent API.
pub fn agent_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `openssl s_client` to the agent on `port` presenting `pair`, with `extra`
/// options (e.g. `-tls1_2`); stdin is empty so it exits after the handshake.
pub fn s_client(pki: &Pki, pair: &Pair, port: u16, extra: &[&str]) -> std::process::Output {
    Command::new(super::require("openssl"))
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(&pki.ca)
        .arg("-cert")
        .arg(&pair.cert)
        .arg("-key")
        .arg(&pair.key)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client")
}

/// The value of one series (`name{labels}`) in the scratch dir's metrics file.
pub fn metric(s: &super::Scratch, series: &str) -> Option<f64> {
    s.prom()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A scratch host with a PKI and the daemon serving the API (no report_url).
pub struct AgentHost {
    /// Scratch dir (state/, metrics/, tls/).
    pub s: super::Scratch,
    /// Its certificates.
    pub pki: Pki,
    /// `agent.toml`.
    pub config: PathBuf,
    /// The running daemon.
    pub d: Daemon,
}

impl AgentHost {
    /// Start one with `extra` keys in `[control_plane]`.
    pub fn start(extra: &str) -> AgentHost {
        let s = super::Scratch::new();
        let pki = Pki::new(&s.path("tls"), "test-host");
        let port = super::free_port();
        let config = s.config(&pki.config_section(port, None, extra));
        let d = Daemon::start(&config, port);
        AgentHost { s, pki, config, d }
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.d.port)
    }
}
