//! End to end: `cloudnx-agent snapshot` against the Proxmox VE API simulator
//! (tests/pve-simulator, a separate Python peer behind verified TLS).

mod support;

use serde_json::{json, Value};
use support::pve::{PveSim, TOKEN_SECRET};
use support::{agent, text, Scratch};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One of ours, `days` old (name stamp and snaptime agree).
fn ours(days: i64) -> Value {
    let t = now() - days * DAY;
    let stamp = chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y%m%d%H%M%S");
    json!({"name": format!("cnx-{stamp}"), "snaptime": t,
           "description": "cloudnx-agent: host=old-host job=snapshot-0000\nTaken by cloudnx-agent"})
}

fn foreign(name: &str, days: i64, desc: &str) -> Value {
    json!({"name": name, "snaptime": now() - days * DAY, "description": desc})
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn job(scratch: &Scratch, sim: &PveSim, extra: &str) -> (std::process::Output, Value) {
    let secret = scratch.secret("secrets/pve-token", &format!("{TOKEN_SECRET}\n"));
    let cfg = scratch.config(&sim.section(&secret, extra));
    let out = agent(&cfg, &["--json", "snapshot"]);
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, rec)
}

fn guest(rec: &Value, vmid: u64) -> &Value {
    rec["result"]["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == vmid)
        .unwrap_or_else(|| panic!("guest {vmid} not in result: {rec:#}"))
}

fn audit_actions(scratch: &Scratch, action: &str) -> Vec<Value> {
    std::fs::read_to_string(scratch.path("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == action)
        .collect()
}

#[test]
fn twenty_guest_node_gets_the_right_outcome_for_each_guest_and_prunes_only_its_own() {
    let scratch = Scratch::new();
    let old = [ours(10), ours(9), ours(8)];
    let recent = ours(2);
    let (old101, old107, moved) = (ours(30), ours(9), ours(20));
    let lookalike = foreign("cnx-20200101000000", 400, "made by hand, same prefix");
    let mut guests = vec![
        json!({"vmid": 100, "type": "qemu", "name": "web", "snapshots": [
            old[0], old[1], old[2], recent, foreign("before-upgrade", 60, "admin"), lookalike]}),
        json!({"vmid": 101, "type": "lxc", "name": "dns", "snapshots": [old101]}),
        json!({"vmid": 102, "type": "qemu", "name": "tmpl", "template": 1, "status": "stopped"}),
        json!({"vmid": 103, "type": "qemu", "name": "backing-up", "lock": "backup", "lock_seconds_after_first_attempt": 1.5}),
        json!({"vmid": 104, "type": "qemu", "name": "stuck", "lock": "backup"}),
        json!({"vmid": 105, "type": "qemu", "name": "nfs-raw", "snapshot_feature": false}),
        json!({"vmid": 106, "type": "qemu", "name": "no-agent",
               "freeze_warning": "guest-fsfreeze-freeze problems - VM 106 qga command 'guest-fsfreeze-freeze' failed - got timeout"}),
        json!({"vmid": 107, "type": "lxc", "name": "replicated", "snapshots": [old107],
               "replicated_snapshots": [old107["name"]]}),
        json!({"vmid": 108, "type": "qemu", "name": "half", "snapshots": [
            json!({"name": "manual-half", "snaptime": now() - 3600, "description": "", "snapstate": "prepare"})]}),
        json!({"vmid": 109, "type": "lxc", "name": "off", "status": "stopped"}),
    ];
    for vmid in 110..120 {
        let t = if vmid % 2 == 0 { "qemu" } else { "lxc" };
        guests.push(json!({"vmid": vmid, "type": t, "name": format!("app{vmid}")}));
    }
    // Migrated to the other node: its agent's business, old snapshots and all.
    guests.push(
        json!({"vmid": 200, "type": "qemu", "node": "pve2", "name": "moved", "snapshots": [moved]}),
    );
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "nodes": ["pve1", "pve2"], "task_seconds": 0.3, "guests": guests}),
    );
    let before = sim.stats();
    let (out, rec) = job(
        &scratch,
        &sim,
        "concurrency = 2\nlock_retry_seconds = 12\nretention_days = 7",
    );
    let stats = sim.stats();
    assert_eq!(
        out.status.code(),
        Some(0),
        "locked/unsupported/degraded do not fail the job: {}",
        text(&out)
    );
    assert_eq!(rec["state"], "succeeded", "{rec:#}");

    let result = |vmid: u64| guest(&rec, vmid)["result"].as_str().unwrap().to_owned();
    for vmid in [
        100, 101, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119,
    ] {
        assert_eq!(result(vmid), "ok", "{vmid}: {:#}", guest(&rec, vmid));
    }
    assert_eq!(result(103), "ok", "unlocked while we retried");
    assert!(guest(&rec, 103)["attempts"].as_u64().unwrap() > 1);
    assert_eq!(result(104), "locked");
    assert!(guest(&rec, 104)["message"]
        .as_str()
        .unwrap()
        .contains("locked (backup)"));
    assert_eq!(result(105), "unsupported");
    assert_eq!(result(106), "degraded");
    assert!(
        guest(&rec, 106)["log_tail"]
            .to_string()
            .contains("guest-fsfreeze-freeze"),
        "{:#}",
        guest(&rec, 106)
    );
    assert_eq!(guest(&rec, 108)["leftovers"][0]["snapstate"], "prepare");
    let skipped = rec["result"]["skipped"].to_string();
    assert!(
        skipped.contains("102") && skipped.contains("template"),
        "{skipped}"
    );
    assert!(rec["result"]["guests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["vmid"] != 200 && g["vmid"] != 102));

    // Every create: vmstate=0, our mark, one name for the run; templates/other node never.
    let created: Vec<u64> = stats["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["vmid"].as_u64().unwrap())
        .collect();
    let mut want: Vec<u64> = vec![100, 101, 103, 106, 107, 108, 109];
    want.extend(110..120);
    let mut got = created.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    let snapname = rec["result"]["snapshot"].as_str().unwrap();
    for c in stats["created"].as_array().unwrap() {
        assert_eq!(c["vmstate"], 0);
        assert_eq!(c["name"], snapname);
        assert!(c["description"]
            .as_str()
            .unwrap()
            .starts_with("cloudnx-agent: host=test-host job=snapshot-"));
    }

    // Retention: exactly our old ones on 100 and 101; 107's refused by replication is reported.
    let mut deleted: Vec<(u64, String)> = stats["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["vmid"].as_u64().unwrap(),
                d["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    deleted.sort();
    let mut want_deleted: Vec<(u64, String)> = old
        .iter()
        .map(|s| (100, s["name"].as_str().unwrap().to_owned()))
        .collect();
    want_deleted.push((101, old101["name"].as_str().unwrap().to_owned()));
    want_deleted.sort();
    assert_eq!(deleted, want_deleted);
    let snaps = |vmid: &str| -> Vec<String> {
        stats["snapshots"][vmid]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut v100 = snaps("100");
    v100.sort();
    let mut want100 = vec![
        "before-upgrade".to_owned(),
        "cnx-20200101000000".to_owned(),
        recent["name"].as_str().unwrap().to_owned(),
        snapname.to_owned(),
    ];
    want100.sort();
    assert_eq!(
        v100, want100,
        "foreign snapshots untouched, newest of ours kept"
    );
    assert_eq!(guest(&rec, 100)["retained"], 2);
    assert!(snaps("107").contains(&old107["name"].as_str().unwrap().to_owned()));
    assert!(guest(&rec, 107)["retention_skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("needed by replication"));
    assert_eq!(
        snaps("200"),
        names(&json!([moved])),
        "other node's guest untouched"
    );
    assert_eq!(before["snapshots"]["200"], stats["snapshots"]["200"]);

    // Concurrency honoured, and really concurrent.
    let max = stats["max_in_flight"].as_u64().unwrap();
    assert_eq!(
        max, 2,
        "max tasks in flight must be the concurrency (2): never more, and really concurrent"
    );

    // Audit: one record per confirmed create and delete.
    assert_eq!(audit_actions(&scratch, "snapshot.create").len(), 17);
    let dels = audit_actions(&scratch, "snapshot.delete");
    assert_eq!(dels.len(), 4);
    assert!(dels
        .iter()
        .any(|d| d["detail"]["vmid"] == 101 && d["detail"]["type"] == "lxc"));

    // Metrics (SPEC §5 + per-guest result).
    let prom = scratch.prom();
    for line in [
        "cloudnx_snapshot_last_result{result=\"locked\",vmid=\"104\"} 1",
        "cloudnx_snapshot_last_result{result=\"ok\",vmid=\"104\"} 0",
        "cloudnx_snapshot_last_result{result=\"unsupported\",vmid=\"105\"} 1",
        "cloudnx_snapshot_last_result{result=\"degraded\",vmid=\"106\"} 1",
        "cloudnx_snapshot_last_result{result=\"ok\",vmid=\"103\"} 1",
        "cloudnx_snapshot_retained{vmid=\"100\"} 2",
        "cloudnx_snapshot_retained{vmid=\"101\"} 1",
        "cloudnx_job_last_status{kind=\"snapshot\"} 1",
    ] {
        assert!(prom.contains(line), "missing {line} in\n{prom}");
    }
    assert!(
        prom.contains("cloudnx_snapshot_last_success_timestamp_seconds{type=\"lxc\",vmid=\"101\"}"),
        "{prom}"
    );
    assert!(
        !prom.contains(
            "cloudnx_snapshot_last_success_timestamp_seconds{type=\"qemu\",vmid=\"104\"}"
        ),
        "{prom}"
    );
}

#[test]
fn a_guest_whose_snapshot_task_fails_makes_the_job_exit_1_with_the_task_log() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "task_seconds": 0.1, "guests": [
            {"vmid": 100, "type": "qemu", "snapshots": [ours(30)]},
            {"vmid": 101, "type": "qemu", "snapshots": [ours(30)],
             "create_error": "zfs error: cannot create snapshot 'rpool/data/vm-101-disk-0@x': out of space"},
        ]}),
    );
    let (out, rec) = job(&scratch, &sim, "concurrency = 1");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("VM 101") && err.contains("out of space") && err.contains("TASK ERROR"),
        "{err}"
    );
    assert_eq!(guest(&rec, 100)["result"], "ok");
    assert_eq!(guest(&rec, 101)["result"], "failed");
    let stats = sim.stats();
    // Retention only after a successful create: 101's old snapshot stays.
    assert_eq!(stats["deleted"].as_array().unwrap().len(), 1);
    assert_eq!(stats["deleted"][0]["vmid"], 100);
    assert_eq!(
        stats["max_in_flight"], 1,
        "concurrency = 1 means one task at a time"
    );
    assert!(scratch
        .prom()
        .contains("cloudnx_snapshot_last_result{result=\"failed\",vmid=\"101\"} 1"));
}

#[test]
fn bad_token_secret_fails_with_a_clear_401_message_and_touches_nothing() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "token": {"id": "cloudnx@pve!agent", "secret": "another-secret"},
        "guests": [{"vmid": 100}]}),
    );
    let (out, _) = job(&scratch, &sim, "");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("HTTP 401 invalid token value!"), "{t}");
    assert!(
        t.contains("cloudnx@pve!agent") && t.contains("secrets/pve-token"),
        "names the token and secret file: {t}"
    );
    assert!(!t.contains(TOKEN_SECRET), "never prints the secret: {t}");
    assert!(sim.stats()["created"].as_array().unwrap().is_empty());
}

