//! The privileged half of the LUKS duty (docs/adr/0008-privileges.md).
//!
//! `cloudnx-luks-helper` (its own small binary, `src/bin/luks_helper.rs`, calling
//! [`serve`]) is started by systemd per connection on
//! `/run/cloudnx-agent-luks-helper.sock` (Accept=yes, stdin/stdout = the
//! connection): it reads ONE JSON request line `{"action", "volume"}`, resolves
//! the volume NAME through its own load of the configuration (a caller can
//! never name a device, keyfile or path), does the action through the
//! one-thread libcryptsetup code, answers ONE JSON line
//! `{"ok":true,"result":…}` / `{"ok":false,"error":"step: cause"}` and exits.
//!
//! The duty side ([`Access`]) asks the helper on that socket whenever the
//! process is not root, and runs the same binary as a child with the request
//! on a pipe when it is root (a root CLI run, the tests). Only the helper
//! binary links libcryptsetup (and its libcrypto, libdevmapper, …): the
//! long-running `cloudnx-agent` never calls it, so it neither carries that
//! code nor keeps ~2.5 MiB of those libraries resident (docs/adr/0008).
//!
//! Peer check: on a unix socket, `SO_PEERCRED` must name uid 0, the owner of
//! `state_dir` or the `cloudnx-agent` user. When stdin is not a socket (a
//! pipe, a terminal) there is no peer to ask the kernel about; it is allowed
//! only when the helper itself runs as root, because then whoever started it
//! already had root, and refused otherwise so the helper never acts for an
//! unknown caller.

use super::inspect::{self, HeaderState};
use super::ondisk::BinaryHeader;
use super::repair::{self, Attempt};
use crate::config::{LuksConfig, LuksVolume};
use anyhow::Context;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest request line accepted (the real ones are under 200 bytes).
pub const MAX_REQUEST: usize = 4096;
/// How much of an oversized request line the helper reads and drops.
const DRAIN_LIMIT: u64 = 1 << 20;
/// How long the helper waits for the request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent waits for an answer (an open derives an Argon2 key).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(240);
/// Largest answer the agent reads (a LUKS2 header backup is 16 MiB, base64 ~22 MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// What the agent asks of the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The header summary ([`HeaderState`]).
    Inspect,
    /// Activate the mapping with the configured keyfile (never mounts).
    Open,
    /// The header backup bytes, base64.
    HeaderBackup,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Inspect => "inspect",
            Action::Open => "open",
            Action::HeaderBackup => "back up the header of",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// A `[[luks.volumes]]` name of the helper's own configuration.
    pub volume: String,
}

/// How this process reaches the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Root: run the helper binary as a child (with the same configuration
    /// file), one request per run.
    Child {
        /// The configuration file the child loads (None: the default lookup).
        config: Option<PathBuf>,
    },
    /// Not root: ask the socket-activated helper on this socket.
    Helper(PathBuf),
}

impl Access {
    /// A child as root, `cfg.helper_socket` otherwise.
    pub fn for_process(cfg: &LuksConfig, config_file: Option<&Path>) -> Access {
        Access::choose(
            nix::unistd::geteuid().is_root(),
            &cfg.helper_socket,
            config_file,
        )
    }

    /// The decision itself (pure).
    pub fn choose(root: bool, socket: &Path, config_file: Option<&Path>) -> Access {
        if root {
            Access::Child {
                config: config_file.map(Path::to_owned),
            }
        } else {
            Access::Helper(socket.to_owned())
        }
    }
}

/// Name of the helper binary.
pub const HELPER_BIN: &str = "cloudnx-luks-helper";
/// Where the package installs it.
pub const HELPER_INSTALLED: &str = "/usr/libexec/cloudnx-agent/cloudnx-luks-helper";

/// The helper binary for a child run: beside this executable (a build tree;
/// test binaries sit one directory below, in `deps/`), else where the package
/// installs it.
pub fn helper_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding this executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = me.parent() {
        candidates.push(dir.join(HELPER_BIN));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(HELPER_BIN));
        }
    }
    candidates.push(PathBuf::from(HELPER_INSTALLED));
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "the LUKS helper binary {HELPER_BIN} is neither beside {} nor at {HELPER_INSTALLED}; reinstall the cloudnx-agent package",
            me.display()
        )
    })
}

