//! What each CLI verb does, behind `main.rs`'s argument parsing: one file per
//! verb group. Every verb returns an exit code: 0 success, 1 the job ran and
//! failed (or could not start because another run holds the lock), 2 usage or
//! configuration error.

pub mod audit;
pub mod backups;
pub mod check;
pub mod ctl;
pub mod hold;
pub mod job;
pub mod progress;
pub mod status;
pub mod vm_backups;

use crate::config::{self, Config};
use std::path::PathBuf;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The job ran and failed.
pub const EXIT_FAILED: u8 = 1;
/// Usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Load the configuration or print every problem to stderr.
pub fn load_or_report(flag: Option<PathBuf>) -> Result<(PathBuf, Config), u8> {
    let path = config::resolve_path(flag);
    match config::load(&path) {
        Ok(c) => Ok((path, c)),
        Err(p) => {
            eprint!("cloudnx-agent: {p}");
            Err(EXIT_USAGE)
        }
    }
}

/// `run`: the daemon.
pub async fn daemon(flag: Option<PathBuf>) -> u8 {
    let (path, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = act_as_state_owner(&cfg) {
        eprintln!("cloudnx-agent: {e}");
        return EXIT_FAILED;
    }
    match crate::daemon::run(path, cfg).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!("daemon failed: {e:#}");
            eprintln!("cloudnx-agent: {e:#}");
            EXIT_FAILED
        }
    }
}

/// Run as root with a `state_dir` that belongs to another user (the package's
/// `cloudnx-agent`), become that user — its uid, primary group, supplementary
/// groups and home — before touching anything. Otherwise a one-shot
/// `sudo cloudnx-agent backup` would leave root-owned locks, metrics state,
/// outbox and audit files that the daemon then cannot write, and would
/// succeed where the daemon fails. A root-owned (or missing) `state_dir`
/// keeps root. Returns a message naming the fix if the switch fails.
pub fn act_as_state_owner(cfg: &Config) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, User};
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(&cfg.state_dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let uid = Uid::from_raw(meta.uid());
    let user = User::from_uid(uid).ok().flatten();
    let gid = user.as_ref().map_or(Gid::from_raw(meta.gid()), |u| u.gid);
    let name = user.as_ref().map_or_else(
        || format!("uid {uid}"),
        |u| format!("{} (uid {uid})", u.name),
    );
    let fail = |step: &str, e: nix::Error| {
        format!(
            "acting as {name}, the owner of state_dir {}: {step}: {e}; run as that user, or chown the state directory to root for a root-only setup",
            cfg.state_dir.display()
        )
    };
    match &user {
        Some(u) => {
            let cname = std::ffi::CString::new(u.name.as_str())
                .map_err(|_| format!("the user name of uid {uid} contains a NUL byte"))?;
            nix::unistd::initgroups(&cname, gid).map_err(|e| fail("initgroups", e))?;
        }
        None => nix::unistd::setgroups(&[gid]).map_err(|e| fail("setgroups", e))?,
    }
    nix::unistd::setgid(gid).map_err(|e| fail("setgid", e))?;
    nix::unistd::setuid(uid).map_err(|e| fail("setuid", e))?;
    if let Some(u) = &user {
        // libpq finds ~/.pgpass through HOME, as under the daemon's unit.
        std::env::set_var("HOME", &u.dir);
        std::env::set_var("USER", &u.name);
        std::env::set_var("LOGNAME", &u.name);
    }
    eprintln!(
        "cloudnx-agent: running as {name}, the owner of {}, so what this run writes stays usable by the daemon",
        cfg.state_dir.display()
    );
    Ok(())
}
