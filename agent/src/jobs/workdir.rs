//! A private working directory for decrypted backups (the drill's spool and
//! throwaway cluster, a restore's spool): created only under a directory no
//! other local user can tamper with ([`crate::fsx::untrusted_dir`]), named
//! `{kind}-{random}` by an exclusive mkdir, marked with the owning agent's pid,
//! and removed on every exit path ([`Workdir`]'s `Drop`). What a killed run left
//! behind is reaped by the next one — only directories this agent's uid owns.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Name prefixes of work directories (`drill-…`, `restore-…`).
const KINDS: [&str; 2] = ["drill", "restore"];

/// One private working directory; removed when dropped.
pub struct Workdir {
    dir: PathBuf,
}

impl Workdir {
    /// Create `{parent}/{kind}-{random}` with `mode` after checking `parent`
    /// (created 0711 if missing) and reaping stale directories of killed runs
    /// (`stop` ends what such a run left running in its directory).
    pub fn create(
        parent: &Path,
        kind: &str,
        mode: u32,
        stop: fn(&Path),
    ) -> anyhow::Result<Workdir> {
        use std::os::unix::fs::PermissionsExt;
        if !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Decrypted customer data goes below: nobody else may be able to
        // swap the directory (or one above it) under the run.
        let me = nix::unistd::geteuid().as_raw();
        if let Some(why) = crate::fsx::untrusted_dir(parent, me) {
            bail!(
                "the spool directory {} is not safe for decrypted backups: {why}; \
                 use a directory owned by root or the agent and not writable by others \
                 (or a sticky one like /var/tmp), set in [restore_drill] spool_dir",
                parent.display()
            );
        }
        reap_stale(parent, me, stop);
        let dir = parent.join(format!("{kind}-{}", &crate::util::new_id()[..12]));
        // mkdir never follows a symlink and fails if the name exists.
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let w = Workdir { dir };
        std::fs::set_permissions(&w.dir, std::fs::Permissions::from_mode(mode))?;
        // Whose it is: a later run reaps it if this process died (kill -9).
        {
            use std::io::Write;
            let mut f = crate::fsx::create_new(&w.dir.join(OWNER), 0o600)?;
            write!(f, "{}", std::process::id())
                .with_context(|| format!("writing {}", w.dir.join(OWNER).display()))?;
        }
        Ok(w)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        // A postmaster killed a moment ago may still be removing its files:
        // retry instead of leaving the directory behind.
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Some(e) = last {
            tracing::error!("removing {}: {e}", self.dir.display());
        }
    }
}

/// The file in a drill dir that names the agent process owning it.
const OWNER: &str = "agent.pid";

/// Stop and remove what a drill killed with SIGKILL left under `parent`: its
/// postmaster (still running, holding the decrypted data) and its directory
/// (a plaintext dump in the spool). Only directories this agent's uid owns
/// (never a symlink, never another user's `drill-*` or `restore-*`). A dir is stale when the
/// agent process named in it is gone; one without that file only when older
/// than a minute (it may be a live drill between mkdir and writing the file).
fn reap_stale(parent: &Path, me: u32, stop: fn(&Path)) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let is_drill = KINDS
            .iter()
            .any(|k| name.strip_prefix(k).is_some_and(|r| r.starts_with('-')));
        // DirEntry::metadata does not follow a symlink.
        let ours = e
            .metadata()
            .is_ok_and(|m| m.file_type().is_dir() && m.uid() == me);
        if !is_drill || !ours {
            continue;
        }
        let owner: Option<i32> = crate::fsx::open_read(&dir.join(OWNER))
            .and_then(std::io::read_to_string)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let stale = match owner {
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            None => e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 60)),
        };
        if !stale {
            continue;
        }
        tracing::warn!("removing {} left by a killed restore drill", dir.display());
        stop(&dir);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            tracing::error!("removing {}: {err}", dir.display());
        }
    }
}
