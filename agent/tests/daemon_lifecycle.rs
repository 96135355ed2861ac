//! The daemon speaks sd_notify like a systemd Type=notify service: READY=1 once
//! the configuration is valid and metrics are written, WATCHDOG=1 at half of
//! WATCHDOG_USEC, RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP (a bad
//! configuration refused, the old one kept), STOPPING=1 and exit 0 on SIGTERM.

mod support;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{agent_bin, Scratch};

struct Peer {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Peer {
    fn new(path: &std::path::Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Peer { sock, seen: vec![] }
    }

    /// Wait (up to `within`) for a datagram containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == needle || l.starts_with(needle)) {
                    return msg;
                }
            }
        }
        panic!(
            "no {needle:?} from the daemon within {within:?}; saw {:?}",
            self.seen
        );
    }
}

fn kill(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LUKS_ONLY: &str = "[luks]\nschedule = \"30 2 * * *\"\n";

#[test]
fn daemon_notifies_ready_watchdog_reload_and_stopping() {
    let s = Scratch::new();
    let cfg = s.config(LUKS_ONLY);
    let sock_path = s.path("notify.sock");
    let mut peer = Peer::new(&sock_path);
    let mut child = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let ready = peer.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=idle; next luks-check at"), "{ready}");
    // Metrics are written before READY=1.
    let prom = s.prom();
    assert!(
        prom.contains("cloudnx_agent_info{host_id=\"test-host\",version=\""),
        "{prom}"
    );
    assert!(
        prom.contains("cloudnx_job_next_run_timestamp_seconds{kind=\"luks-check\"}"),
        "{prom}"
    );

    // WATCHDOG=1 every 200 ms (half of 400 ms): expect at least three in 1.5 s.
    for _ in 0..3 {
        peer.wait_for("WATCHDOG=1", Duration::from_millis(500));
    }

    // Good reload: the new schedule takes effect.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("30 2 * * *", "45 3 * * *"),
    )
    .unwrap();
    kill(&child, nix::sys::signal::Signal::SIGHUP);
    let reloading = peer.wait_for("RELOADING=1", Duration::from_secs(5));
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "RELOADING=1 must carry MONOTONIC_USEC: {reloading}"
    );
    peer.wait_for("READY=1", Duration::from_secs(5));
    let next = s
        .prom()
        .lines()
        .find(|l| l.starts_with("cloudnx_job_next_run_timestamp_seconds"))
        .unwrap()
        .to_owned();
    let ts: i64 = next.rsplit(' ').next().unwrap().parse().unwrap();
    let local = chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Kolkata);
    assert_eq!(
        local.format("%H:%M").to_string(),
        "03:45",
        "the reloaded schedule is in force"
    );

    // Bad reload: refused, the old configuration keeps running.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("45 3 * * *", "not a schedule"),
    )
    .unwrap();
    kill(&child, nix::sys::signal::Signal::SIGHUP);
    peer.wait_for("RELOADING=1", Duration::from_secs(5));
    peer.wait_for("READY=1", Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload must not stop the daemon"
    );
    let audit = std::fs::read_to_string(s.path("state/audit.jsonl")).unwrap();
    let reloads: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["action"] == "config.reload")
        .collect();
    assert_eq!(reloads.len(), 2, "{audit}");
    assert_eq!(reloads[0]["detail"]["accepted"], true);
    assert_eq!(reloads[1]["detail"]["accepted"], false);
    assert!(
        reloads[1]["detail"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("invalid schedule"),
        "{audit}"
    );
    peer.wait_for("WATCHDOG=1", Duration::from_millis(500));

    kill(&child, nix::sys::signal::Signal::SIGTERM);
    peer.wait_for("STOPPING=1", Duration::from_secs(5));
    let st = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0");

    // The reload records were sealed by a signed checkpoint on the way out, and verify.
    let checkpoints =
        std::fs::read_to_string(s.path("state/audit.jsonl.checkpoints")).unwrap_or_default();
    assert!(
        !checkpoints.trim().is_empty(),
        "no checkpoint written by the daemon"
    );
    let o = support::agent(&cfg_good(&s), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", support::text(&o));
}

/// The config rewritten to a valid one (the test left it broken).
fn cfg_good(s: &Scratch) -> std::path::PathBuf {
    let p = s.path("agent.toml");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("not a schedule", "45 3 * * *"),
    )
    .unwrap();
    p
}

#[test]
fn daemon_refuses_to_start_on_a_bad_configuration() {
    let s = Scratch::new();
    let cfg = s.config("[luks]\nschedule = \"nope\"\n");
    let o = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid schedule \"nope\""));
}
