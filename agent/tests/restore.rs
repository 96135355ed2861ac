//! The operator verbs of SPEC §9 end to end — `backups list`, `restore`
//! (into a live server and into a file), `status` — against real PostgreSQL,
//! a real S3 server (moto), a filesystem destination and real gpg.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::faults::{sha256_hex, Rig, BUCKET};
use support::s3::Moto;
use support::{agent, text};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// `cloudnx-agent restore …` with the rig's config; (exit code, output).
fn restore(cfg: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    let o = agent(cfg, &a);
    (o.status.code().unwrap_or(-1), text(&o))
}

fn count(rig: &Rig, db: &str) -> String {
    rig.pg
        .psql(db, "SELECT count(*) || ':' || coalesce(max(g), 0) FROM t")
        .trim()
        .to_owned()
}

fn db_exists(rig: &Rig, db: &str) -> bool {
    rig.pg
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .trim()
        == "1"
}

/// The object of a stamp on the filesystem destination.
fn fs_object(rig: &Rig, stamp: &str) -> PathBuf {
    rig.fs()
        .join("test-host/postgres/app")
        .join(stamp)
        .join("app.dump.pgp")
}

#[test]
fn two_backups_are_listed_and_each_restores_to_the_data_of_its_moment() {
    let rig = Rig::new(2000);
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let cfg = rig.config(Some(&moto.endpoint()), "");
    assert!(agent(&cfg, &["backup"]).status.success());
    rig.pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'x' FROM generate_series(2001, 2500) g",
    );
    // Stamps are to the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(agent(&cfg, &["backup"]).status.success());

    let listed = json(&agent(
        &cfg,
        &["--json", "backups", "list", "--database", "app"],
    ));
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 4, "two backups on two destinations: {listed:#}");
    for r in rows {
        for k in [
            "database",
            "destination",
            "host_id",
            "stamp",
            "key",
            "size_bytes",
            "sha256",
            "finished_at",
            "locked_until",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert_eq!(r["database"], "app");
        assert_eq!(r["host_id"], "test-host");
    }
    let newer = rows[0]["stamp"].as_str().unwrap().to_owned();
    let older = rows[3]["stamp"].as_str().unwrap().to_owned();
    assert!(newer > older, "newest first: {listed:#}");

    let target = rig.pg.conninfo();
    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--backup",
            &older,
            "--destination",
            "s3",
            "--target",
            &target,
            "--target-database",
            "app_old",
        ],
    );
    assert_eq!(rc, 0, "{t}");
    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "app_new",
            "--jobs",
            "2",
        ],
    );
    assert_eq!(rc, 0, "{t}");
    // The row counts, read from the encrypted manifest details, were compared.
    let o = agent(
        &cfg,
        &[
            "--json",
            "restore",
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "app_json",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["result"]["row_counts"]["checked"], true, "{}", text(&o));
    assert_eq!(count(&rig, "app_old"), "2000:2000");
    assert_eq!(count(&rig, "app_new"), "2500:2500");
    assert_eq!(count(&rig, "app"), "2500:2500", "the source is untouched");

    // The restore is a job: audited with who ran it, what and where.
    let audit = std::fs::read_to_string(rig.scratch.path("state/audit.jsonl")).unwrap();
    let begin: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "restore.begin")
        .collect();
    assert_eq!(begin.len(), 3);
    assert_eq!(begin[0]["detail"]["stamp"], older.as_str());
    assert_eq!(begin[0]["detail"]["target_database"], "app_old");
    assert_eq!(begin[0]["actor"], "cli:root");
    assert!(rig
        .prom()
        .contains("cloudnx_job_last_status{kind=\"restore\"} 1"));
    rig.assert_audit_verifies(&cfg);
}

