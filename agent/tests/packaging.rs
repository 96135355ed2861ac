//! The Debian package, the systemd units, the alert rules and the dashboard,
//! checked with the tools operators and CI use on them: systemd-analyze,
//! promtool, cargo-deb, dpkg-deb and lintian. Installing, upgrading, purging
//! and booting the package under real systemd is scripts/test-vm.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const UNITS: [&str; 3] = [
    "cloudnx-agent.service",
    "cloudnx-agent-luks-helper.socket",
    "cloudnx-agent-luks-helper@.service",
];

/// The man page rendered from the binary's clap definition, gzipped, in `dir/man8`.
fn render_man_and_completions(out: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (ok, _, err) = run(Command::new(&cargo)
        .current_dir(repo())
        .args([
            "run",
            "--quiet",
            "-p",
            "cloudnx-agent",
            "--example",
            "gen-man",
            "--",
        ])
        .arg(out));
    assert!(ok, "examples/gen-man failed: {err}");
    let (ok, _, err) = run(Command::new("gzip")
        .arg("-9nf")
        .arg(out.join("cloudnx-agent.8")));
    assert!(ok, "gzip of the man page failed: {err}");
}

#[test]
fn systemd_units_verify_without_any_output() {
    let analyze = support::require("systemd-analyze");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // verify resolves ExecStart= binaries and unit dependencies inside --root.
    let (ok, _, err) = run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd").tap_mkdir()));
    assert!(ok, "{err}");
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy(support::agent_bin(), r.join("usr/bin/cloudnx-agent")).unwrap();
    std::fs::create_dir_all(r.join("usr/libexec/cloudnx-agent")).unwrap();
    std::fs::copy(
        support::helper_bin(),
        r.join("usr/libexec/cloudnx-agent/cloudnx-luks-helper"),
    )
    .unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    for u in UNITS {
        std::fs::copy(
            repo().join("systemd").join(u),
            r.join("usr/lib/systemd/system").join(u),
        )
        .unwrap();
    }
    // Documentation=man:cloudnx-agent(8) is checked with `man`: give it ours.
    let man = r.join("man");
    render_man_and_completions(&man);
    std::fs::create_dir_all(man.join("man8")).unwrap();
    std::fs::rename(
        man.join("cloudnx-agent.8.gz"),
        man.join("man8/cloudnx-agent.8.gz"),
    )
    .unwrap();

    let (ok, out, err) = run(Command::new(analyze)
        .current_dir(r)
        .env("MANPATH", &man)
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args([
            "cloudnx-agent.service",
            "cloudnx-agent-luks-helper.socket",
            "cloudnx-agent-luks-helper@probe.service",
        ]));
    // verify only warns on unknown keys: any output at all is a failure.
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify is not silent:\n{out}{err}"
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// `systemd-analyze security --offline=true` overall exposure of a unit file.
fn exposure(unit: &str) -> f64 {
    let analyze = support::require("systemd-analyze");
    let (_, out, err) = run(Command::new(analyze)
        .current_dir(repo().join("systemd"))
        .args(["security", "--offline=true", "--no-pager", unit]));
    let line = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{out}{err}"));
    line.split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

#[test]
fn daemon_unit_exposure_is_at_most_2_5() {
    let e = exposure("cloudnx-agent.service");
    assert!(e <= 2.5, "cloudnx-agent.service exposure {e} > 2.5");
}

#[test]
fn privileged_helper_exposure_is_at_most_2_0() {
    // Root with CAP_SYS_ADMIN, but read-only, no network, device cgroup:
    // 1.5 is what it scores (docs/benchmarks.md); keep it from creeping up.
    let e = exposure("cloudnx-agent-luks-helper@.service");
    assert!(
        e <= 2.0,
        "cloudnx-agent-luks-helper@.service exposure {e} > 2.0"
    );
}

#[test]
fn daemon_unit_is_unprivileged_notify_with_watchdog_and_config_check() {
    let unit = read("systemd/cloudnx-agent.service");
    for line in [
        "Type=notify",
        "User=cloudnx-agent",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "ExecStartPre=/usr/bin/cloudnx-agent check-config",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    assert!(
        unit.lines().any(|l| l.starts_with("WatchdogSec=")),
        "no WatchdogSec"
    );
}

#[test]
fn every_relaxed_directive_is_justified_by_a_comment() {
    for u in UNITS {
        let text = read(&format!("systemd/{u}"));
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.ends_with("=no") {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "{u}: `{l}` relaxes hardening without a comment above it saying why"
                );
            }
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = support::require("promtool");
    let dir = repo().join("packaging/prometheus");
    let (ok, out, err) = run(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "cloudnx-agent.rules.yml",
    ]));
    assert!(ok, "promtool check rules:\n{out}{err}");
    let (ok, out, err) = run(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "cloudnx-agent.rules.test.yml",
    ]));
    assert!(ok, "promtool test rules:\n{out}{err}");
}

