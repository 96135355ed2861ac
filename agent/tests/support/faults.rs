//! Helpers for the fault-injection tests (`faults_*.rs`): a backup rig (real
//! PostgreSQL, GnuPG, a filesystem destination and optionally S3), an agent
//! process that can be killed at a named fail point, and an S3 fault proxy that
//! sits in front of moto and answers chosen requests with 500, 503 SlowDown or
//! a dropped connection, or plays a hostile server (issue #23): list pages
//! forever, never answer, answer an oversized body.

use super::gpg::Gpg;
use super::postgres::Pg;
use super::Scratch;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The S3 bucket every fault test writes to.
pub const BUCKET: &str = "faults";

/// A source cluster, an OpenPGP key pair, and the scratch dir configs live in.
pub struct Rig {
    /// Scratch dir (state, metrics, fs destination, spool).
    pub scratch: Scratch,
    /// The key pair backups are encrypted to.
    pub gpg: Gpg,
    /// The source cluster, with database `app`.
    pub pg: Pg,
}

impl Rig {
    /// Start PostgreSQL with database `app` holding `rows` rows of poorly
    /// compressible text (~100 bytes each), and make a key pair.
    pub fn new(rows: u32) -> Rig {
        let pg = Pg::start();
        pg.psql("postgres", "CREATE DATABASE app");
        pg.psql(
            "app",
            &format!("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g*3)::text) || md5((g*7)::text) AS h FROM generate_series(1, {rows}) g"),
        );
        let scratch = Scratch::new();
        let gpg = Gpg::new();
        gpg.export_public(&scratch.path("backup.pub.asc"));
        std::fs::create_dir_all(scratch.path("keys")).unwrap();
        gpg.export_secret(&scratch.path("keys/backup.sec.asc"));
        std::fs::create_dir_all(scratch.path("spool")).unwrap();
        Rig { scratch, gpg, pg }
    }

    /// A config backing up `app` to the filesystem destination `local` and,
    /// when given, the S3 endpoint as `s3`; a restore drill from `local`.
    pub fn config(&self, s3: Option<&str>, extra_backup: &str) -> PathBuf {
        let s3 = s3.map(|e| super::S3Dest::new(e, BUCKET));
        let (mut body, names) = self.scratch.destinations(s3.as_ref());
        body += &format!(
            "[backup]\nconnection = \"{}\"\ndestinations = [{names}]\nencrypt_to = [\"{}\"]\ndatabases = [\"app\"]\n\
             globals = false\npg_bin_dir = \"/usr/lib/postgresql/15/bin\"\npart_size_mib = 5\n{extra_backup}\n\n\
             [restore_drill]\ndestination = \"local\"\ndecryption_key = \"{}\"\nrun_as = \"postgres\"\njobs = 2\nspool_dir = \"{}\"\nallow_unencrypted_spool = true\n",
            self.pg.conninfo(),
            self.scratch.path("backup.pub.asc").display(),
            self.scratch.path("keys/backup.sec.asc").display(),
            self.scratch.path("spool").display(),
        );
        self.scratch.config(&body)
    }

    /// The filesystem destination's root.
    pub fn fs(&self) -> PathBuf {
        self.scratch.path("fs")
    }

    /// Every file under the filesystem destination, relative, sorted.
    pub fn fs_files(&self) -> Vec<String> {
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.fs(), &self.fs(), &mut out);
        out.sort();
        out
    }

    /// Stamps of `app` on the filesystem destination that have a manifest.
    pub fn complete_stamps(&self) -> Vec<String> {
        stamps_with_manifest(
            &self
                .fs_files()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    }

    /// Every complete `app` backup on the filesystem destination is whole:
    /// the object's size and SHA-256 match the manifest and gpg opens it to
    /// exactly the plaintext the manifest names. Returns how many there are.
    pub fn assert_complete_backups_whole(&self) -> usize {
        let stamps = self.complete_stamps();
        for stamp in &stamps {
            let dir = self.fs().join("test-host/postgres/app").join(stamp);
            let m: Value =
                serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
            let object = dir.join("app.dump.pgp");
            let cipher = std::fs::read(&object)
                .unwrap_or_else(|e| panic!("{stamp} has a manifest but no object: {e}"));
            assert_eq!(
                cipher.len() as u64,
                m["size_bytes"].as_u64().unwrap(),
                "{stamp}"
            );
            assert_eq!(sha256_hex(&cipher), m["sha256"], "{stamp}");
            let plain = self.gpg.decrypt(&object);
            assert_eq!(sha256_hex(&plain), m["plaintext_sha256"], "{stamp}");
        }
        stamps.len()
    }

    /// The metrics file.
    pub fn prom(&self) -> String {
        self.scratch.prom()
    }

    /// `audit verify` exits 0.
    pub fn assert_audit_verifies(&self, cfg: &Path) {
        let out = super::agent(cfg, &["audit", "verify"]);
        assert!(out.status.success(), "audit verify: {}", super::text(&out));
    }
}