#[test]
fn a_flipped_byte_fails_the_restore_naming_the_checksum_and_touches_nothing() {
    let rig = Rig::new(2000);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    let stamp = rig.complete_stamps().pop().unwrap();
    let obj = fs_object(&rig, &stamp);
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();
    let target = rig.pg.conninfo();

    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "fresh",
        ],
    );
    assert_eq!(rc, 1, "{t}");
    assert!(
        t.contains("checksum mismatch") && t.contains("SHA-256"),
        "{t}"
    );
    assert!(
        !db_exists(&rig, "fresh"),
        "the target database was created: {t}"
    );

    // --clean over an existing database: unchanged.
    rig.pg.psql("postgres", "CREATE DATABASE keep");
    rig.pg.psql("keep", "CREATE TABLE t AS SELECT 7 AS g");
    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "keep",
            "--clean",
        ],
    );
    assert_eq!(rc, 1, "{t}");
    assert_eq!(count(&rig, "keep"), "1:7");

    // --output: no file at all.
    let out = rig.scratch.path("out.dump");
    let (rc, t) = restore(
        &cfg,
        &["--database", "app", "--output", out.to_str().unwrap()],
    );
    assert_eq!(rc, 1, "{t}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(rig.scratch.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("out.dump"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[test]
fn a_non_empty_database_is_refused_untouched_unless_clean() {
    let rig = Rig::new(1500);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    rig.pg.psql("postgres", "CREATE DATABASE busy");
    rig.pg.psql(
        "busy",
        "CREATE TABLE t AS SELECT 1 AS g; CREATE TABLE other (x int)",
    );
    let target = rig.pg.conninfo();
    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "busy",
        ],
    );
    assert_eq!(rc, 1, "{t}");
    assert!(t.contains("already holds") && t.contains("--clean"), "{t}");
    assert_eq!(count(&rig, "busy"), "1:1");

    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--target",
            &target,
            "--target-database",
            "busy",
            "--clean",
        ],
    );
    assert_eq!(rc, 0, "{t}");
    assert_eq!(count(&rig, "busy"), "1500:1500");
    // What the backup does not hold stays.
    assert_eq!(
        rig.pg.psql("busy", "SELECT count(*) FROM other").trim(),
        "0"
    );
}

#[test]
fn output_is_exactly_what_gpg_decrypts_and_private() {
    let rig = Rig::new(1000);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    let stamp = rig.complete_stamps().pop().unwrap();
    let out = rig.scratch.path("app.dump");
    let (rc, t) = restore(
        &cfg,
        &[
            "--database",
            "app",
            "--backup",
            &stamp,
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(rc, 0, "{t}");
    let mine = std::fs::read(&out).unwrap();
    assert_eq!(
        sha256_hex(&mine),
        sha256_hex(&rig.gpg.decrypt(&fs_object(&rig, &stamp)))
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never over an existing file.
    let (rc, t) = restore(
        &cfg,
        &["--database", "app", "--output", out.to_str().unwrap()],
    );
    assert_eq!(rc, 1, "{t}");
    assert!(t.contains("exists"), "{t}");
    // The globals as SQL.
    let g = rig.scratch.path("globals.sql");
    std::fs::create_dir_all(rig.scratch.path("agent.d")).unwrap();
    std::fs::write(
        rig.scratch.path("agent.d/globals.toml"),
        "[backup]\nglobals = true\n",
    )
    .unwrap();
    assert!(agent(&cfg, &["backup"]).status.success());
    let (rc, t) = restore(
        &cfg,
        &["--database", "_globals", "--output", g.to_str().unwrap()],
    );
    assert_eq!(rc, 0, "{t}");
    assert!(std::fs::read_to_string(&g).unwrap().contains("CREATE ROLE"));
}

#[test]
fn roles_the_dump_needs_are_named_before_the_target_is_touched() {
    let rig = Rig::new(100);
    rig.pg.psql("postgres", "CREATE ROLE app_owner");
    rig.pg.psql("app", "ALTER TABLE t OWNER TO app_owner");
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    // A second server without that role.
    let other = support::postgres::Pg::start();
    let (rc, t) = restore(&cfg, &["--database", "app", "--target", &other.conninfo()]);
    assert_eq!(rc, 1, "{t}");
    assert!(t.contains("app_owner") && t.contains("_globals"), "{t}");
    assert_eq!(
        other
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'app'"
            )
            .trim(),
        "0"
    );
}

#[test]
fn status_reports_a_failed_job_with_exit_1_and_a_healthy_host_with_exit_0() {
    let rig = Rig::new(100);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    let ok = agent(&cfg, &["--json", "status"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let s = json(&ok);
    assert_eq!(s["jobs"]["backup"]["last_status"], "succeeded");
    assert_eq!(s["backups"][0]["database"], "app");
    assert!(s["audit"]["head_seq"].as_u64().unwrap() > 0);

    // Break the destination: the next backup fails, and status says so.
    std::fs::remove_dir_all(rig.fs()).unwrap();
    std::fs::write(rig.fs(), "not a directory").unwrap();
    assert!(!agent(&cfg, &["backup"]).status.success());
    let bad = agent(&cfg, &["--json", "status"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let s = json(&bad);
    assert_eq!(s["jobs"]["backup"]["last_status"], "failed");
    assert!(
        s["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("last backup run failed")),
        "{s:#}"
    );
    // And for humans.
    let human = agent(&cfg, &["status"]);
    assert!(text(&human).contains("NEEDS ATTENTION"), "{}", text(&human));

    std::fs::remove_file(rig.fs()).unwrap();
    assert!(agent(&cfg, &["backup"]).status.success());
    assert_eq!(agent(&cfg, &["status"]).status.code(), Some(0));
}
