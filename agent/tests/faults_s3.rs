//! Fault injection on S3: a proxy in front of moto answers chosen requests
//! with 500 InternalError, 503 SlowDown or a connection dropped mid-body.
//! Faults that clear within the client's retries are ridden through and the
//! backup is whole; faults that persist fail the job naming the step, abort
//! the multipart upload, write no manifest, keep the last good copy, and the
//! metrics say so per destination. The next clean run succeeds.

mod support;

use support::faults::{
    metric, open_multipart_uploads, s3_complete_stamps, sha256_hex, Fault, Rig, S3FaultProxy, S3Op,
    BUCKET,
};
use support::s3::Moto;

const STATUS: &str = "cloudnx_job_last_status{kind=\"backup\"}";
const S3_OK: &str =
    "cloudnx_backup_last_success_timestamp_seconds{database=\"app\",destination=\"s3\"}";
const LOCAL_OK: &str =
    "cloudnx_backup_last_success_timestamp_seconds{database=\"app\",destination=\"local\"}";

/// The newest complete backup on S3 is whole: its object matches the manifest
/// and gpg opens it to the plaintext the manifest names.
fn assert_newest_s3_backup_whole(rig: &Rig, moto: &Moto) -> String {
    let stamp = s3_complete_stamps(moto)
        .pop()
        .expect("a complete backup on S3");
    let dir = format!("test-host/postgres/app/{stamp}");
    let m: serde_json::Value =
        serde_json::from_slice(&moto.get(BUCKET, &format!("{dir}/manifest.json"))).unwrap();
    let object = moto.get(BUCKET, &format!("{dir}/app.dump.pgp"));
    assert_eq!(object.len() as u64, m["size_bytes"].as_u64().unwrap());
    assert_eq!(sha256_hex(&object), m["sha256"]);
    let file = rig.scratch.path("s3-object.pgp");
    std::fs::write(&file, &object).unwrap();
    assert_eq!(sha256_hex(&rig.gpg.decrypt(&file)), m["plaintext_sha256"]);
    stamp
}

fn setup() -> (Rig, Moto, S3FaultProxy, std::path::PathBuf) {
    let rig = Rig::new(80_000);
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let proxy = S3FaultProxy::start(moto.port);
    // Uncompressed: two 5 MiB parts, so "the second part" exists.
    let cfg = rig.config(Some(&proxy.endpoint()), "compression_level = 0");
    (rig, moto, proxy, cfg)
}

#[test]
fn s3_faults_that_clear_within_the_retries_are_ridden_through_and_the_backup_is_whole() {
    let (rig, moto, proxy, cfg) = setup();
    let cases = [
        (S3Op::CreateMultipart, 1, 2, Fault::SlowDown),
        (S3Op::UploadPart, 2, 1, Fault::DropMidBody),
        (S3Op::UploadPart, 1, 2, Fault::SlowDown),
        (S3Op::Complete, 1, 1, Fault::InternalError),
        (S3Op::Head, 1, 2, Fault::InternalError),
        (S3Op::ManifestPut, 1, 1, Fault::DropMidBody),
    ];
    let mut before = 0;
    for (op, first, count, fault) in cases {
        proxy.fault(op, first, count, fault);
        let out = support::agent(&cfg, &["backup"]);
        let case = format!("{fault:?} on {op:?} #{first}..+{count}");
        assert!(out.status.success(), "{case}: {}", support::text(&out));
        assert_eq!(proxy.injected(), count, "{case}: the fault was injected");
        let stamps = s3_complete_stamps(&moto);
        assert_eq!(stamps.len(), before + 1, "{case}: one new backup");
        before = stamps.len();
        assert_newest_s3_backup_whole(&rig, &moto);
        assert_eq!(
            open_multipart_uploads(&moto),
            Vec::<String>::new(),
            "{case}"
        );
        assert_eq!(metric(&rig.prom(), STATUS), Some(1.0), "{case}");
    }

    // A server without ListMultipartUploads (s3s-fs, some S3-compatible
    // stores) answers 501 every time: the stale-upload cleanup is skipped
    // with a warning naming the lifecycle rule, asked once (501 is not
    // retried), and the backup still succeeds.
    proxy.fault(S3Op::ListMultipartUploads, 1, 100, Fault::NotImplemented);
    let out = support::agent(&cfg, &["backup"]);
    let text = support::text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(proxy.injected(), 1, "501 was asked once, not retried");
    assert!(text.contains("AbortIncompleteMultipartUpload"), "{text}");
    assert_eq!(s3_complete_stamps(&moto).len(), before + 1);
    assert_newest_s3_backup_whole(&rig, &moto);
    assert_eq!(metric(&rig.prom(), STATUS), Some(1.0));
}

