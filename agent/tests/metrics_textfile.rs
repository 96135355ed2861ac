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
    let port = free_port();
    let mut exporter = Command::new(ne)
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!(
            "--collector.textfile.directory={}",
            s.path("metrics").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