/// Stamps under `…/postgres/app/` that have a `manifest.json` among `keys`.
pub fn stamps_with_manifest(keys: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("/manifest.json"))
        .filter_map(|k| k.rsplit('/').next())
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The value of one series in an exposition (exact labels).
pub fn metric(prom: &str, series: &str) -> Option<f64> {
    prom.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An agent process whose stderr is watched line by line.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Start `cloudnx-agent --config cfg args…` with `FAILPOINTS` set (may be empty).
    pub fn start(cfg: &Path, args: &[&str], failpoints: &str) -> Running {
        let mut child = Command::new(super::agent_bin())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env_remove("CLOUDNX_AGENT_CONFIG")
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cloudnx-agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait (up to `secs`) for a stderr line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no {needle:?} on the agent's stderr within {secs} s:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGKILL the agent and reap it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// What a fault rule matches, from the S3 REST API's request shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Op {
    /// `POST /key?uploads` (CreateMultipartUpload).
    CreateMultipart,
    /// `PUT /key?partNumber=N&uploadId=…` (UploadPart).
    UploadPart,
    /// `POST /key?uploadId=…` (CompleteMultipartUpload).
    Complete,
    /// `PUT …/manifest.json`.
    ManifestPut,
    /// Any `HEAD`.
    Head,
    /// `GET /?uploads` (ListMultipartUploads).
    ListMultipartUploads,
    /// `GET /?list-type=2…` (ListObjectsV2).
    ListObjects,
    /// `GET …/manifest.json`.
    ManifestGet,
    /// Every request (a rule only; requests are counted by their own kind).
    Any,
}

/// How the proxy misbehaves on a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 InternalError`.
    InternalError,
    /// `503 SlowDown`, as S3 throttles.
    SlowDown,
    /// Read half the request body, then close the connection without answering.
    DropMidBody,
    /// `501 NotImplemented`, as S3-compatible servers answer an operation they lack.
    NotImplemented,
    /// Hostile: a ListObjectsV2 page with `IsTruncated` true and the same
    /// continuation token every time (a server that pages forever).
    SameTokenForever,
    /// Hostile: a ListObjectsV2 page with `IsTruncated` true and a fresh
    /// continuation token every time (endless, but never repeating itself).
    FreshTokenForever,
    /// Hostile: read the whole request, then hold the connection open and
    /// never answer.
    NeverAnswer,
    /// Hostile: `200 OK` with a body of this many bytes (an unterminated JSON
    /// string; XML-looking text for a list).
    Oversized(usize),
}

struct Rule {
    op: S3Op,
    first: usize,
    count: usize,
    fault: Fault,
}

struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<(S3Op, usize)>>,
    counts: Mutex<std::collections::HashMap<String, usize>>,
    faults_done: Mutex<usize>,
    fault_seen: Condvar,
    live: AtomicUsize,
    stop: AtomicBool,
}

/// A loopback HTTP proxy in front of moto that injects S3 faults on chosen
/// requests (the Nth of a kind) and forwards everything else unchanged.
/// At most [`MAX_CONNS`] connections at once; stopped on drop.
pub struct S3FaultProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state: Arc<ProxyState>,
}

/// Connection bound of the proxy.
pub const MAX_CONNS: usize = 32;

