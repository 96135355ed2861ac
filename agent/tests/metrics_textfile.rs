//! The metrics file is what node_exporter's textfile collector and promtool
//! accept: scraped with `node_textfile_scrape_error 0`, linted clean, and every
//! series of ours visible through the scrape (duplicates would vanish silently).

mod support;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{agent_bin, free_port, require, Scratch};

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// node_exporter with only the textfile collector, reading `dir`, on a free port.
fn start_exporter(ne: &std::path::Path, dir: &std::path::Path) -> (u16, std::process::Child) {
    let port = free_port();
    let child = Command::new(ne)
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting node_exporter");
    (port, child)
}

/// Start the daemon until its metrics file exists, then stop it.
fn write_metrics_with_daemon(s: &Scratch) {
    let cfg = s.config("[luks]\nschedule = \"30 2 * * *\"\n");
    let mut child = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.path("metrics/cloudnx_agent.prom").exists() {
        assert!(Instant::now() < deadline, "daemon wrote no metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn node_exporter_scrapes_the_textfile_without_errors() {
    let ne = require("prometheus-node-exporter");
    let s = Scratch::new();
    write_metrics_with_daemon(&s);
    let (port, mut exporter) = start_exporter(&ne, &s.path("metrics"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        if let Some(b) =
            http_get(port, "/metrics").filter(|b| b.contains("node_textfile_scrape_error"))
        {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "node_exporter did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = exporter.kill();
    let _ = exporter.wait();
    assert!(body.contains("node_textfile_scrape_error 0"), "{body}");
    // Every series in our file must come through the scrape.
    for line in s.prom().lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').unwrap().0;
        assert!(
            body.contains(series),
            "series {series} missing from the scrape:\n{body}"
        );
    }
    assert!(
        body.contains("cloudnx_agent_info{host_id=\"test-host\""),
        "{body}"
    );
}

#[test]
fn promtool_finds_no_problems_in_the_metrics_file() {
    let promtool = require("promtool");
    let s = Scratch::new();
    write_metrics_with_daemon(&s);
    let f = std::fs::File::open(s.path("metrics/cloudnx_agent.prom")).unwrap();
    let o = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(f)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "promtool check metrics failed:\n{out}\n{}",
        s.prom()
    );
    assert!(
        out.trim().is_empty(),
        "promtool reported lint problems:\n{out}"
    );
}

#[test]
fn a_thousand_scrapes_during_continuous_rewrites_never_see_a_torn_file() {
    use cloudnx_agent::metrics::{MetricsStore, MetricsUpdate};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let ne = require("prometheus-node-exporter");
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("state")).unwrap();
    let store = MetricsStore::new(&s.path("state"), &s.path("metrics"), "torn-test");
    store.apply(&MetricsUpdate::default()).unwrap();
    let (port, mut exporter) = start_exporter(&ne, &s.path("metrics"));

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes, store) = (stop.clone(), writes.clone(), store.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut u = MetricsUpdate::default();
                // Many series so a torn read would cut through the middle of the file.
                for db in 0..200 {
                    u.set(
                        cloudnx_agent::metrics::Family::BackupLastSize,
                        &[("database", &format!("db{db}"))],
                        (i * 1000 + db) as f64,
                    );
                }
                store.apply(&u).unwrap();
                i += 1;
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(port, "/metrics").is_none_or(|b| !b.contains("node_textfile_scrape_error")) {
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bad = Vec::new();
    for n in 0..1000 {
        let body = http_get(port, "/metrics").expect("scrape");
        let series = body
            .lines()
            .filter(|l| l.starts_with("cloudnx_backup_last_size_bytes{"))
            .count();
        if !body.contains("node_textfile_scrape_error 0") || series != 200 {
            bad.push(format!(
                "scrape {n}: scrape_error line {:?}, {series} series",
                body.lines()
                    .find(|l| l.starts_with("node_textfile_scrape_error"))
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let _ = exporter.kill();
    let _ = exporter.wait();
    assert!(
        writes.load(Ordering::Relaxed) > 50,
        "the writer must really have rewritten the file during the scrapes"
    );
    assert!(
        bad.is_empty(),
        "{} torn or failed scrapes, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}
