//! Typed Proxmox VE API client (`/api2/json`) for what the snapshot duty needs.
//!
//! Owns: API-token authentication (`Authorization: PVEAPIToken=ID=SECRET`, the
//! secret read from a file and marked sensitive so it never reaches a log),
//! TLS verified against the configured CA only (the node's pve-root-ca; no
//! built-in roots, never "insecure"), the `{"data": …}` envelope, error
//! decoding (HTTP status + reason phrase / `message` + parameter `errors`),
//! UPIDs, and task status/log polling. It makes no decisions: what to
//! snapshot or delete is `jobs::snapshot`'s business.

pub mod upid;
pub mod vzdump;

pub use upid::Upid;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Guest kind, as in `/nodes/{node}/{qemu|lxc}`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    /// A QEMU/KVM virtual machine.
    Qemu,
    /// An LXC container.
    Lxc,
}

impl GuestType {
    /// The path segment and metric label (`qemu` / `lxc`).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Qemu => "qemu",
            GuestType::Lxc => "lxc",
        }
    }

    /// "VM" or "CT", as Proxmox words it.
    pub fn noun(self) -> &'static str {
        match self {
            GuestType::Qemu => "VM",
            GuestType::Lxc => "CT",
        }
    }
}

/// Proxmox sends booleans as 0/1 (sometimes as JSON booleans, or absent).
fn pve_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Bool(bool),
        Text(String),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => false,
        Some(Raw::Int(n)) => n != 0,
        Some(Raw::Bool(b)) => b,
        Some(Raw::Text(s)) => matches!(s.as_str(), "1" | "true" | "yes" | "on"),
    })
}

/// One entry of `GET /cluster/resources?type=vm`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClusterGuest {
    /// Guest id.
    pub vmid: u32,
    /// `qemu` or `lxc`.
    #[serde(rename = "type")]
    pub guest_type: GuestType,
    /// The node that owns the guest now (after migration or HA failover).
    pub node: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// `running`, `stopped`, …
    #[serde(default)]
    pub status: Option<String>,
    /// Templates cannot be snapshotted.
    #[serde(default, deserialize_with = "pve_bool")]
    pub template: bool,
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NodeEntry {
    /// Node name.
    pub node: String,
    /// `online`, `offline`, `unknown`.
    #[serde(default)]
    pub status: Option<String>,
}

/// One entry of `GET /nodes/{node}/{type}/{vmid}/snapshot` (the list ends with `current`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SnapshotEntry {
    /// Snapshot name; `current` is the live state, not a snapshot.
    pub name: String,
    /// Free text; ours carries our mark.
    #[serde(default)]
    pub description: String,
    /// Creation time, Unix seconds (absent for `current`).
    #[serde(default)]
    pub snaptime: Option<i64>,
    /// Whether RAM was saved.
    #[serde(default, deserialize_with = "pve_bool")]
    pub vmstate: bool,
    /// Parent snapshot.
    #[serde(default)]
    pub parent: Option<String>,
    /// `prepare` or `delete`: a create or delete that never finished.
    #[serde(default)]
    pub snapstate: Option<String>,
}

impl SnapshotEntry {
    /// Whether this is the `current` pseudo-entry (the live state).
    pub fn is_current(&self) -> bool {
        self.name == "current"
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TaskStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// Once stopped: `OK`, `WARNINGS: N`, or the error text.
    #[serde(default)]
    pub exitstatus: Option<String>,
}

impl TaskStatus {
    /// Whether the task has finished.
    pub fn stopped(&self) -> bool {
        self.status == "stopped"
    }
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    t: String,
}

/// What went wrong talking to the API. Callers act on the status of `Api`.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// The client could not be set up (secret, CA, URL).
    #[error("{0}")]
    Setup(String),
    /// The API answered with an error status.
    #[error("{method} {path}: HTTP {status} {message}{}", fmt_errors(.errors))]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Path below `/api2/json`.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Reason phrase or `message`.
        message: String,
        /// Parameter verification errors (`errors`), by parameter.
        errors: BTreeMap<String, String>,
    },
    /// No usable answer (connection, TLS, timeout).
    #[error("{method} {path}: {cause}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Path below `/api2/json`.
        path: String,
        /// The transport error, with its source chain.
        cause: String,
    },
    /// An answer that does not have the documented shape.
    #[error("{method} {path}: unexpected answer: {cause}")]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// Path below `/api2/json`.
        path: String,
        /// What did not fit.
        cause: String,
    },
    /// A task was still running at its deadline (it may still finish on the node).
    #[error("task {upid} still running after {seconds} s")]
    TaskTimeout {
        /// The task.
        upid: String,
        /// The deadline.
        seconds: u64,
    },
    /// The job was cancelled while waiting.
    #[error("cancelled")]
    Cancelled,
}

