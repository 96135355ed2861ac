//! Helpers for the audit-log tests: a log in a scratch dir, mixed records,
//! the files of the chain with each record's byte range, and `audit verify`.

use super::{agent, text, Scratch};
use cloudnx_agent::audit::{AuditEntry, AuditLog};
use cloudnx_agent::config::{self, Config};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A scratch dir whose config sets `[audit] rotate_bytes` (and anything else in `extra`).
pub struct AuditScratch {
    /// The scratch dir (config at `agent.toml`, log under `state/`).
    pub scratch: Scratch,
    /// The config file.
    pub config_path: PathBuf,
    /// The loaded config (what the agent binary will also load).
    pub config: Config,
}

impl AuditScratch {
    /// A log that rotates past `rotate_bytes`.
    pub fn new(rotate_bytes: u64) -> Self {
        Self::with(&format!("rotate_bytes = {rotate_bytes}\n"))
    }

    /// A log with these extra `[audit]` keys, on tmpfs when the machine has
    /// one (fsync is free there: these tests are about the chain, not the disk).
    pub fn with(audit_keys: &str) -> Self {
        Self::in_scratch(Self::fast_scratch(), audit_keys)
    }

    /// A log with these `[audit]` keys and the filesystem destination `local` at `fs/`.
    pub fn with_local_destination(audit_keys: &str) -> Self {
        Self::with_destinations(audit_keys, None)
    }

    /// A log with these `[audit]` keys, `local` at `fs/` and `s3` when given.
    pub fn with_destinations(audit_keys: &str, s3: Option<&super::S3Dest>) -> Self {
        let scratch = Self::fast_scratch();
        let (dests, _) = scratch.destinations(s3);
        std::fs::create_dir_all(scratch.path("fs")).unwrap();
        Self::in_scratch(scratch, &format!("{audit_keys}\n{dests}"))
    }

    fn fast_scratch() -> Scratch {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let dir = tempfile::Builder::new()
                .prefix("cnx-audit-")
                .tempdir_in(shm)
                .expect("tempdir in /dev/shm");
            std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
            Scratch { dir }
        } else {
            Scratch::new()
        }
    }

    /// A log on the real disk (for crash tests: fsync and page-cache behaviour matter).
    pub fn on_disk(audit_keys: &str) -> Self {
        Self::in_scratch(Scratch::new(), audit_keys)
    }

    fn in_scratch(scratch: Scratch, audit_keys: &str) -> Self {
        let config_path = scratch.config(audit_keys);
        let config = config::load(&config_path).expect("test config loads");
        AuditScratch {
            scratch,
            config_path,
            config,
        }
    }

    /// The appender for this log.
    pub fn log(&self) -> AuditLog {
        AuditLog::new(&self.config.audit.path, self.config.audit.rotate_bytes)
    }

    /// The active file.
    pub fn active(&self) -> PathBuf {
        self.config.audit.path.clone()
    }

    /// The checkpoints file.
    pub fn checkpoints(&self) -> PathBuf {
        self.log().files().checkpoints()
    }

    /// Seal the head now (as the daemon's checkpointer does).
    pub fn seal(&self) {
        cloudnx_agent::audit::checkpoint::seal(
            &self.log(),
            &self.config.audit.signing_key_file,
            &self.config.host_id,
        )
        .expect("sealing a checkpoint");
    }

    /// Run `audit verify`; (exit code, stdout+stderr).
    pub fn verify(&self) -> (i32, String) {
        let o: Output = agent(&self.config_path, &["audit", "verify"]);
        (o.status.code().unwrap_or(-1), text(&o))
    }

    /// Verify in-process (fast, for many mutations): the first problem's seq, or None.
    pub fn verify_lib(&self) -> cloudnx_agent::audit::verify::Report {
        let key = cloudnx_agent::audit::key::load(&self.config.audit.signing_key_file)
            .ok()
            .map(|k| k.verifying_key());
        let keys =
            cloudnx_agent::audit::verify::Keys::local(self.log().files(), key).expect("keys");
        cloudnx_agent::audit::verify::verify(self.log().files(), &self.config.host_id, &keys)
            .expect("verify runs")
    }

    /// The files of the chain, oldest first.
    pub fn chain_files(&self) -> Vec<PathBuf> {
        self.log().files().chain_files().unwrap().expect("no gap")
    }

    /// Every record as (file, byte offset of the line start, line length without newline), in seq order.
    pub fn record_spans(&self) -> Vec<(PathBuf, usize, usize)> {
        let mut out = Vec::new();
        for f in self.chain_files() {
            let bytes = std::fs::read(&f).unwrap();
            let mut start = 0;
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'\n' {
                    out.push((f.clone(), start, i - start));
                    start = i + 1;
                }
            }
        }
        out
    }
}

/// The `i`-th of a mix of records as the agent writes them: API requests,
/// job starts/finishes, retention deletions, with unicode, quotes and sizes that vary.
pub fn mixed_entry(i: u64) -> AuditEntry {
    match i % 4 {
        0 => AuditEntry {
            actor: "control.example.net".into(),
            source_ip: Some(format!("10.0.{}.{}", i % 256, (i / 7) % 256)),
            method: Some("POST".into()),
            path: Some("/v1/jobs/backup".into()),
            status: Some(if i % 3 == 0 { 403 } else { 202 }),
            request_id: Some(format!("req-{i}")),
            user_agent: Some("cnx-control/1.2 \"quoted\"".into()),
            duration_ms: Some(i % 1000),
            action: "api.request".into(),
            detail: serde_json::json!({"accepted": i % 3 != 0, "note": "é✓ \\ \n tab\t"}),
        },
        1 => AuditEntry {
            actor: "schedule".into(),
            path: Some("/v1/jobs/snapshot".into()),
            request_id: Some(format!("snapshot-{i:012}")),
            action: "job.start".into(),
            detail: serde_json::json!({"job_id": format!("snapshot-{i}"), "kind": "snapshot"}),
            ..Default::default()
        },
        2 => AuditEntry {
            actor: "cli:root".into(),
            path: Some("/v1/jobs/backup".into()),
            request_id: Some(format!("backup-{i:012}")),
            duration_ms: Some(i * 13),
            action: "job.finish".into(),
            detail: serde_json::json!({"state": "succeeded", "changed": true, "pad": "x".repeat((i % 37) as usize * 10)}),
            ..Default::default()
        },
        _ => AuditEntry {
            actor: "schedule".into(),
            action: "backup.retention.delete".into(),
            detail: serde_json::json!({"object": format!("hel1/app/2026-01-{:02}.dump.pgp", i % 28 + 1), "destination": "minio"}),
            ..Default::default()
        },
    }
}

/// Copy `from` into `to`, subdirectories too.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        } else if t.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        }
    }
}

/// `openssl pkeyutl -verify -rawin` of checkpoint `cp` of `host` with the
/// SPKI PEM at `pub_pem` (scratch files in `dir`); its output.
pub fn openssl_verify_checkpoint(
    dir: &Path,
    pub_pem: &Path,
    host: &str,
    cp: &cloudnx_agent::audit::checkpoint::Checkpoint,
) -> Output {
    use base64::Engine;
    let msg = dir.join("msg");
    std::fs::write(
        &msg,
        cloudnx_agent::audit::checkpoint::message(host, cp.seq, &cp.hash),
    )
    .unwrap();
    let sig = dir.join("sig");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&cp.signature)
        .unwrap();
    std::fs::write(&sig, raw).unwrap();
    std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(pub_pem)
        .arg("-in")
        .arg(&msg)
        .arg("-sigfile")
        .arg(&sig)
        .output()
        .unwrap()
}
