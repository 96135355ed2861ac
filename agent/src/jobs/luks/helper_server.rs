//! The root side of the LUKS helper protocol ([`super::helper`]):
//! `cloudnx-luks-helper` (its own small binary, `src/bin/luks_helper.rs`,
//! calling [`serve`]) is started by systemd per connection on
//! `/run/cloudnx-agent-luks-helper.sock` (Accept=yes, stdin/stdout = the
//! connection): it reads ONE request line, checks its peer, resolves the
//! volume NAME through its own load of the configuration (a caller can never
//! name a device, keyfile or path), does the action through the one-thread
//! libcryptsetup code, answers ONE line and exits.
//!
//! Peer check: on a unix socket, `SO_PEERCRED` must name uid 0, the owner of
//! `state_dir` or the `cloudnx-agent` user. When stdin is not a socket (a
//! pipe, a terminal) there is no peer to ask the kernel about; it is allowed
//! only when the helper itself runs as root, because then whoever started it
//! already had root, and refused otherwise so the helper never acts for an
//! unknown caller. A refused peer learns nothing of the configuration.

use super::helper::{parse_request, Action, Request, MAX_REQUEST, READ_TIMEOUT};
use super::inspect;
use super::repair::{self, Attempt};
use crate::config::LuksVolume;
use anyhow::Context;
use base64::Engine;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How much of an oversized request line the helper reads and drops.
const DRAIN_LIMIT: u64 = 1 << 20;

/// Whether a peer uid may use the helper: root, the owner of `state_dir`, or the
/// `cloudnx-agent` user (pure).
pub fn peer_allowed(uid: u32, state_dir_owner: Option<u32>, agent_user: Option<u32>) -> bool {
    uid == 0 || Some(uid) == state_dir_owner || Some(uid) == agent_user
}

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
    let loaded = crate::config::load_for_luks_helper(&path);
    // The peer first: a refused caller learns nothing of the configuration
    // (its file, lines, keys), not even whether it loads.
    check_peer(loaded.as_ref().ok().map(|c| c.state_dir.as_path()))?;
    let config =
        loaded.map_err(|p| anyhow::anyhow!("configuration: {} is invalid: {p}", path.display()))?;
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

/// `state_dir` is None when the configuration did not load: then only root
/// and the `cloudnx-agent` user are served (and told what is wrong).
fn check_peer(state_dir: Option<&Path>) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::unix::fs::MetadataExt;
    match getsockopt(&std::io::stdin(), PeerCredentials) {
        Ok(cred) => {
            let uid = cred.uid();
            let owner = state_dir
                .and_then(|d| std::fs::metadata(d).ok())
                .map(|m| m.uid());
            let agent = nix::unistd::User::from_name("cloudnx-agent")
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw());
            anyhow::ensure!(
                peer_allowed(uid, owner, agent),
                "peer: uid {uid} may not use the LUKS helper (allowed: root, the owner of the agent's state_dir and the cloudnx-agent user)"
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
}
