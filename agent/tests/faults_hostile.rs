//! Hostile S3 peers (issue #23): the fault proxy in front of moto pages
//! forever, never answers, or answers far more than was asked for. Every
//! answer the agent reads is bounded, every network call ends, and SIGTERM
//! ends a job whatever the peer does; the next run is not refused.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use support::faults::{Fault, Rig, S3FaultProxy, S3Op, BUCKET};
use support::s3::Moto;

/// Far above a manifest (a few KiB) and the agent's idle footprint, far
/// below the oversized answers the proxy sends.
const RSS_CEILING_KIB: u64 = 64 << 10;
/// The oversized answers.
const HUGE: usize = 128 << 20;
/// SPEC §8: a cancelled job winds down within the daemon's shutdown grace
/// (8 s); a little more for process start-up and exit.
const SIGTERM_BOUND_SECS: u64 = 10;

fn setup() -> (Rig, Moto, S3FaultProxy, std::path::PathBuf) {
    let rig = Rig::new(2_000);
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let proxy = S3FaultProxy::start(moto.port);
    let cfg = rig.config(Some(&proxy.endpoint()), "");
    (rig, moto, proxy, cfg)
}

fn spawn(cfg: &Path, args: &[&str]) -> Child {
    Command::new(support::agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cloudnx-agent")
}

/// The child's output if it exits within `secs`; otherwise it is killed
/// (SIGKILL) and None is returned.
fn finish_within(child: Child, secs: u64) -> Option<Output> {
    let pid = pid_of(&child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => Some(out.unwrap()),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            None
        }
    }
}