#[test]
fn s3_faults_that_persist_fail_precisely_abort_the_upload_and_keep_the_last_good_copy() {
    let (rig, moto, proxy, cfg) = setup();
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let good = assert_newest_s3_backup_whole(&rig, &moto);
    let good_ts = metric(&rig.prom(), S3_OK).expect("s3 success timestamp");

    let cases = [
        (S3Op::UploadPart, Fault::InternalError, "uploading part "),
        (S3Op::UploadPart, Fault::DropMidBody, "uploading part "),
        (
            S3Op::Complete,
            Fault::SlowDown,
            "completing the multipart upload",
        ),
        // Every HEAD failing also fails reserving the stamp (its marker is
        // looked at first): nothing is written there, rather than an object
        // without our marker that would outlive the failure by a day.
        (S3Op::Head, Fault::InternalError, "reserving stamp "),
        (S3Op::ManifestPut, Fault::SlowDown, "writing the manifest"),
    ];
    for (op, fault, step) in cases {
        proxy.fault(op, 1, 1000, fault);
        let local_before = metric(&rig.prom(), LOCAL_OK).unwrap();
        let out = support::agent(&cfg, &["backup"]);
        let case = format!("{fault:?} on every {op:?}");
        let text = support::text(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {text}");
        let error = text
            .lines()
            .find(|l| l.contains("app to s3:"))
            .unwrap_or_else(|| {
                panic!("{case}: the error names the database and destination: {text}")
            });
        assert!(
            error.contains(step),
            "{case}: names the step {step:?}: {error}"
        );
        let why = match fault {
            // A HEAD answer has no body: only the status names the cause.
            Fault::InternalError => "HTTP 500",
            Fault::SlowDown => "SlowDown",
            Fault::DropMidBody => "unreachable",
            Fault::NotImplemented => "HTTP 501",
            other => panic!("{other:?} is not a case of this test"),
        };
        assert!(
            error.contains(why),
            "{case}: names the cause {why:?}: {error}"
        );

        assert_eq!(
            open_multipart_uploads(&moto),
            Vec::<String>::new(),
            "{case}: aborted"
        );
        assert_eq!(
            s3_complete_stamps(&moto),
            vec![good.clone()],
            "{case}: no new manifest, the good one kept"
        );
        let prom = rig.prom();
        assert_eq!(metric(&prom, STATUS), Some(0.0), "{case}: the job failed");
        assert_eq!(
            metric(&prom, S3_OK),
            Some(good_ts),
            "{case}: no s3 success claimed"
        );
        assert!(
            metric(&prom, LOCAL_OK).unwrap() > local_before,
            "{case}: the filesystem copy succeeded and says so"
        );
        // One second between runs: the stamps of the next run differ.
        std::thread::sleep(std::time::Duration::from_millis(1000));
    }

    proxy.clear();
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let newest = assert_newest_s3_backup_whole(&rig, &moto);
    assert_ne!(newest, good);
    // The failed runs' objects without manifest were cleaned.
    let complete = s3_complete_stamps(&moto);
    let keys = moto.keys(BUCKET);
    for k in &keys {
        assert!(
            complete.iter().any(|s| k.contains(s.as_str())),
            "leftover {k} among {keys:#?}"
        );
    }
    let prom = rig.prom();
    assert_eq!(metric(&prom, STATUS), Some(1.0));
    assert!(metric(&prom, S3_OK).unwrap() > good_ts);
}