/// Whether a peer uid may use the helper: root, the owner of `state_dir`, or the
/// `cloudnx-agent` user (pure).
pub fn peer_allowed(uid: u32, state_dir_owner: Option<u32>, agent_user: Option<u32>) -> bool {
    uid == 0 || Some(uid) == state_dir_owner || Some(uid) == agent_user
}

// ---------------------------------------------------------------- agent side

/// Read the header of `vol`.
pub async fn inspect(access: &Access, vol: &LuksVolume) -> anyhow::Result<HeaderState> {
    let r = ask(access, Action::Inspect, &vol.name).await?;
    serde_json::from_value(r).with_context(|| {
        format!(
            "reading the LUKS helper's inspect answer for volume {:?}",
            vol.name
        )
    })
}

/// Write the header backup of `vol` to `dest` (which must not exist) and
/// return the binary header of what was written.
pub async fn header_backup(
    access: &Access,
    vol: &LuksVolume,
    dest: PathBuf,
) -> anyhow::Result<BinaryHeader> {
    let r = ask(access, Action::HeaderBackup, &vol.name).await?;
    let bytes = r["bytes"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .with_context(|| {
            format!(
                "the LUKS helper answered no base64 header bytes for volume {:?}",
                vol.name
            )
        })?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<BinaryHeader> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("writing {}", dest.display()))?;
        drop(f);
        inspect::read_binary_header(&dest)
    })
    .await?
}

/// Open `vol` with its keyfile (the caller decided it should be opened).
pub async fn open(access: &Access, vol: &LuksVolume) -> Attempt {
    match ask(access, Action::Open, &vol.name).await {
        Ok(_) => Attempt::Opened,
        // The helper checked device-mapper before using any key.
        Err(e) if format!("{e:#}").contains("device-mapper not available") => {
            Attempt::Impossible(format!("{e:#}"))
        }
        Err(e) => Attempt::Failed(format!("{e:#}")),
    }
}

/// Send one request to the helper; the `result` of an ok answer.
pub async fn ask(
    access: &Access,
    action: Action,
    volume: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut line = serde_json::to_vec(&Request {
        action,
        volume: volume.to_owned(),
    })?;
    line.push(b'\n');
    let (what, died) = match access {
        Access::Helper(sock) => (
            format!("asking the LUKS helper on {}", sock.display()),
            "see `journalctl -u 'cloudnx-agent-luks-helper@*'`".to_owned(),
        ),
        Access::Child { .. } => (
            format!("asking the LUKS helper {HELPER_BIN}"),
            "its own error is on stderr above".to_owned(),
        ),
    };
    let what = format!("{what} to {} volume {volume:?}", action.verb());
    let exchange = async {
        match access {
            Access::Helper(sock) => {
                let mut s = tokio::net::UnixStream::connect(sock).await.map_err(|e| {
                    let fix = match e.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            "the socket is root:cloudnx-agent 0660: run the agent as the cloudnx-agent user or group"
                        }
                        _ => {
                            "is cloudnx-agent-luks-helper.socket enabled? (systemctl enable --now cloudnx-agent-luks-helper.socket), or set [luks] helper_socket"
                        }
                    };
                    anyhow::anyhow!("connecting: {e}; {fix}")
                })?;
                let (mut r, mut w) = s.split();
                exchange(&mut r, &mut w, &line).await
            }
            Access::Child { config } => {
                let exe = helper_exe()?;
                let mut cmd = tokio::process::Command::new(&exe);
                if let Some(c) = config {
                    cmd.arg("--config").arg(c);
                }
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
                let (Some(mut w), Some(mut r)) = (child.stdin.take(), child.stdout.take()) else {
                    anyhow::bail!("starting {}: no pipes", exe.display());
                };
                let answer = exchange(&mut r, &mut w, &line).await;
                drop((r, w));
                // Reap it (its exit status only repeats the answer's ok).
                let _ = child.wait().await;
                answer
            }
        }
    };
    let buf = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {ANSWER_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{what}: {e:#}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| {
        anyhow::anyhow!(
            "{what}: the answer is not JSON ({e}); an empty answer means the helper died, {died}"
        )
    })?;
    if answer["ok"] == true {
        Ok(answer["result"].clone())
    } else {
        let err = answer["error"].as_str().unwrap_or("no error given");
        anyhow::bail!("{what}: {err}")
    }
}

