//! A throwaway PostgreSQL cluster for one drill: initdb into a private temp
//! dir (as `run_as` when the agent is root: initdb refuses root), unix socket
//! only, fsync off. [`Cluster`] stops it (immediate) and removes the whole
//! directory when dropped, so every exit path — success, failure, timeout,
//! cancellation — tears it down.

use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The private directory of a drill and, once started, its cluster.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    started: bool,
    /// The socket "port" (names the socket file; nothing listens on TCP).
    pub port: u16,
}

impl Cluster {
    /// Create the private directory under `parent` (spool and cluster live in it).
    pub fn prepare(parent: &Path, bin: &Path, run_as: &str) -> anyhow::Result<Cluster> {
        // The cluster's owner must traverse the parent: 0711, not 0700.
        if !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Decrypted customer data goes below: nobody else may be able to
        // swap the directory (or one above it) under the drill.
        let me = nix::unistd::geteuid().as_raw();
        if let Some(why) = crate::fsx::untrusted_dir(parent, me) {
            bail!(
                "the drill's spool directory {} is not safe for decrypted backups: {why}; \
                 use a directory owned by root or the agent and not writable by others \
                 (or a sticky one like /var/tmp), set in [restore_drill] spool_dir",
                parent.display()
            );
        }
        reap_stale(parent, me);
        let dir = parent.join(format!("drill-{}", &crate::util::new_id()[..12]));
        // mkdir never follows a symlink and fails if the name exists.
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Whose drill this is: a later run reaps it if this process died (kill -9).
        {
            use std::io::Write;
            let mut f = crate::fsx::create_new(&dir.join(OWNER), 0o600)?;
            write!(f, "{}", std::process::id())
                .with_context(|| format!("writing {}", dir.join(OWNER).display()))?;
        }
        let user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name(run_as)
                .ok()
                .flatten()
                .with_context(|| format!("[restore_drill] run_as: no such user {run_as:?}; create it or install postgresql (user postgres)"))?;
            Some((u.uid, u.gid))
        } else {
            None
        };
        let mut c = Cluster {
            dir,
            bin: bin.to_owned(),
            user,
            started: false,
            port: free_port()?,
        };
        use std::os::unix::fs::PermissionsExt;
        // The cluster's owner must reach its data and socket dirs, nothing else.
        std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o711))?;
        for sub in ["data", "sock", "log"] {
            let p = c.dir.join(sub);
            std::fs::create_dir(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = c.user {
                nix::unistd::chown(&p, Some(uid), Some(gid))?;
            }
        }
        let spool = c.spool();
        std::fs::create_dir(&spool)?;
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700))?;
        c.started = false;
        Ok(c)
    }

    /// The spool directory (root-only; encrypted download and decrypted dump).
    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// The socket directory (the `host` to connect to).
    pub fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Where the temp dir is (for reports).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// libpq conninfo of the throwaway cluster.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.sock().display(),
            self.port
        )
    }

    fn as_owner(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.current_dir(&self.dir);
        c
    }

    /// initdb and start.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let mut init = self.as_owner("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--locale=C.UTF-8",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        run(init, "initdb of the throwaway cluster").await?;
        // A throwaway restore target: nothing here must survive a crash, so
        // no durability (fsync, full pages, synchronous commit), WAL only as
        // much as crash-free operation needs (wal_level=minimal lets
        // pg_restore's TRUNCATE+COPY in one transaction skip WAL), no
        // checkpoints during the load, larger sort memory for the index
        // builds, no autovacuum competing with the checks, no JIT.
        let opts = format!(
            "-c listen_addresses='' -p {} -k {} -c fsync=off -c full_page_writes=off -c synchronous_commit=off \
             -c wal_level=minimal -c max_wal_senders=0 -c archive_mode=off -c max_wal_size=8GB \
             -c checkpoint_timeout=1h -c maintenance_work_mem=256MB -c autovacuum=off -c jit=off",
            self.port,
            self.sock().display()
        );
        let mut start = self.as_owner("pg_ctl");
        start
            .args(["-w", "-t", "120", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("log/postgres.log"))
            .args(["-o", &opts, "start"]);
        self.started = true;
        run(start, "starting the throwaway cluster").await
    }
}

async fn run(cmd: std::process::Command, what: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = cmd.output().await.with_context(|| what.to_owned())?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The file in a drill dir that names the agent process owning it.
const OWNER: &str = "agent.pid";

/// Stop and remove what a drill killed with SIGKILL left under `parent`: its
/// postmaster (still running, holding the decrypted data) and its directory
/// (a plaintext dump in the spool). Only directories this agent's uid owns
/// (never a symlink, never another user's `drill-*`). A dir is stale when the
/// agent process named in it is gone; one without that file only when older
/// than a minute (it may be a live drill between mkdir and writing the file).
fn reap_stale(parent: &Path, me: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let is_drill = e.file_name().to_string_lossy().starts_with("drill-");
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
        stop_postmaster(&dir.join("data"));
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            tracing::error!("removing {}: {err}", dir.display());
        }
    }
}

/// Immediate shutdown (SIGQUIT) of the postmaster of `data`, if it still runs;
/// SIGKILL after 10 s. Checks the pid really is a postgres of that data dir.
fn stop_postmaster(data: &Path) {
    use nix::sys::signal::{kill, Signal};
    let Some(pid) = crate::fsx::open_read(&data.join("postmaster.pid"))
        .and_then(std::io::read_to_string)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return;
    };
    let ours = || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()))
    };
    if !ours() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGQUIT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ours() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if ours() {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            self.stop_hard();
        }
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

impl Cluster {
    /// Stop the cluster whatever state its start reached. A cancellation can
    /// land while `pg_ctl start` is still waiting: the postmaster is forked but
    /// `pg_ctl stop` may not see it yet, so fall back to the pid it records.
    fn stop_hard(&self) {
        let data = self.dir.join("data");
        let mut stop = self.as_owner("pg_ctl");
        stop.arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if matches!(stop.output(), Ok(o) if o.status.success()) {
            return;
        }
        // Give a starting postmaster a moment to write its pid file.
        let pid_file = data.join("postmaster.pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let pid = loop {
            let pid = crate::fsx::open_read(&pid_file)
                .and_then(std::io::read_to_string)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if pid.is_some() || std::time::Instant::now() > deadline {
                break pid;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let Some(pid) = pid else {
            tracing::warn!(
                "the throwaway cluster in {} never recorded a postmaster pid",
                self.dir.display()
            );
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        // SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL if it lingers.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while nix::sys::signal::kill(pid, None).is_ok() {
            if std::time::Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                tracing::error!("the throwaway postmaster {pid} ignored SIGQUIT; killed");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