impl S3FaultProxy {
    /// Listen on a free loopback port and forward to `upstream_port`.
    pub fn start(upstream_port: u16) -> S3FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            counts: Mutex::new(Default::default()),
            faults_done: Mutex::new(0),
            fault_seen: Condvar::new(),
            live: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if st.live.load(Ordering::SeqCst) >= MAX_CONNS {
                    drop(conn);
                    continue;
                }
                st.live.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream_port, &st);
                    st.live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        S3FaultProxy { port, state }
    }

    /// Endpoint URL for the agent's config.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer the `first`..`first+count-1`-th request of `op` (1-based,
    /// counted from now) with `fault`. Replaces earlier rules.
    pub fn fault(&self, op: S3Op, first: usize, count: usize, fault: Fault) {
        *self.state.rules.lock().unwrap() = vec![Rule {
            op,
            first,
            count,
            fault,
        }];
        self.state.counts.lock().unwrap().clear();
        *self.state.faults_done.lock().unwrap() = 0;
    }

    /// Forward everything again.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// How many faults were injected since the last [`Self::fault`].
    pub fn injected(&self) -> usize {
        *self.state.faults_done.lock().unwrap()
    }

    /// Wait (up to `secs`) until at least `n` faults were injected since the
    /// last [`Self::fault`]; false if that did not happen in time.
    pub fn wait_injected(&self, n: usize, secs: u64) -> bool {
        let done = self.state.faults_done.lock().unwrap();
        let (done, _) = self
            .state
            .fault_seen
            .wait_timeout_while(done, Duration::from_secs(secs), |d| *d < n)
            .unwrap();
        *done >= n
    }

    /// How many requests of `op` arrived since the last [`Self::fault`].
    pub fn requests(&self, op: S3Op) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(&format!("{op:?}"))
            .copied()
            .unwrap_or(0)
    }
}

impl ProxyState {
    fn injected_count(&self) -> usize {
        *self.faults_done.lock().unwrap()
    }

    fn injected_one(&self) {
        *self.faults_done.lock().unwrap() += 1;
        self.fault_seen.notify_all();
    }
}

impl Drop for S3FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn classify(method: &str, target: &str) -> Option<S3Op> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    match method {
        "POST" if has("uploads") => Some(S3Op::CreateMultipart),
        "POST" if has("uploadId") => Some(S3Op::Complete),
        "PUT" if has("partNumber") => Some(S3Op::UploadPart),
        "PUT" if path.ends_with("/manifest.json") => Some(S3Op::ManifestPut),
        "HEAD" => Some(S3Op::Head),
        "GET" if has("uploads") => Some(S3Op::ListMultipartUploads),
        "GET" if has("list-type") => Some(S3Op::ListObjects),
        "GET" if path.ends_with("/manifest.json") => Some(S3Op::ManifestGet),
        _ => None,
    }
}