/// Write the request line, end the sending side, read the one-line answer.
async fn exchange<R, W>(r: &mut R, w: &mut W, line: &[u8]) -> anyhow::Result<Vec<u8>>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    w.write_all(line)
        .await
        .map_err(|e| anyhow::anyhow!("sending the request: {e}"))?;
    w.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("sending the request: {e}"))?;
    // The answer is one line. Stop at its newline: a helper that exits
    // before reading all we sent resets the connection after answering,
    // and that reset must not throw the answer away.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.contains(&b'\n') && buf.len() as u64 <= MAX_ANSWER {
        match r.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => anyhow::bail!("reading the answer: {e}"),
        }
    }
    anyhow::ensure!(
        buf.len() as u64 <= MAX_ANSWER,
        "reading the answer: longer than {MAX_ANSWER} bytes"
    );
    Ok(buf)
}

// --------------------------------------------------------------- helper side

/// `cloudnx-luks-helper`: answer one request on stdin/stdout; exit 0 on
/// an ok answer, 1 otherwise.
pub async fn serve(flag: Option<PathBuf>) -> u8 {
    let answer = match handle(flag).await {
        Ok(result) => serde_json::json!({ "ok": true, "result": result }),
        Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
    };
    let ok = answer["ok"] == true;
    if !ok {
        // The caller gets the error too; the journal keeps it for the operator
        // (`journalctl -u 'cloudnx-agent-luks-helper@*'`).
        eprintln!(
            "cloudnx-luks-helper: {}",
            answer["error"].as_str().unwrap_or("failed")
        );
    }
    let mut line = answer.to_string().into_bytes();
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
        eprintln!("cloudnx-luks-helper: writing the answer: {e}");
        return 1;
    }
    if ok {
        0
    } else {
        1
    }
}

async fn handle(flag: Option<PathBuf>) -> anyhow::Result<serde_json::Value> {
    // Read the request before anything can fail: closing a socket with
    // unread data resets it, and the refusal would never reach the caller.
    let req = read_request();
    let path = crate::config::resolve_path(flag);
    let config = crate::config::load_for_luks_helper(&path)
        .map_err(|p| anyhow::anyhow!("configuration: {} is invalid: {p}", path.display()))?;
    check_peer(&config.state_dir)?;
    let req = req?;
    let Some(cfg) = config.luks.as_ref() else {
        anyhow::bail!("configuration: {} has no [luks] section", path.display());
    };
    let Some(vol) = cfg.volumes.iter().find(|v| v.name == req.volume) else {
        anyhow::bail!(
            "request: no volume {:?} in [[luks.volumes]] of {}",
            req.volume,
            path.display()
        );
    };
    match req.action {
        Action::Inspect => {
            let h = inspect::inspect(vol.device.clone())
                .await
                .map_err(|e| anyhow::anyhow!("inspect: {e:#}"))?;
            Ok(serde_json::to_value(h)?)
        }
        Action::Open => {
            if vol.keyfile.is_none() {
                anyhow::bail!(
                    "open: volume {:?} has no keyfile in the configuration",
                    vol.name
                );
            }
            match repair::open_now(vol, Path::new("/sys")).await {
                Attempt::Opened => Ok(serde_json::json!({ "opened": vol.name })),
                Attempt::Impossible(e) | Attempt::Failed(e) | Attempt::Skipped(e) => {
                    anyhow::bail!("{e}")
                }
            }
        }
        Action::HeaderBackup => {
            let bytes = backup_bytes(vol)
                .await
                .map_err(|e| anyhow::anyhow!("header-backup: {e:#}"))?;
            Ok(serde_json::json!({
                "bytes": base64::engine::general_purpose::STANDARD.encode(bytes)
            }))
        }
    }
}

/// libcryptsetup writes backups only to a new file: use a private temporary
/// directory (the unit has PrivateTmp) and remove it whatever happens.
async fn backup_bytes(vol: &LuksVolume) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "cloudnx-luks-helper.{}.{nanos}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("header.img");
    let r = async {
        inspect::header_backup(vol.device.clone(), file.clone()).await?;
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))
    }
    .await;
    std::fs::remove_dir_all(&dir).ok();
    r
}

fn check_peer(state_dir: &Path) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::unix::fs::MetadataExt;
    match getsockopt(&std::io::stdin(), PeerCredentials) {
        Ok(cred) => {
            let uid = cred.uid();
            let owner = std::fs::metadata(state_dir).ok().map(|m| m.uid());
            let agent = nix::unistd::User::from_name("cloudnx-agent")
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw());
            anyhow::ensure!(
                peer_allowed(uid, owner, agent),
                "peer: uid {uid} may not use the LUKS helper (allowed: root, the owner of {} and the cloudnx-agent user)",
                state_dir.display()
            );
            Ok(())
        }
        Err(nix::errno::Errno::ENOTSOCK) => {
            anyhow::ensure!(
                nix::unistd::geteuid().is_root(),
                "peer: stdin is not a unix socket and the helper is not root, so there is no caller to trust; run it from cloudnx-agent-luks-helper.socket"
            );
            Ok(())
        }
        Err(e) => anyhow::bail!("peer: SO_PEERCRED on stdin: {e}; stdin must be a unix socket"),
    }
}

