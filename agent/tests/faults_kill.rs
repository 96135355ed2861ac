//! Fault injection: kill -9 of the agent at named fail points of a backup and
//! of a restore drill (built with `--features failpoints`; see
//! `fault_point!`). After each kill: nothing that looks complete is partial,
//! the last good copy is still there, the audit log verifies, and the next
//! run succeeds and cleans up (open multipart uploads, temp files, a drill's
//! still-running cluster and its plaintext spool).

mod support;

use support::faults::{metric, open_multipart_uploads, s3_complete_stamps, Rig, Running, BUCKET};
use support::s3::Moto;

/// Copy the complete backup `from` to an old stamp on both destinations, so
/// retention has an expired complete backup to delete.
fn plant_expired(rig: &Rig, moto: &Moto, from: &str, stamp: &str) {
    let src = rig.fs().join("test-host/postgres/app").join(from);
    let dst = rig.fs().join("test-host/postgres/app").join(stamp);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["app.dump.pgp", "manifest.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    moto.py(&format!(
        "for f in ['app.dump.pgp', 'manifest.json']:\n\
         \x20   s3.copy_object(Bucket='{BUCKET}', Key='test-host/postgres/app/{stamp}/' + f, CopySource={{'Bucket': '{BUCKET}', 'Key': 'test-host/postgres/app/{from}/' + f}})"
    ));
}

#[test]
fn kill_9_at_each_step_of_a_backup_leaves_nothing_partial_and_the_next_run_repairs() {
    let rig = Rig::new(80_000);
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    // Uncompressed: the dump is two 5 MiB parts, so a kill can land between them.
    let cfg = rig.config(
        Some(&moto.endpoint()),
        "compression_level = 0\nretention_days = 7\nkeep_min = 1",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let good = rig.complete_stamps();
    assert_eq!(good.len(), 1);
    assert_eq!(s3_complete_stamps(&moto), good);
    let old = "20200101T000000Z";
    plant_expired(&rig, &moto, &good[0], old);

    // (fail point, which hit of it to die at)
    let points = [
        ("backup::after_part", 1),
        ("backup::before_manifest", 1),
        ("backup::before_retention", 1),
        // The second delete: between the expired backup's manifest and its object.
        ("backup::retention_delete", 2),
    ];
    for (point, hit) in points {
        let spec = if hit == 1 {
            format!("{point}=sleep(60000)")
        } else {
            format!("{point}={}*off->sleep(60000)", hit - 1)
        };
        let mut agent = Running::start(&cfg, &["backup"], &spec);
        for _ in 0..hit {
            agent.wait_for(&format!("fail point {point} reached"), 90);
        }
        agent.kill9();

        // Every backup with a manifest is whole (size, SHA-256, gpg opens it).
        rig.assert_complete_backups_whole();
        assert!(
            rig.complete_stamps().contains(&good[0]),
            "the last good copy survives a kill at {point}: {:?}",
            rig.fs_files()
        );
        let keys = moto.keys(BUCKET);
        let s3_stamps = s3_complete_stamps(&moto);
        assert!(s3_stamps.contains(&good[0]), "{point}: {keys:?}");
        for s in &s3_stamps {
            assert!(
                keys.contains(&format!("test-host/postgres/app/{s}/app.dump.pgp")),
                "a manifest on S3 without its object after a kill at {point}: {keys:?}"
            );
        }
        if point == "backup::after_part" {
            assert!(
                !open_multipart_uploads(&moto).is_empty(),
                "a kill mid-upload leaves an open multipart upload (the case under test)"
            );
        }
        rig.assert_audit_verifies(&cfg);
    }

    // The next run succeeds and repairs: orphan uploads aborted (audited),
    // incomplete leftovers removed, the expired backup gone.
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(open_multipart_uploads(&moto), Vec::<String>::new());
    let complete = rig.complete_stamps();
    for f in rig.fs_files() {
        assert!(
            complete.iter().any(|s| f.contains(s.as_str())),
            "an incomplete leftover survived the next run: {f}"
        );
    }
    let keys = moto.keys(BUCKET);
    let s3_complete = s3_complete_stamps(&moto);
    for k in &keys {
        assert!(
            s3_complete.iter().any(|s| k.contains(s.as_str())),
            "an incomplete leftover on S3 survived the next run: {k}"
        );
    }
    assert!(!complete.contains(&old.to_owned()), "{complete:?}");
    assert!(complete.len() >= 2, "{complete:?}");
    assert_eq!(rig.assert_complete_backups_whole(), complete.len());
    let audit = std::fs::read_to_string(rig.scratch.path("state/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"backup.upload.abort\""),
        "the aborted upload is audited"
    );
    rig.assert_audit_verifies(&cfg);
    assert_eq!(
        metric(&rig.prom(), "cloudnx_job_last_status{kind=\"backup\"}"),
        Some(1.0)
    );
}

/// Whether a postmaster runs with its data under `dir`.
fn postmaster_under(dir: &std::path::Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains("bin/postgres") && c.contains(&dir)
        })
    })
}

#[test]
fn kill_9_during_a_drill_leaves_a_cluster_and_plaintext_the_next_drill_removes() {
    let rig = Rig::new(20_000);
    let cfg = rig.config(None, "");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let spool = rig.scratch.path("spool");

    for point in ["drill::after_decrypt", "drill::after_restore"] {
        let mut agent = Running::start(&cfg, &["restore-drill"], &format!("{point}=sleep(60000)"));
        agent.wait_for(&format!("fail point {point} reached"), 120);
        agent.kill9();
        let left: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "the killed drill's dir is there: {left:?}");
        if point == "drill::after_restore" {
            assert!(
                postmaster_under(&spool),
                "the killed drill's cluster still runs (the case under test)"
            );
        }

        let out = support::agent(&cfg, &["restore-drill"]);
        assert!(out.status.success(), "{point}: {}", support::text(&out));
        let left: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "after a kill at {point}: {left:?}");
        assert!(!postmaster_under(&spool), "after a kill at {point}");
        rig.assert_audit_verifies(&cfg);
    }
}