/// GitHub-style anchors of the markdown headings in `text`.
fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
                    ' ' => Some('-'),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_is_tested_and_has_a_severity_and_a_runbook_section_that_exists() {
    let rules = read("packaging/prometheus/cloudnx-agent.rules.yml");
    let tests = read("packaging/prometheus/cloudnx-agent.rules.test.yml");
    let ops = anchors(&read("docs/operations.md"));
    // One rule = the lines from one `- alert:` to the next.
    let blocks: Vec<&str> = rules.split("      - alert: ").skip(1).collect();
    assert!(blocks.len() >= 12, "only {} alerts", blocks.len());
    for b in blocks {
        let name = b.lines().next().unwrap().trim();
        assert!(
            b.contains("severity: page") || b.contains("severity: ticket"),
            "{name} has no severity label"
        );
        let anchor = b
            .split("operations.md#")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("{name} has no runbook_url into operations.md"));
        assert!(
            ops.iter().any(|a| a == anchor),
            "{name}: runbook section #{anchor} is not a heading of docs/operations.md"
        );
        // Tested both ways: an eval with no alerts expected and one with alerts.
        let evals: Vec<&str> = tests
            .split("      - eval_time: ")
            .filter(|e| e.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "{name} has no promtool test where it must not fire"
        );
        assert!(
            evals.iter().any(|e| e.contains("exp_labels:")),
            "{name} has no promtool test where it must fire"
        );
    }
}

/// The cloudnx_* metric names used in `text`.
fn cloudnx_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("cloudnx_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let before_ok = i == 0 || {
            let c = rest.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'/' || c == b'#' || c == b'-')
        };
        if before_ok {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_and_dashboard_use_only_metrics_the_agent_exports() {
    let known: Vec<&str> = cloudnx_agent::metrics::Family::ALL
        .iter()
        .map(|f| f.name())
        .collect();
    for file in [
        "packaging/prometheus/cloudnx-agent.rules.yml",
        "packaging/grafana/cloudnx-agent.json",
    ] {
        let used = cloudnx_metrics(&read(file));
        assert!(!used.is_empty(), "{file} uses no cloudnx metric");
        for m in used {
            // `cloudnx_agent.prom` is the textfile's name, not a metric.
            if m == "cloudnx_agent" {
                continue;
            }
            assert!(
                known.contains(&m.as_str()),
                "{file} uses {m}, which metrics.rs Family does not export"
            );
        }
    }
}

#[test]
fn dashboard_is_grafana_json_with_a_prometheus_datasource_variable() {
    let d: serde_json::Value = serde_json::from_str(&read("packaging/grafana/cloudnx-agent.json"))
        .expect("dashboard is not valid JSON");
    let vars = d["templating"]["list"]
        .as_array()
        .expect("no templating variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("no panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Backup age per database and destination",
        "Backup size per database",
        "Restore drill RTO",
        "Snapshot state per guest",
        "LUKS compliance per volume",
        "Outbox depth",
        "Updates pending by origin",
        "Reboot required per host",
    ] {
        assert!(
            titles.contains(&wanted),
            "dashboard lacks the panel {wanted:?}"
        );
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} not bound to the variable",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "panel {} has an empty query",
                p["title"]
            );
        }
    }
}

#[test]
fn purge_keeps_the_audit_log_checkpoints_and_keys_and_removes_the_rest() {
    // The real postrm, run with its absolute paths moved under a scratch root.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    let script = read("packaging/debian/postrm")
        .replace("/var/lib/", &format!("{r}/var/lib/"))
        .replace("/etc/cloudnx-agent", &format!("{r}/etc/cloudnx-agent"));
    let kept = [
        "var/lib/cloudnx-agent/audit.jsonl",
        "var/lib/cloudnx-agent/audit.jsonl.1",
        "var/lib/cloudnx-agent/audit.jsonl.checkpoints",
        "var/lib/cloudnx-agent/audit.jsonl.retained",
        "var/lib/cloudnx-agent/audit.jsonl.keys/0123456789abcdef.pem",
        "etc/cloudnx-agent/keys/audit.ed25519.pem",
    ];
    let gone = [
        "var/lib/cloudnx-agent/outbox.jsonl",
        "var/lib/cloudnx-agent/metrics-state.json",
        "var/lib/cloudnx-agent/audit-offhost/local.json",
        "var/lib/cloudnx-agent/drill-spool/x",
        "var/lib/prometheus/node-exporter/cloudnx_agent.prom",
    ];
    for f in kept.iter().chain(&gone) {
        let p = root.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    }
    let (ok, out, err) = run(Command::new("sh")
        .arg("-c")
        .arg(&script)
        .args(["postrm", "purge"]));
    assert!(ok, "postrm purge:\n{out}{err}");
    for f in kept {
        assert!(root.path().join(f).exists(), "purge removed {f}");
    }
    for f in gone {
        assert!(!root.path().join(f).exists(), "purge kept {f}");
    }
    assert!(!root
        .path()
        .join("var/lib/cloudnx-agent/drill-spool")
        .exists());
}