/// Read one request line from stdin: at most [`MAX_REQUEST`] bytes within
/// [`READ_TIMEOUT`]. A thread does the blocking read so the timeout holds for
/// pipes too; the process exits right after answering, taking it along.
fn read_request() -> anyhow::Result<Request> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut stdin = std::io::stdin().lock();
        let r = (&mut stdin)
            .take(MAX_REQUEST as u64 + 1)
            .read_to_end_or_newline(&mut buf);
        if r.is_ok() && buf.len() > MAX_REQUEST && !buf.contains(&b'\n') {
            // Swallow the rest of an oversized line (bounded): exiting with
            // unread data would reset the socket and lose the refusal.
            let _ = (&mut stdin)
                .take(DRAIN_LIMIT)
                .read_to_end_or_newline(&mut Vec::new());
        }
        let r = r.map(|()| buf);
        let _ = tx.send(r);
    });
    let buf = match rx.recv_timeout(READ_TIMEOUT) {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("request: reading stdin: {e}"))?,
        Err(_) => anyhow::bail!("request: no request line within {READ_TIMEOUT:?}"),
    };
    parse_request(&buf)
}

/// Parse a request line (pure).
pub fn parse_request(buf: &[u8]) -> anyhow::Result<Request> {
    anyhow::ensure!(
        buf.len() <= MAX_REQUEST,
        "request: longer than {MAX_REQUEST} bytes"
    );
    let line = buf.strip_suffix(b"\n").unwrap_or(buf);
    serde_json::from_slice(line).map_err(|e| {
        anyhow::anyhow!(
            "request: not {{\"action\": \"inspect\"|\"open\"|\"header-backup\", \"volume\": NAME}}: {e}"
        )
    })
}

trait ReadLine {
    fn read_to_end_or_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()>;
}

impl<R: Read> ReadLine for R {
    /// Stop at the first newline: a systemd socket peer may keep its write side open.
    fn read_to_end_or_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let mut chunk = [0u8; 512];
        loop {
            let n = match self.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if chunk[..n].contains(&b'\n') {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_an_action_and_a_volume_and_nothing_else() {
        let cases: [(&[u8], Option<Action>); 7] = [
            (
                br#"{"action":"inspect","volume":"a"}"#,
                Some(Action::Inspect),
            ),
            (
                b"{\"action\":\"open\",\"volume\":\"a\"}\n",
                Some(Action::Open),
            ),
            (
                br#"{"action":"header-backup","volume":"a"}"#,
                Some(Action::HeaderBackup),
            ),
            (br#"{"action":"format","volume":"a"}"#, None),
            (
                br#"{"action":"open","volume":"a","device":"/dev/sda"}"#,
                None,
            ),
            (br#"{"action":"open"}"#, None),
            (b"not json", None),
        ];
        for (line, want) in cases {
            let got = parse_request(line).ok().map(|r| r.action);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
        }
        let long = vec![b' '; MAX_REQUEST + 1];
        assert!(format!("{:#}", parse_request(&long).unwrap_err()).contains("longer than"));
    }

    #[test]
    fn only_root_the_state_dir_owner_and_the_agent_user_are_served() {
        let cases = [
            (0, None, None, true),
            (998, Some(998), None, true),
            (997, None, Some(997), true),
            (1000, Some(998), Some(997), false),
            (65534, None, None, false),
        ];
        for (uid, owner, agent, want) in cases {
            assert_eq!(peer_allowed(uid, owner, agent), want, "uid {uid}");
        }
    }

    #[test]
    fn root_runs_the_helper_as_a_child_and_anyone_else_asks_the_socket() {
        let (s, c) = (Path::new("/run/x.sock"), Some(Path::new("/etc/a.toml")));
        assert_eq!(
            Access::choose(true, s, c),
            Access::Child {
                config: c.map(Path::to_owned)
            }
        );
        assert_eq!(Access::choose(false, s, c), Access::Helper(s.to_owned()));
    }
}