#[test]
fn missing_snapshot_privilege_is_named_in_the_failure() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1",
        "privileges": {"*": ["VM.Audit", "VM.Snapshot"], "101": ["VM.Audit"]},
        "guests": [{"vmid": 100}, {"vmid": 101, "name": "db"}]}),
    );
    let (out, rec) = job(&scratch, &sim, "");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("HTTP 403 Permission check failed (/vms/101, VM.Snapshot)"),
        "{t}"
    );
    assert!(
        t.contains("grant VM.Snapshot on /vms/101 to cloudnx@pve!agent"),
        "{t}"
    );
    assert_eq!(guest(&rec, 100)["result"], "ok");
}

#[test]
fn included_guest_hidden_by_missing_audit_privilege_fails_loudly() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1",
        "privileges": {"*": ["VM.Audit", "VM.Snapshot"], "105": []},
        "guests": [{"vmid": 100}, {"vmid": 105}]}),
    );
    // Without include, a guest the token cannot see is simply not there (as in Proxmox).
    let (out, rec) = job(&scratch, &sim, "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rec["result"]["guests"].as_array().unwrap().len(), 1);
    // Named explicitly, it is a failure that says which privilege to grant.
    let (out, _) = job(&scratch, &sim, "include = [100, 105]");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("grant VM.Audit") && t.contains("/vms/105"),
        "{t}"
    );
}