#[test]
fn deb_ships_binary_units_config_docs_and_is_lintian_clean() {
    support::require("cargo-deb");
    let lintian = support::require("lintian");
    support::require("dpkg-deb");
    // The package of this build's debug binary (the release one is built and
    // booted by scripts/test-vm); packaging is identical but for the profile.
    let target = support::agent_bin().parent().unwrap().to_path_buf();
    render_man_and_completions(&target.join("gen"));
    let out = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if target.ends_with("debug") {
        "dev"
    } else {
        "release"
    };
    let (ok, so, err) = run(Command::new(&cargo)
        .current_dir(repo())
        .args([
            "deb",
            "-p",
            "cloudnx-agent",
            "--no-build",
            "--dbgsym",
            "--profile",
            profile,
            "-o",
        ])
        .arg(out.path()));
    assert!(ok, "cargo deb failed:\n{so}{err}");
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote no .deb");

    let (_, control, _) = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    for field in [
        "Package: cloudnx-agent",
        "Section: admin",
        "Priority: optional",
    ] {
        assert!(
            control.lines().any(|l| l == field),
            "control lacks {field}:\n{control}"
        );
    }
    let depends = control
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .unwrap_or("");
    for d in ["postgresql-client-15", "systemd"] {
        assert!(depends.contains(d), "Depends lacks {d}: {depends}");
    }
    let (_, conffiles, _) = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles",
        deb.display()
    )));
    assert_eq!(conffiles.trim(), "/etc/cloudnx-agent/agent.toml");
    let (_, contents, _) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/cloudnx-agent",
        "./usr/libexec/cloudnx-agent/cloudnx-luks-helper",
        "./etc/cloudnx-agent/agent.toml",
        "./usr/lib/systemd/system/cloudnx-agent.service",
        "./usr/lib/systemd/system/cloudnx-agent-luks-helper.socket",
        "./usr/lib/systemd/system/cloudnx-agent-luks-helper@.service",
        "./usr/lib/sysusers.d/cloudnx-agent.conf",
        "./usr/share/man/man8/cloudnx-agent.8.gz",
        "./usr/share/bash-completion/completions/cloudnx-agent",
        "./usr/share/zsh/vendor-completions/_cloudnx-agent",
        "./usr/share/fish/vendor_completions.d/cloudnx-agent.fish",
        "./usr/share/doc/cloudnx-agent/copyright",
        "./usr/share/doc/cloudnx-agent/changelog.Debian.gz",
        "./usr/share/doc/cloudnx-agent/operations.md",
        "./usr/share/cloudnx-agent/prometheus/cloudnx-agent.rules.yml",
        "./usr/share/cloudnx-agent/grafana/cloudnx-agent.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "the .deb lacks {path}:\n{contents}"
        );
    }
    // Only the helper links libcryptsetup (and libcrypto, libdevmapper, …): the
    // daemon neither carries that code nor keeps those libraries resident.
    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    let needed = |bin: &str| {
        let (_, d, _) = run(Command::new("readelf")
            .arg("-dW")
            .arg(unpacked.path().join(bin)));
        d.lines()
            .filter(|l| l.contains("(NEEDED)"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let daemon = needed("usr/bin/cloudnx-agent");
    assert!(
        daemon.contains("libc.so.6") && !daemon.contains("libcryptsetup"),
        "cloudnx-agent's NEEDED:\n{daemon}"
    );
    let helper = needed("usr/libexec/cloudnx-agent/cloudnx-luks-helper");
    assert!(
        helper.contains("libcryptsetup.so.12"),
        "cloudnx-luks-helper's NEEDED:\n{helper}"
    );
    // Maintainer scripts go through deb-systemd-helper/invoke, never bare systemctl
    // (daemon-reload is what debhelper's own snippets do).
    let (_, scripts, _) = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./postinst ./postrm ./prerm",
        deb.display()
    )));
    for l in scripts.lines().filter(|l| l.contains("systemctl ")) {
        assert!(
            l.contains("systemctl --system daemon-reload"),
            "bare systemctl in a maintainer script: {l}"
        );
    }

    let (ok, so, err) = run(Command::new(lintian)
        .args(["--fail-on", "error,warning"])
        .arg(&deb));
    assert!(ok, "lintian --fail-on error,warning:\n{so}{err}");
}
