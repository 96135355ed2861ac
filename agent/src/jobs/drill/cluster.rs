//! A throwaway PostgreSQL cluster for one drill: initdb into a private temp
//! dir (as `run_as` when the agent is root: initdb refuses root), unix socket
//! only, fsync off. [`Cluster`] stops it (immediate) and removes the whole
//! directory when dropped, so every exit path — success, failure, timeout,
//! cancellation — tears it down.

use anyhow::Context;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The private directory of a drill and, once started, its cluster.
pub struct Cluster {
    /// Removed (after the cluster is stopped) when the cluster is dropped.
    _work: crate::jobs::workdir::Workdir,
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
        // The cluster's owner must traverse it: 0711, not 0700.
        let work =
            crate::jobs::workdir::Workdir::create(parent, "drill", 0o711, stop_postmaster_in)?;
        let dir = work.path().to_owned();
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
            _work: work,
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
        crate::pg::run(init.into(), "initdb of the throwaway cluster").await?;
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
        crate::pg::run(start.into(), "starting the throwaway cluster").await
    }
}

/// What a killed drill left running in its directory: its postmaster.
fn stop_postmaster_in(dir: &Path) {
    stop_postmaster(&dir.join("data"));
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
        // `work` goes next and removes the directory.
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