#[test]
fn api_certificate_from_another_ca_is_refused() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "guests": [{"vmid": 100}]}),
    );
    support::pve::make_certs(&scratch.path("other"), "someone-else");
    let secret = scratch.secret("secrets/pve-token", TOKEN_SECRET);
    let body = sim.section(&secret, "").replace(
        &sim.ca.display().to_string(),
        &scratch.path("other/ca.pem").display().to_string(),
    );
    let out = agent(&scratch.config(&body), &["snapshot"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("ca_file"), "{t}");
    assert!(
        sim.stats()["requests"].as_array().unwrap().is_empty(),
        "no request got through"
    );
}

#[test]
fn wrong_node_name_is_reported_with_the_cluster_nodes() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "nodes": ["pve1", "pve2"], "guests": [{"vmid": 100}]}),
    );
    let secret = scratch.secret("secrets/pve-token", TOKEN_SECRET);
    let body = sim
        .section(&secret, "")
        .replace("node = \"pve1\"", "node = \"pve9\"");
    let out = agent(&scratch.config(&body), &["snapshot"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("\"pve9\" is not one of [\"pve1\", \"pve2\"]"),
        "{t}"
    );
}

#[test]
fn plain_http_api_url_is_a_configuration_error() {
    let scratch = Scratch::new();
    let secret = scratch.secret("secrets/pve-token", TOKEN_SECRET);
    let ca = scratch.path("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let cfg = scratch.config(&format!(
        "[snapshots]\napi_url = \"http://127.0.0.1:8006/api2/json\"\napi_token_id = \"cloudnx@pve!agent\"\napi_token_secret_file = \"{}\"\nca_file = \"{}\"\n",
        secret.display(),
        ca.display()
    ));
    let out = agent(&cfg, &["check-config"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("agent.toml:") && t.contains("is not an https:// URL"),
        "{t}"
    );
}

