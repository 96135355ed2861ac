//! The agent's side of the LUKS helper protocol ([`super::helper`]): it asks
//! the socket-activated `cloudnx-luks-helper` on its socket whenever the
//! process is not root, and runs the same binary as a child with the request
//! on a pipe when it is root (a root CLI run, the tests). Only the helper
//! binary links libcryptsetup (and its libcrypto, libdevmapper, …): the
//! long-running `cloudnx-agent` never calls it, so it neither carries that
//! code nor keeps ~2.5 MiB of those libraries resident (docs/adr/0008).

use super::helper::{Action, Request};
use super::inspect::{self, HeaderState};
use super::ondisk::BinaryHeader;
use super::repair::Attempt;
use crate::config::{LuksConfig, LuksVolume};
use anyhow::Context;
use base64::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the agent waits for an answer (an open derives an Argon2 key).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(240);
/// Largest answer the agent reads (a LUKS2 header backup is 16 MiB, base64 ~22 MiB).
const MAX_ANSWER: u64 = 64 << 20;

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
        let mut f = crate::fsx::create_new(&dest, 0o600)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
