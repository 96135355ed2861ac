//! A throwaway PostgreSQL 15 cluster for tests: initdb as `postgres` in a
//! private temp dir, TCP on 127.0.0.1 at a free port plus a unix socket,
//! fsync off. Stopped (immediate) and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PostgreSQL 15 binaries.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster.
pub struct Pg {
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

fn run_as_postgres(args: &[&str]) -> std::process::Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        super::text(&out)
    );
    out
}

impl Pg {
    /// Start a new cluster.
    pub fn start() -> Pg {
        super::require("runuser");
        super::require(&format!("{BIN}/initdb"));
        let dir = tempfile::Builder::new()
            .prefix("cnx-pg-")
            .tempdir()
            .unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        run_as_postgres(&["mkdir", sock.to_str().unwrap()]);
        run_as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--locale=C.UTF-8",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        let port = super::free_port();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            sock.display()
        );
        run_as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-w",
            "-D",
            data.to_str().unwrap(),
            "-l",
            dir.path().join("log").to_str().unwrap(),
            "-o",
            &opts,
            "start",
        ]);
        Pg { dir, port }
    }

    /// The unix socket directory.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// libpq conninfo for the agent (unix socket).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.sock().display(),
            self.port
        )
    }

    /// Run SQL with psql in `db`; returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(self.sock())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", super::text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Hold an ACCESS EXCLUSIVE lock on `table` in `db` until the guard drops:
    /// a pg_dump that reaches the table waits, deterministically, for as long
    /// as a test needs it alive.
    pub fn lock_table(&self, db: &str, table: &str) -> TableLock {
        use std::io::Write;
        let mut child = Command::new(format!("{BIN}/psql"))
            .args(["-X", "-q", "-h"])
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;").unwrap();
        stdin.flush().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let q = format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted");
        while self.psql(db, &q).trim() != "1" {
            assert!(
                std::time::Instant::now() < deadline,
                "could not lock {table}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        TableLock {
            child,
            stdin: Some(stdin),
        }
    }

    /// `pg_restore` a custom-format dump file into `db` (created first).
    pub fn restore(&self, db: &str, dump: &Path) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
        let out = Command::new(format!("{BIN}/pg_restore"))
            .args(["--exit-on-error", "--no-owner", "-h"])
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .arg(dump)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_restore: {}", super::text(&out));
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/pg_ctl"), "-D"])
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A held table lock (see [`Pg::lock_table`]); released on drop.
pub struct TableLock {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for TableLock {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