fn pid_of(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap())
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(pid_of(child), nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// Run the agent under a small Python parent that reaps it with `wait4` and
/// writes its peak RSS (KiB) to a file: the agent's own high-water mark,
/// read after it exited, whatever else this test process has run.
fn agent_with_peak_rss(cfg: &Path, args: &[&str], rss_file: &Path) -> (Output, u64) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, subprocess, sys\n\
             p = subprocess.Popen(sys.argv[2:])\n\
             _, status, ru = os.wait4(p.pid, 0)\n\
             open(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n\
             sys.exit(os.waitstatus_to_exitcode(status))\n",
        )
        .arg(rss_file)
        .arg(support::agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .output()
        .expect("running cloudnx-agent under python3");
    let rss = std::fs::read_to_string(rss_file)
        .unwrap_or_else(|e| panic!("no peak RSS written ({e}): {}", support::text(&out)))
        .trim()
        .parse()
        .unwrap();
    (out, rss)
}

/// The backup failed (exit 1) on the S3 listing of its retention step,
/// naming the endpoint: that error line.
fn listing_failure(out: &Output, proxy: &S3FaultProxy) -> String {
    let text = support::text(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let error = text
        .lines()
        .find(|l| l.contains("retention of app on s3"))
        .unwrap_or_else(|| panic!("the listing failure is named: {text}"))
        .to_owned();
    assert!(
        error.contains(&proxy.endpoint()),
        "names the endpoint: {error}"
    );
    error
}

#[test]
fn a_server_that_pages_forever_with_the_same_token_fails_the_backup_naming_the_endpoint() {
    let (_rig, _moto, proxy, cfg) = setup();
    proxy.fault(S3Op::ListObjects, 1, usize::MAX, Fault::SameTokenForever);
    let out = finish_within(spawn(&cfg, &["backup"]), 120).unwrap_or_else(|| {
        panic!(
            "the backup still ran after {} list requests",
            proxy.requests(S3Op::ListObjects)
        )
    });
    let error = listing_failure(&out, &proxy);
    assert!(error.contains("continuation token"), "says why: {error}");
    let asked = proxy.requests(S3Op::ListObjects);
    assert!(asked <= 3, "{asked} list requests for one listing");
}

/// Start a backup, wait until the proxy injected `injected` faults, SIGTERM
/// it: it must exit 1 within the bound, saying it was cancelled. Its output.
fn backup_stopped_by_sigterm(proxy: &S3FaultProxy, cfg: &Path, injected: usize) -> String {
    let child = spawn(cfg, &["backup"]);
    assert!(
        proxy.wait_injected(injected, 120),
        "the backup never met the fault"
    );
    sigterm(&child);
    let out = finish_within(child, SIGTERM_BOUND_SECS).unwrap_or_else(|| {
        panic!(
            "SIGTERM did not end the backup within {SIGTERM_BOUND_SECS} s ({} faults injected)",
            proxy.injected()
        )
    });
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cancelled"), "{text}");
    text
}

#[test]
fn sigterm_ends_a_backup_whose_server_pages_forever_with_fresh_tokens() {
    let (_rig, _moto, proxy, cfg) = setup();
    proxy.fault(S3Op::ListObjects, 1, usize::MAX, Fault::FreshTokenForever);
    backup_stopped_by_sigterm(&proxy, &cfg, 3);
}

#[test]
fn sigterm_ends_a_backup_blocked_on_a_server_that_never_answers_and_the_next_run_works() {
    let (rig, moto, proxy, cfg) = setup();
    proxy.fault(S3Op::Any, 1, usize::MAX, Fault::NeverAnswer);
    backup_stopped_by_sigterm(&proxy, &cfg, 1);
    assert!(
        support::faults::s3_complete_stamps(&moto).is_empty(),
        "nothing on S3 looks complete"
    );

    // The server behaves again: the next run is not refused (no stale lock)
    // and completes on both destinations.
    proxy.clear();
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(support::faults::s3_complete_stamps(&moto).len(), 1);
    assert!(rig.assert_complete_backups_whole() >= 1);
}

#[test]
fn an_oversized_list_answer_fails_the_backup_naming_the_limit() {
    let (_rig, _moto, proxy, cfg) = setup();
    proxy.fault(S3Op::ListObjects, 1, usize::MAX, Fault::Oversized(HUGE));
    let out = finish_within(spawn(&cfg, &["backup"]), 120).expect("the backup ended");
    let error = listing_failure(&out, &proxy);
    assert!(
        error.contains("exceeds the limit of"),
        "names the limit: {error}"
    );
}

#[test]
fn a_drill_given_an_oversized_manifest_fails_on_its_size_in_little_memory() {
    let (rig, moto, proxy, cfg) = setup();
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(support::faults::s3_complete_stamps(&moto).len(), 1);
    let rss_file = rig.scratch.path("peak-rss");

    // From S3: the manifest's GET answers 128 MiB.
    proxy.fault(S3Op::ManifestGet, 1, usize::MAX, Fault::Oversized(HUGE));
    let (out, rss) =
        agent_with_peak_rss(&cfg, &["restore-drill", "--destination", "s3"], &rss_file);
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(proxy.injected() >= 1, "the oversized manifest was served");
    assert!(
        rss < RSS_CEILING_KIB,
        "peak RSS {rss} KiB reading a {HUGE}-byte manifest from S3: {text}"
    );
    assert!(text.contains("manifest.json"), "names the object: {text}");
    assert!(
        text.contains("exceeds the limit of"),
        "a size error: {text}"
    );

    // From the filesystem: the newest manifest is a 128 MiB file.
    let stamp = rig.complete_stamps().pop().expect("a local backup");
    let manifest = rig
        .fs()
        .join("test-host/postgres/app")
        .join(&stamp)
        .join("manifest.json");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .unwrap();
    f.set_len(HUGE as u64).unwrap();
    drop(f);
    let (out, rss) = agent_with_peak_rss(&cfg, &["restore-drill"], &rss_file);
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        rss < RSS_CEILING_KIB,
        "peak RSS {rss} KiB reading a {HUGE}-byte manifest file: {text}"
    );
    assert!(
        text.contains(&manifest.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        text.contains("exceeds the limit of"),
        "a size error: {text}"
    );
}