fn error_xml(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A ListObjectsV2 page of one key that says more follow under `token`.
fn endless_page(token: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{BUCKET}</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>test-host/postgres/app/{token}</Key><Size>1</Size></Contents><NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `200 OK` with `size` bytes: an XML-looking start for a list, an
/// unterminated JSON string otherwise, then padding, written in 64 KiB pieces.
fn send_oversized(out: &mut TcpStream, target: &str, size: usize) -> std::io::Result<()> {
    let start: &[u8] = if target.contains("list-type") {
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>"
    } else {
        b"{\"format\": \""
    };
    out.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    out.write_all(start)?;
    let pad = vec![b'a'; 64 << 10];
    let mut left = size.saturating_sub(start.len());
    while left > 0 {
        let k = left.min(pad.len());
        out.write_all(&pad[..k])?;
        left -= k;
    }
    out.flush()
}

/// Keep a connection open without answering until the client closes it or
/// the proxy stops.
fn hold_silently(reader: &mut BufReader<TcpStream>, st: &ProxyState) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

/// One client connection: requests in sequence (keep-alive), each forwarded on
/// a fresh upstream connection (`Connection: close`) unless a rule fires.
fn serve(client: TcpStream, upstream_port: u16, st: &ProxyState) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut out = client;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
            if head.len() > 200 {
                return Ok(());
            }
        }
        let mut parts = head[0].split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let len: usize = head
            .iter()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let fault = classify(&method, &target).and_then(|op| {
            let mut counts = st.counts.lock().unwrap();
            let n = counts.entry(format!("{op:?}")).or_default();
            *n += 1;
            st.seen.lock().unwrap().push((op, *n));
            st.rules
                .lock()
                .unwrap()
                .iter()
                .find(|r| {
                    (r.op == op || r.op == S3Op::Any) && *n >= r.first && *n - r.first < r.count
                })
                .map(|r| r.fault)
        });
        if fault == Some(Fault::DropMidBody) {
            let mut half = vec![0u8; len / 2];
            reader.read_exact(&mut half)?;
            st.injected_one();
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        match fault {
            Some(Fault::NeverAnswer) => {
                st.injected_one();
                return hold_silently(&mut reader, st);
            }
            Some(Fault::SameTokenForever | Fault::FreshTokenForever) => {
                let n = st.injected_count();
                let token = if fault == Some(Fault::SameTokenForever) {
                    "same-token".to_owned()
                } else {
                    format!("token-{n}")
                };
                st.injected_one();
                out.write_all(&endless_page(&token))?;
                continue;
            }
            Some(Fault::Oversized(size)) => {
                st.injected_one();
                // The client may stop reading at its limit and close: fine.
                let _ = send_oversized(&mut out, &target, size);
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {}
        }
        // Faults answered with an S3 error document instead of forwarding.
        let canned = match fault {
            Some(Fault::InternalError) => Some((
                "500 Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
            )),
            Some(Fault::SlowDown) => Some((
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
            )),
            Some(Fault::NotImplemented) => Some((
                "501 Not Implemented",
                "NotImplemented",
                "ListMultipartUploads is not implemented yet",
            )),
            _ => None,
        };
        if let Some((status, code, message)) = canned {
            st.injected_one();
            out.write_all(&error_xml(status, code, message))?;
            continue;
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
        let mut req = Vec::new();
        for l in &head {
            let name = l.split(':').next().unwrap_or("");
            if name.eq_ignore_ascii_case("connection") || l == "\r\n" {
                continue;
            }
            req.extend_from_slice(l.as_bytes());
        }
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        req.extend_from_slice(&body);
        up.write_all(&req)?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        // Upstream closed after answering; tell the client this connection
        // ends too (whatever framing the answer used), then close it.
        let head_end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(resp.len());
        let has_conn = String::from_utf8_lossy(&resp[..head_end])
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("connection:"));
        if !has_conn && head_end < resp.len() {
            resp.splice(head_end..head_end, b"\r\nConnection: close".iter().copied());
        }
        out.write_all(&resp)?;
        let _ = out.shutdown(Shutdown::Both);
        return Ok(());
    }
}

/// Open multipart uploads in the moto bucket (`key uploadId` per line).
pub fn open_multipart_uploads(moto: &super::s3::Moto) -> Vec<String> {
    moto.py(&format!(
        "r = s3.list_multipart_uploads(Bucket='{BUCKET}')\nfor u in r.get('Uploads', []): print(u['Key'], u['UploadId'])"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Keys of `app`'s complete backups in the moto bucket (stamps with a manifest).
pub fn s3_complete_stamps(moto: &super::s3::Moto) -> Vec<String> {
    let keys = moto.keys(BUCKET);
    stamps_with_manifest(&keys.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `pg_ctl restart -m fast` of the source cluster (terminates every session,
/// a running pg_dump's included), waiting until it accepts connections again.
pub fn restart_postgres_fast(pg: &Pg) {
    let base = pg.sock().parent().unwrap().to_owned();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/pg_ctl", super::postgres::BIN))
        .args(["-w", "-m", "fast", "-D"])
        .arg(base.join("data"))
        .arg("-l")
        .arg(base.join("log"))
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl restart: {}",
        super::text(&out)
    );
}

/// The pid of the `pg_dump` (the dump itself, with `--snapshot`) that `parent`
/// runs; polls up to 60 s.
pub fn wait_for_pg_dump(parent: u32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let ppid: u32 = stat[close + 2..]
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let is_dump = cmd.split(|&b| b == 0).any(|a| a.starts_with(b"--snapshot"));
            if ppid == parent && is_dump {
                return e.file_name().to_str().unwrap().parse().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pg_dump child of {parent} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run the agent under libfaketime with its clock shifted by `offset`
/// (libfaketime's relative format, e.g. `+30d`, `-30d`).
pub fn agent_at(offset: &str, cfg: &Path, args: &[&str]) -> std::process::Output {
    let faketime = super::require("faketime");
    Command::new(faketime)
        .args(["-f", offset])
        .arg(super::agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .output()
        .expect("running cloudnx-agent under faketime")
}
