//! The audit log under crashes and contention: processes appending through
//! the library are killed with SIGKILL mid-write, or race each other.
//!
//! The appending process is this test binary itself, re-run with
//! `CNX_AUDIT_CHILD_*` set (see [`one_process_appending_large_records_keeps_a_verifiable_chain`]).

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::audit::{mixed_entry, AuditScratch};

const CHILD_TEST: &str = "one_process_appending_large_records_keeps_a_verifiable_chain";

/// Start this test binary as an appender: `count` records (0: until killed)
/// with `pad` bytes of detail each, tagged `tag`.
fn spawn_appender(s: &AuditScratch, count: u64, pad: usize, tag: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env("CNX_AUDIT_CHILD_CONFIG", &s.config_path)
        .env("CNX_AUDIT_CHILD_COUNT", count.to_string())
        .env("CNX_AUDIT_CHILD_PAD", pad.to_string())
        .env("CNX_AUDIT_CHILD_TAG", tag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the appender")
}

/// The child side: append through the library as told, then exit.
fn child_appends(config: &str) {
    let cfg = cloudnx_agent::config::load(Path::new(config)).expect("child config");
    let log = cloudnx_agent::audit::AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes);
    let count: u64 = std::env::var("CNX_AUDIT_CHILD_COUNT")
        .unwrap()
        .parse()
        .unwrap();
    let pad: usize = std::env::var("CNX_AUDIT_CHILD_PAD")
        .unwrap()
        .parse()
        .unwrap();
    let tag = std::env::var("CNX_AUDIT_CHILD_TAG").unwrap();
    let mut i = 0u64;
    while count == 0 || i < count {
        i += 1;
        let mut e = mixed_entry(i);
        e.request_id = Some(format!("{tag}-{i}"));
        e.detail = serde_json::json!({"pad": "p".repeat(pad), "i": i});
        log.append(e).expect("child append");
    }
}

/// The last byte of a file and its length (None when empty or missing).
fn last_byte(p: &Path) -> Option<(u64, u8)> {
    let mut f = std::fs::File::open(p).ok()?;
    let len = f.seek(SeekFrom::End(0)).ok()?;
    if len == 0 {
        return None;
    }
    f.seek(SeekFrom::Start(len - 1)).ok()?;
    let mut b = [0u8];
    f.read_exact(&mut b).ok()?;
    Some((len, b[0]))
}

#[test]
fn one_process_appending_large_records_keeps_a_verifiable_chain() {
    if let Ok(config) = std::env::var("CNX_AUDIT_CHILD_CONFIG") {
        return child_appends(&config);
    }
    let s = AuditScratch::on_disk("rotate_bytes = 4000000\n");
    let status = spawn_appender(&s, 6, 1 << 20, "big").wait().unwrap();
    assert!(status.success());
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 6 records in 2 file(s)"), "{out}");
}

#[test]
fn kill_9_during_heavy_appends_leaves_a_chain_that_verifies_and_a_reported_torn_tail() {
    let s = AuditScratch::on_disk("rotate_bytes = 1000000000\n");
    let active = s.active();
    let mut torn: Option<Vec<u8>> = None;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while torn.is_none() && Instant::now() < deadline {
        rounds += 1;
        let mut child = spawn_appender(&s, 0, 2 << 20, &format!("round{rounds}"));
        // Wait for a write in flight (the file not ending at a newline), then SIGKILL.
        let start_len = last_byte(&active).map_or(0, |(l, _)| l);
        let watch = Instant::now() + Duration::from_secs(5);
        while Instant::now() < watch {
            if let Some((len, b)) = last_byte(&active) {
                if len > start_len && b != b'\n' {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let bytes = std::fs::read(&active).unwrap_or_default();
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let (code, out) = s.verify();
        assert_eq!(
            code, 0,
            "round {rounds}: verify must pass up to the last whole record\n{out}"
        );
        if whole < bytes.len() {
            let n = bytes.len() - whole;
            assert!(
                out.contains(&format!("a torn write of {n} bytes")),
                "round {rounds}: torn tail not reported\n{out}"
            );
            torn = Some(bytes[whole..].to_vec());
        }
    }
    let torn = torn.unwrap_or_else(|| panic!("no kill -9 in {rounds} rounds left a torn write"));
    eprintln!(
        "torn write of {} bytes after {rounds} kill -9 rounds",
        torn.len()
    );

    // Restart: the next append sets the torn bytes aside, audits it, chains on.
    let status = spawn_appender(&s, 1, 10, "restart").wait().unwrap();
    assert!(status.success());
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sha256 matches"), "{out}");
    let text = std::fs::read_to_string(&active).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let rec: cloudnx_agent::audit::Record = serde_json::from_str(lines[lines.len() - 2]).unwrap();
    assert_eq!(rec.action, "audit.torn_tail");
    assert_eq!(rec.detail["torn_bytes"], torn.len() as u64);
    let side = rec.detail["set_aside_to"].as_str().unwrap();
    assert_eq!(
        std::fs::read(side).unwrap(),
        torn,
        "the torn bytes are kept, not lost"
    );
    let last: cloudnx_agent::audit::Record = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert_eq!(last.request_id.as_deref(), Some("restart-1"));
    assert_eq!(last.seq, rec.seq + 1);
}

#[test]
fn two_processes_appending_at_once_never_fork_the_chain() {
    // Small files: rotations happen while the other process waits for the lock.
    let s = AuditScratch::on_disk("rotate_bytes = 20000\n");
    let mut a = spawn_appender(&s, 150, 100, "a");
    let mut b = spawn_appender(&s, 150, 100, "b");
    // Meanwhile: checkpoints sealed and the log verified, as the daemon and an
    // operator would; neither may see a fork or a half-rotated log.
    let mut verifies = 0;
    while a.try_wait().unwrap().is_none() || b.try_wait().unwrap().is_none() {
        s.seal();
        let (code, out) = s.verify();
        assert_eq!(code, 0, "verify during appends\n{out}");
        verifies += 1;
    }
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert!(verifies > 0);
    s.seal();
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 300 records in"), "{out}");
    assert!(out.contains("last checkpoint: seq 300 "), "{out}");
    let files = s.chain_files();
    assert!(files.len() > 3, "{files:?}");
    // Both writers' records are all there, each once.
    let mut ids: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| {
            serde_json::from_str::<cloudnx_agent::audit::Record>(&l)
                .unwrap()
                .request_id
                .unwrap()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (1..=150)
        .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
        .collect();
    want.sort();
    assert_eq!(ids, want);
}
