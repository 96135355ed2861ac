//! Helpers shared by the end-to-end tests: the agent binary, temp configs, and
//! starters for the real components (one file per component).
#![allow(dead_code)]

pub mod control_plane;
/// Fault-injection helpers (backup rig, killable agent, S3 fault proxy).
pub mod faults;
pub mod gpg;
pub mod luks;
pub mod postgres;
pub mod s3;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `cloudnx-agent` binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloudnx-agent"))
}

/// The privileged LUKS helper binary (the only one linking libcryptsetup).
pub fn helper_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloudnx-luks-helper"))
}

/// Run the agent with a config file; returns its output.
pub fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .output()
        .expect("running cloudnx-agent")
}

/// stdout + stderr as one string, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A scratch directory with `state/` and `metrics/` and a config writer.
pub struct Scratch {
    /// Owns the directory.
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A new scratch directory (world-traversable so `postgres` can use subdirs).
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("cnx-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
        Scratch { dir }
    }

    /// Path inside the scratch dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write `agent.toml` with the host basics (host_id, state_dir, textfile_dir, audit)
    /// followed by `body`; returns its path.
    pub fn config(&self, body: &str) -> PathBuf {
        let p = self.path("agent.toml");
        let head = format!(
            "host_id = \"test-host\"\nstate_dir = \"{s}\"\ntimezone = \"Asia/Kolkata\"\n\n[metrics]\ntextfile_dir = \"{m}\"\n\n[audit]\npath = \"{s}/audit.jsonl\"\nsigning_key_file = \"{s}/audit.ed25519.pem\"\n\n",
            s = self.path("state").display(),
            m = self.path("metrics").display()
        );
        std::fs::write(&p, head + body).unwrap();
        p
    }

    /// `[[destinations]]` TOML: `local` (a filesystem destination at `fs/`)
    /// and, when given, `s3`; with the quoted names for a `destinations = […]`.
    pub fn destinations(&self, s3: Option<&S3Dest>) -> (String, String) {
        let mut body = format!(
            "[[destinations]]\nname = \"local\"\ntype = \"filesystem\"\npath = \"{}\"\n\n",
            self.path("fs").display()
        );
        let mut names = vec!["\"local\""];
        if let Some(d) = s3 {
            let id = self.secret("secrets/s3.id", d.key_id);
            let secret = self.secret("secrets/s3.secret", d.secret);
            body += &format!(
                "[[destinations]]\nname = \"s3\"\ntype = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\n\
                 access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\nobject_lock_days = {}\n\n",
                d.endpoint,
                d.bucket,
                id.display(),
                secret.display(),
                d.lock_days
            );
            names.push("\"s3\"");
        }
        (body, names.join(", "))
    }

    /// Write a secret file with mode 0600.
    pub fn secret(&self, rel: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// The metrics exposition file.
    pub fn prom(&self) -> String {
        std::fs::read_to_string(self.path("metrics/cloudnx_agent.prom")).unwrap_or_default()
    }
}

/// An S3 destination for [`Scratch::destinations`].
pub struct S3Dest<'a> {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: &'a str,
    /// Bucket name.
    pub bucket: &'a str,
    /// Content of the access key id file.
    pub key_id: &'a str,
    /// Content of the secret access key file.
    pub secret: &'a str,
    /// `object_lock_days` (0: no Object Lock).
    pub lock_days: u32,
}

impl<'a> S3Dest<'a> {
    /// A destination with the test credentials and no Object Lock.
    pub fn new(endpoint: &'a str, bucket: &'a str) -> Self {
        S3Dest {
            endpoint,
            bucket,
            key_id: "test",
            secret: "test",
            lock_days: 0,
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fail loudly when a component the test needs is missing.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from(program)).filter(|p| p.is_absolute() && p.is_file()));
    found.unwrap_or_else(|| {
        panic!(
            "required test component `{program}` is not installed: run scripts/install-test-deps"
        )
    })
}
/// A real Alertmanager for direct-paging tests.
pub mod alertmanager;
/// Audit-log helpers (scratch log, mixed records, verify).
pub mod audit;

/// The Proxmox VE API simulator.
pub mod pve;