#[test]
fn create_task_outliving_its_deadline_fails_the_guest_and_says_so() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "task_seconds": 8, "guests": [{"vmid": 100}]}),
    );
    let started = std::time::Instant::now();
    let (out, rec) = job(&scratch, &sim, "create_timeout_seconds = 1");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "did not wait for the task"
    );
    let msg = guest(&rec, 100)["message"].as_str().unwrap();
    assert!(
        msg.contains("still running after 1 s") && msg.contains("create_timeout_seconds"),
        "{msg}"
    );
    assert!(sim.stats()["deleted"].as_array().unwrap().is_empty());
}

#[test]
fn sigterm_stops_the_run_at_the_next_safe_point_without_starting_new_snapshots() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "task_seconds": 30, "guests": [{"vmid": 100}, {"vmid": 101}, {"vmid": 102}]}),
    );
    let secret = scratch.secret("secrets/pve-token", TOKEN_SECRET);
    let cfg = scratch.config(&sim.section(&secret, "concurrency = 1"));
    let child = std::process::Command::new(support::agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("snapshot")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.stats()["created"].as_array().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot was started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopped = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        stopped.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("cancelled"), "{t}");
    assert_eq!(
        sim.stats()["created"].as_array().unwrap().len(),
        1,
        "no new snapshot after SIGTERM"
    );
}