fn fmt_errors(errors: &BTreeMap<String, String>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.trim()))
        .collect();
    format!(" ({})", parts.join("; "))
}

impl PveError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth asking again: no answer, or a 5xx from the proxy.
    pub fn is_transient(&self) -> bool {
        match self {
            PveError::Transport { .. } => true,
            PveError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The error followed by [`PveError::hint`], when there is one.
    pub fn explain(&self, token_id: &str, secret_file: &Path) -> String {
        match self.hint(token_id, secret_file) {
            Some(h) => format!("{self} — {h}"),
            None => self.to_string(),
        }
    }

    /// How an operator fixes it, when we know.
    pub fn hint(&self, token_id: &str, secret_file: &Path) -> Option<String> {
        match self {
            PveError::Api { status: 401, .. } => Some(format!(
                "check that the API token {token_id} exists, is not expired, and that {} holds its secret (the UUID shown once when the token was created)",
                secret_file.display()
            )),
            PveError::Api { status: 403, message, .. } => {
                let what = privilege_in(message).map_or_else(
                    || "the missing privilege".to_owned(),
                    |(path, priv_)| format!("{priv_} on {path}"),
                );
                Some(format!(
                    "grant {what} to {token_id} (and to its user if the token has privilege separation), e.g. pveum role add CloudnxSnapshot --privs 'VM.Audit VM.Snapshot'; pveum acl modify /vms --tokens '{token_id}' --roles CloudnxSnapshot"
                ))
            }
            PveError::Transport { cause, .. } if cause.contains("certificate") || cause.contains("UnknownIssuer") => Some(
                "the API certificate does not verify against ca_file: point ca_file at the cluster's /etc/pve/pve-root-ca.pem".into(),
            ),
            _ => None,
        }
    }
}

/// `(path, privilege)` from "Permission check failed (/vms/101, VM.Snapshot)".
pub fn privilege_in(message: &str) -> Option<(String, String)> {
    let inner = message.split_once("Permission check failed (")?.1;
    let inner = inner.split_once(')')?.0;
    let (path, priv_) = inner.split_once(',')?;
    Some((path.trim().to_owned(), priv_.trim().to_owned()))
}

/// A Proxmox VE API client bound to one endpoint and token.
#[derive(Clone)]
pub struct PveClient {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    token_id: String,
    min_tls: crate::tls_floor::TlsFloor,
}

impl std::fmt::Debug for PveClient {
    // Never print the Authorization header.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PveClient")
            .field("base", &self.base)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Option<BTreeMap<String, serde_json::Value>>,
}

impl PveClient {
    /// A client for `api_url` (…/api2/json) authenticating as `token_id` with the
    /// secret in `secret_file`, trusting only the certificates in `ca_file`,
    /// speaking no TLS version below `min_tls`.
    pub fn new(
        api_url: &str,
        token_id: &str,
        secret_file: &Path,
        ca_file: &Path,
        request_timeout: Duration,
        min_tls: crate::tls_floor::TlsFloor,
    ) -> Result<PveClient, PveError> {
        if !api_url.starts_with("https://") {
            return Err(PveError::Setup(format!(
                "api_url {api_url:?} is not https: the Proxmox API is only spoken over verified TLS"
            )));
        }
        let secret = std::fs::read_to_string(secret_file).map_err(|e| {
            PveError::Setup(format!(
                "reading the API token secret {}: {e}",
                secret_file.display()
            ))
        })?;
        let secret = secret.trim();
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            return Err(PveError::Setup(format!(
                "the API token secret file {} must hold exactly the token's secret (one line, no spaces)",
                secret_file.display()
            )));
        }
        let mut auth = HeaderValue::from_str(&format!("PVEAPIToken={token_id}={secret}"))
            .map_err(|_| {
                PveError::Setup(format!(
                    "api_token_id {token_id:?} or the secret in {} contains characters not allowed in an HTTP header",
                    secret_file.display()
                ))
            })?;
        auth.set_sensitive(true);
        let pem = std::fs::read(ca_file)
            .map_err(|e| PveError::Setup(format!("reading ca_file {}: {e}", ca_file.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            PveError::Setup(format!(
                "ca_file {} is not PEM certificates: {e}",
                ca_file.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(PveError::Setup(format!(
                "ca_file {} holds no certificate",
                ca_file.display()
            )));
        }
        let mut b = min_tls
            .apply(reqwest::Client::builder())
            .tls_built_in_root_certs(false)
            .https_only(true)
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("cloudnx-agent/", env!("CARGO_PKG_VERSION")));
        for c in certs {
            b = b.add_root_certificate(c);
        }
        let http = b
            .build()
            .map_err(|e| PveError::Setup(format!("building the HTTPS client: {e}")))?;
        Ok(PveClient {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
            auth,
            token_id: token_id.to_owned(),
            min_tls,
        })
    }

    /// The token id (for messages; never the secret).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, PveError> {
        let m: &'static str = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "DELETE" => "DELETE",
            _ => "PUT",
        };
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, self.auth.clone());
        if !form.is_empty() {
            req = req.form(form);
        }
        let transport = |e: reqwest::Error| PveError::Transport {
            method: m,
            path: path.to_owned(),
            cause: self
                .min_tls
                .explain(&self.base, &e)
                .unwrap_or_else(|| error_chain(&e)),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        // Proxmox puts the error text in the reason phrase; hyper keeps a non-canonical one.
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let (message, errors) = error_body(&bytes);
            let message = message
                .or(reason)
                .or_else(|| status.canonical_reason().map(str::to_owned))
                .unwrap_or_default();
            return Err(PveError::Api {
                method: m,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
                errors,
            });
        }
        decode_data::<T>(&bytes).map_err(|e| PveError::Decode {
            method: m,
            path: path.to_owned(),
            cause: e.to_string(),
        })
    }

    /// `GET /nodes`: the cluster's nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, PveError> {
        self.call(reqwest::Method::GET, "/nodes", &[]).await
    }

    /// `GET /cluster/resources?type=vm`: every guest the token may see, with its owning node.
    pub async fn cluster_guests(&self) -> Result<Vec<ClusterGuest>, PveError> {
        self.call(reqwest::Method::GET, "/cluster/resources?type=vm", &[])
            .await
    }

    fn guest_path(node: &str, t: GuestType, vmid: u32) -> String {
        format!("/nodes/{}/{}/{vmid}/snapshot", enc(node), t.as_str())
    }

    /// `GET …/snapshot`: the guest's snapshots (including the trailing `current`).
    pub async fn snapshots(
        &self,
        node: &str,
        t: GuestType,
        vmid: u32,
    ) -> Result<Vec<SnapshotEntry>, PveError> {
        self.call(reqwest::Method::GET, &Self::guest_path(node, t, vmid), &[])
            .await
    }

    /// `POST …/snapshot`: start a snapshot task. `vmstate` only exists for VMs.
    pub async fn create_snapshot(
        &self,
        node: &str,
        t: GuestType,
        vmid: u32,
        snapname: &str,
        vmstate: bool,
        description: &str,
    ) -> Result<Upid, PveError> {
        let mut form = vec![
            ("snapname", snapname.to_owned()),
            ("description", description.to_owned()),
        ];
        if t == GuestType::Qemu {
            form.push(("vmstate", if vmstate { "1" } else { "0" }.to_owned()));
        }
        let path = Self::guest_path(node, t, vmid);
        let raw: String = self.call(reqwest::Method::POST, &path, &form).await?;
        Upid::parse(&raw).map_err(|e| PveError::Decode {
            method: "POST",
            path,
            cause: e.to_string(),
        })
    }

    /// `DELETE …/snapshot/{snapname}`: start a delete task.
    pub async fn delete_snapshot(
        &self,
        node: &str,
        t: GuestType,
        vmid: u32,
        snapname: &str,
    ) -> Result<Upid, PveError> {
        let path = format!("{}/{}", Self::guest_path(node, t, vmid), enc(snapname));
        let raw: String = self.call(reqwest::Method::DELETE, &path, &[]).await?;
        Upid::parse(&raw).map_err(|e| PveError::Decode {
            method: "DELETE",
            path,
            cause: e.to_string(),
        })
    }

    /// `GET /nodes/{node}/tasks/{upid}/status` (asked of the node in the UPID).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        let path = format!("/nodes/{}/tasks/{}/status", enc(&upid.node), enc(&upid.raw));
        self.call(reqwest::Method::GET, &path, &[]).await
    }

    /// The last `lines` lines of a task's log.
    pub async fn task_log_tail(&self, upid: &Upid, lines: usize) -> Result<Vec<String>, PveError> {
        // Proxmox caps `limit`; read a generous window and keep the tail.
        let path = format!(
            "/nodes/{}/tasks/{}/log?start=0&limit=5000",
            enc(&upid.node),
            enc(&upid.raw)
        );
        let all: Vec<LogLine> = self.call(reqwest::Method::GET, &path, &[]).await?;
        let skip = all.len().saturating_sub(lines);
        Ok(all.into_iter().skip(skip).map(|l| l.t).collect())
    }

    /// Poll a task until it stops, the deadline passes, or the job is cancelled.
    /// Polls quickly at first, then every 2 s.
    pub async fn wait_task(
        &self,
        upid: &Upid,
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<TaskStatus, PveError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut blips = 0u32;
        loop {
            // The task runs on regardless of our polling: ride out a few
            // transient failures (pveproxy restarting during an update) rather
            // than report a snapshot as failed that may well succeed.
            let st = match self.task_status(upid).await {
                Ok(st) => {
                    blips = 0;
                    st
                }
                Err(e) if e.is_transient() && blips < 3 => {
                    blips += 1;
                    tracing::warn!(upid = %upid, "polling task status failed ({e}); retrying");
                    TaskStatus {
                        status: "running".into(),
                        exitstatus: None,
                    }
                }
                Err(e) => return Err(e),
            };
            if st.stopped() {
                return Ok(st);
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                return Err(PveError::TaskTimeout {
                    upid: upid.raw.clone(),
                    seconds: deadline.as_secs(),
                });
            }
            let nap = pause.min(deadline - elapsed);
            tokio::select! {
                () = cancel.cancelled() => return Err(PveError::Cancelled),
                () = tokio::time::sleep(nap) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Percent-encode one path segment (UPIDs hold ':' and '!', names may hold anything).
/// The `data` of a successful response (`{"data": …}`), typed.
pub fn decode_data<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice::<Envelope<T>>(bytes).map(|e| e.data)
}

/// The message (trimmed, None when empty) and per-parameter errors of an error
/// response; a body that is not the documented JSON yields neither.
pub fn error_body(bytes: &[u8]) -> (Option<String>, BTreeMap<String, String>) {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_default();
    let message = body
        .message
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let errors = body
        .errors
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    (message, errors)
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its sources, so "certificate verify failed" is not hidden behind "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_list_decodes_the_documented_shape_including_current() {
        let body = r#"{"data":[
            {"name":"cnx-20260101000000","snaptime":1767225600,"vmstate":0,"description":"cloudnx-agent: host=h job=j\n","parent":"before-upgrade"},
            {"name":"half","snaptime":1,"description":"","snapstate":"prepare"},
            {"name":"current","description":"You are here!","digest":"abc","running":1,"parent":"cnx-20260101000000"}]}"#;
        let e: Envelope<Vec<SnapshotEntry>> = serde_json::from_str(body).unwrap();
        assert_eq!(e.data.len(), 3);
        assert!(e.data[2].is_current());
        assert_eq!(e.data[1].snapstate.as_deref(), Some("prepare"));
        assert_eq!(e.data[0].snaptime, Some(1767225600));
        assert!(!e.data[0].vmstate);
    }

    #[test]
    fn cluster_guest_template_flag_accepts_absent_int_and_bool() {
        let body = r#"{"data":[
            {"id":"qemu/100","type":"qemu","vmid":100,"node":"a","status":"running"},
            {"id":"lxc/101","type":"lxc","vmid":101,"node":"b","template":1},
            {"id":"qemu/102","type":"qemu","vmid":102,"node":"a","template":true}]}"#;
        let e: Envelope<Vec<ClusterGuest>> = serde_json::from_str(body).unwrap();
        let t: Vec<bool> = e.data.iter().map(|g| g.template).collect();
        assert_eq!(t, [false, true, true]);
        assert_eq!(e.data[1].guest_type, GuestType::Lxc);
    }

    #[test]
    fn privilege_is_read_from_the_permission_message() {
        let table = [
            (
                "Permission check failed (/vms/101, VM.Snapshot)",
                Some(("/vms/101", "VM.Snapshot")),
            ),
            (
                "Permission check failed (/, Sys.Audit)\n",
                Some(("/", "Sys.Audit")),
            ),
            ("authentication failure", None),
        ];
        for (m, want) in table {
            let got = privilege_in(m);
            assert_eq!(
                got.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                want,
                "{m}"
            );
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            enc("UPID:n:1:2:3:t:1:a@pve!b:"),
            "UPID%3An%3A1%3A2%3A3%3At%3A1%3Aa%40pve%21b%3A"
        );
        assert_eq!(enc("cnx-2026_x"), "cnx-2026_x");
    }

    #[test]
    fn api_errors_show_status_message_and_parameter_errors() {
        let e = PveError::Api {
            method: "POST",
            path: "/nodes/a/qemu/1/snapshot".into(),
            status: 400,
            message: "Parameter verification failed.".into(),
            errors: [(
                "snapname".to_owned(),
                "invalid format - invalid configuration ID 'X y'\n".to_owned(),
            )]
            .into(),
        };
        assert_eq!(
            e.to_string(),
            "POST /nodes/a/qemu/1/snapshot: HTTP 400 Parameter verification failed. (snapname: invalid format - invalid configuration ID 'X y')"
        );
    }
}
