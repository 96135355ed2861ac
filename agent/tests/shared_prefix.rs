//! Two writers on one prefix (issue 23): agents with their own state but the
//! same host_id (a copied configuration, a cloned VM) backing up at once to
//! the same destinations. Every manifest must describe the bytes its own run
//! wrote, no run may delete or abort another's upload, and the sharing is
//! reported.

mod support;

use serde_json::Value;
use support::faults::{sha256_hex, Rig, BUCKET};
use support::s3::Moto;

#[test]
fn ten_agents_on_one_prefix_write_only_truthful_manifests_and_are_reported() {
    let rig = Rig::new(20_000);
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let base = rig.config(Some(&moto.endpoint()), "retention_days = 14");
    let text = std::fs::read_to_string(&base).unwrap();
    // Ten agents: the same configuration but each its own state_dir.
    let configs: Vec<std::path::PathBuf> = (0..10)
        .map(|i| {
            let state = rig.scratch.path(&format!("state{i}"));
            let p = rig.scratch.path(&format!("agent{i}.toml"));
            let t = text.replace(
                &format!("state_dir = \"{}\"", rig.scratch.path("state").display()),
                &format!("state_dir = \"{}\"", state.display()),
            );
            let t = t.replace(
                &format!("{}/audit", rig.scratch.path("state").display()),
                &format!("{}/audit", state.display()),
            );
            std::fs::write(&p, t).unwrap();
            p
        })
        .collect();
    let runs: Vec<_> = configs
        .iter()
        .map(|c| {
            std::process::Command::new(support::agent_bin())
                .arg("--config")
                .arg(c)
                .args(["--json", "backup"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = runs
        .into_iter()
        .map(|r| r.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", support::text(o));
    }
    // Every complete backup on both destinations: manifest == bytes, one writer each.
    let stamps = rig.complete_stamps();
    assert_eq!(stamps.len(), 10, "one backup per run: {stamps:?}");
    assert_eq!(rig.assert_complete_backups_whole(), 10);
    let keys = moto.keys(BUCKET);
    let mut writers = std::collections::BTreeSet::new();
    for stamp in &stamps {
        let dir = format!("test-host/postgres/app/{stamp}");
        let m: Value =
            serde_json::from_slice(&moto.get(BUCKET, &format!("{dir}/manifest.json"))).unwrap();
        let obj = moto.get(BUCKET, &format!("{dir}/app.dump.pgp"));
        assert_eq!(sha256_hex(&obj), m["sha256"], "{stamp} on S3");
        writers.insert(m["writer"].as_str().unwrap().to_owned());
    }
    assert_eq!(writers.len(), 10, "each run wrote its own stamps");
    assert!(keys.iter().all(|k| !k.contains("partial")), "{keys:?}");
    // At least one run met another agent's stamp and said so.
    let reported = outs
        .iter()
        .filter(|o| {
            let r: Value = serde_json::from_slice(&o.stdout).unwrap();
            r["result"]["other_writers"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        })
        .count();
    assert!(reported > 0, "no run reported the other agents");
}

#[test]
fn another_writers_upload_in_flight_is_left_alone_and_the_sharing_is_reported() {
    let rig = Rig::new(2_000);
    let cfg = rig.config(None, "");
    let app = rig.fs().join("test-host/postgres/app");
    // Another agent's backup in flight (an hour old) and a dead one (a year old).
    let recent = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    for stamp in [recent.as_str(), "20251201T000000Z"] {
        std::fs::create_dir_all(app.join(stamp)).unwrap();
        std::fs::write(app.join(stamp).join(".writer"), "0123456789abcdef backup-x").unwrap();
        std::fs::write(
            app.join(stamp).join(".app.dump.pgp.partial-1234"),
            "in flight",
        )
        .unwrap();
    }
    let out = support::agent(&cfg, &["--json", "backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["result"]["other_writers"]["local"][0], "0123456789abcdef",
        "{r:#}"
    );
    assert!(
        app.join(&recent)
            .join(".app.dump.pgp.partial-1234")
            .exists(),
        "a live upload was deleted"
    );
    assert!(!app.join("20251201T000000Z").exists(), "a dead one stays");
    assert!(
        rig.prom()
            .contains("cloudnx_backup_shared_prefix{destination=\"local\"} 1"),
        "{}",
        rig.prom()
    );
    // Our own killed run's leftovers go at once.
    let mine = std::fs::read_to_string(rig.scratch.path("state/writer-id")).unwrap();
    std::fs::create_dir_all(app.join("20261201T000000Z")).unwrap();
    std::fs::write(
        app.join("20261201T000000Z/.writer"),
        format!("{mine} backup-y"),
    )
    .unwrap();
    std::fs::write(app.join("20261201T000000Z/.app.dump.pgp.partial-9"), "x").unwrap();
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(!app.join("20261201T000000Z").exists());
}