#[test]
fn brief_task_status_errors_are_ridden_out() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "task_seconds": 0.2, "status_blips": 2, "guests": [{"vmid": 100}]}),
    );
    let (out, rec) = job(&scratch, &sim, "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(guest(&rec, 100)["result"], "ok");
    let polls = sim.stats()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/status"))
        .count();
    assert!(
        polls >= 3,
        "the two failed polls were retried ({polls} polls)"
    );
}

#[test]
fn a_legal_hold_keeps_expired_snapshots_and_a_guest_gone_from_the_node_loses_its_series() {
    let scratch = Scratch::new();
    let old = [ours(10), ours(9)];
    let scenario = |node_of_101: &str| {
        json!({"node": "pve1", "nodes": ["pve1", "pve2"], "task_seconds": 0.1, "guests": [
            json!({"vmid": 100, "type": "qemu", "name": "web", "snapshots": [old[0], old[1]]}),
            json!({"vmid": 101, "type": "lxc", "name": "dns", "node": node_of_101}),
        ]})
    };
    let d1 = scratch.path("sim1");
    std::fs::create_dir_all(&d1).unwrap();
    let sim = PveSim::start(&d1, scenario("pve1"));
    let (out, _) = job(&scratch, &sim, "retention_days = 7\nkeep_min = 1");
    assert!(out.status.success(), "{}", text(&out));
    let prom = scratch.prom();
    assert!(
        prom.contains("cloudnx_snapshot_last_success_timestamp_seconds{type=\"lxc\",vmid=\"101\"}"),
        "{prom}"
    );
    drop(sim);

    // 101 migrated to pve2; a legal hold is set.
    let cfg = scratch.path("agent.toml");
    let set = agent(&cfg, &["hold", "set", "--reason", "case 7"]);
    assert!(set.status.success(), "{}", text(&set));
    let deleted_before = audit_actions(&scratch, "snapshot.delete").len();
    let d2 = scratch.path("sim2");
    std::fs::create_dir_all(&d2).unwrap();
    let sim = PveSim::start(&d2, scenario("pve2"));
    let (out, rec) = job(&scratch, &sim, "retention_days = 7\nkeep_min = 1");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        sim.stats()["deleted"].as_array().is_none_or(Vec::is_empty),
        "{}",
        sim.stats()
    );
    assert_eq!(
        audit_actions(&scratch, "snapshot.delete").len(),
        deleted_before,
        "nothing deleted under the hold"
    );
    let kept = &guest(&rec, 100)["retention_skipped"];
    assert_eq!(kept.as_array().map(Vec::len), Some(2), "{rec:#}");
    assert!(
        kept.as_array()
            .unwrap()
            .iter()
            .all(|k| k["reason"] == "legal hold"),
        "{rec:#}"
    );
    let prom = scratch.prom();
    assert!(
        !prom.contains("vmid=\"101\""),
        "a guest gone from this node loses its series: {prom}"
    );
    assert!(prom.contains("vmid=\"100\""), "{prom}");
    assert!(prom.contains("cloudnx_legal_hold 1"), "{prom}");
}
