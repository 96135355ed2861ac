//! The daemon's checkpointer: seals new records on its interval, sends each
//! checkpoint off the host as an event, exports the audit metrics, and seals
//! once more on shutdown.

mod support;

use cloudnx_agent::audit::checkpoint::{self, Checkpoint};
use cloudnx_agent::outbox::Outbox;
use cloudnx_agent::runner::Runner;
use std::time::{Duration, Instant};
use support::audit::{mixed_entry, AuditScratch};

fn checkpoints(s: &AuditScratch) -> Vec<Checkpoint> {
    std::fs::read_to_string(s.checkpoints())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_records_are_sealed_sent_off_host_and_exported_as_metrics() {
    let s = AuditScratch::with("checkpoint_interval_seconds = 1\n");
    let runner = Runner::new(s.config_path.clone(), s.config.clone());
    for i in 1..=3 {
        runner.audit(mixed_entry(i)).await.unwrap();
    }
    let task = cloudnx_agent::daemon::spawn_checkpointer(runner.clone());
    wait_for("a checkpoint at seq 3", || {
        checkpoints(&s).last().is_some_and(|c| c.seq == 3)
    })
    .await;
    for i in 4..=6 {
        runner.audit(mixed_entry(i)).await.unwrap();
    }
    wait_for("a checkpoint at seq 6", || {
        checkpoints(&s).last().is_some_and(|c| c.seq == 6)
    })
    .await;
    let cps = checkpoints(&s);
    assert_eq!(cps[0].seq, 3, "the start-up pass seals what is there");
    assert!(
        cps.windows(2).all(|w| w[0].seq < w[1].seq),
        "a checkpoint only when there are new records: {cps:?}"
    );
    // The metrics follow the checkpoint (written just after it).
    wait_for("the audit metrics", || {
        s.scratch.prom().contains("cloudnx_audit_records_total 6\n")
    })
    .await;

    // Every checkpoint also went to the outbox, byte for byte the same fields.
    let events = Outbox::new(&s.config.state_dir).pending().unwrap();
    let sent: Vec<Checkpoint> = events
        .iter()
        .filter(|e| e.kind == "audit.checkpoint")
        .map(|e| serde_json::from_value(e.data.clone()).unwrap())
        .collect();
    assert_eq!(sent, cps);

    let prom = s.scratch.prom();
    assert!(prom.contains("cloudnx_audit_records_total 6\n"), "{prom}");
    assert!(
        prom.contains("# TYPE cloudnx_audit_records_total counter"),
        "{prom}"
    );
    let ts: f64 = prom
        .lines()
        .find_map(|l| l.strip_prefix("cloudnx_audit_last_checkpoint_timestamp_seconds "))
        .unwrap_or_else(|| panic!("{prom}"))
        .parse()
        .unwrap();
    let sealed = chrono::DateTime::parse_from_rfc3339(&cps[cps.len() - 1].ts)
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert!((ts - sealed).abs() < 0.001, "{ts} vs {sealed}");
    // The signing key's age (SPEC §10), under the kid its checkpoints carry
    // (audit_offhost checks that kid against openssl); its date the key file's.
    let kid = cps[cps.len() - 1]
        .kid
        .clone()
        .expect("a kid on the checkpoint");
    let made = std::fs::metadata(&s.config.audit.signing_key_file)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let line = format!("cloudnx_key_created_timestamp_seconds{{key=\"audit:{kid}\"}} {made}\n");
    assert!(prom.contains(&line), "{line} not in {prom}");

    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    runner.shutdown(Duration::from_secs(5)).await;
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_seals_the_records_appended_since_the_last_checkpoint() {
    // An interval far away: only the start-up pass and the shutdown pass seal.
    let s = AuditScratch::with("checkpoint_interval_seconds = 3600\n");
    let runner = Runner::new(s.config_path.clone(), s.config.clone());
    runner.audit(mixed_entry(1)).await.unwrap();
    let task = cloudnx_agent::daemon::spawn_checkpointer(runner.clone());
    wait_for("the start-up checkpoint", || checkpoints(&s).len() == 1).await;
    for i in 2..=4 {
        runner.audit(mixed_entry(i)).await.unwrap();
    }
    runner.shutdown(Duration::from_secs(5)).await;
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    let cps = checkpoints(&s);
    assert_eq!(cps.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 4]);
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("last checkpoint: seq 4 "), "{out}");
    assert!(!out.contains("unsealed"), "{out}");
}

#[test]
fn sealing_twice_without_new_records_writes_one_checkpoint() {
    let s = AuditScratch::new(1 << 20);
    s.log().append(mixed_entry(1)).unwrap();
    let a = checkpoint::seal(
        &s.log(),
        &s.config.audit.signing_key_file,
        &s.config.host_id,
    )
    .unwrap();
    let b = checkpoint::seal(
        &s.log(),
        &s.config.audit.signing_key_file,
        &s.config.host_id,
    )
    .unwrap();
    assert!(a.wrote && !b.wrote);
    assert_eq!(a.last, b.last);
    assert_eq!(checkpoints(&s).len(), 1);
    // An empty log has nothing to seal.
    let empty = AuditScratch::new(1 << 20);
    assert!(
        !checkpoint::seal(
            &empty.log(),
            &empty.config.audit.signing_key_file,
            &empty.config.host_id
        )
        .unwrap()
        .wrote
    );
}

fn lag(s: &AuditScratch) -> Option<f64> {
    s.scratch.prom().lines().find_map(|l| {
        l.strip_prefix("cloudnx_audit_offhost_lag_seconds{destination=\"local\"} ")
            .map(|v| v.parse().unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_ships_off_the_host_and_the_lag_grows_while_the_destination_is_down() {
    let s = AuditScratch::with_local_destination(
        "checkpoint_interval_seconds = 1\ndestinations = [\"local\"]\n",
    );
    let root = s.scratch.path("fs");
    let away = s.scratch.path("fs.away");
    std::fs::rename(&root, &away).unwrap();
    std::fs::write(&root, b"down").unwrap();
    let runner = Runner::new(s.config_path.clone(), s.config.clone());
    for i in 1..=3 {
        runner.audit(mixed_entry(i)).await.unwrap();
    }
    let task = cloudnx_agent::daemon::spawn_checkpointer(runner.clone());
    // Down: sealing and appending go on, the lag grows.
    wait_for("a lag of 2 s or more", || lag(&s).is_some_and(|l| l >= 2.0)).await;
    runner.audit(mixed_entry(4)).await.unwrap();
    wait_for("a checkpoint at seq 4", || {
        checkpoints(&s).last().is_some_and(|c| c.seq == 4)
    })
    .await;
    // Back: everything arrives and the lag is 0.
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&away, &root).unwrap();
    wait_for("the lag back at 0", || lag(&s) == Some(0.0)).await;
    let prog = cloudnx_agent::audit::offhost::progress(&s.config.state_dir, "local");
    assert_eq!(prog.seq, checkpoints(&s).last().unwrap().seq);
    let segs = std::fs::read_dir(root.join("test-host/audit/test-host/segments"))
        .unwrap()
        .count();
    assert_eq!(segs, checkpoints(&s).len());
    runner.shutdown(Duration::from_secs(5)).await;
    task.await.unwrap();
}
