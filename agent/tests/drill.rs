//! End-to-end tests of the `restore-drill` duty: a real backup (PostgreSQL 15,
//! moto S3 or a filesystem destination, GnuPG keys) restored into a throwaway
//! cluster, checked, and torn down — and every kind of damage failing it precisely.

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use support::gpg::Gpg;
use support::postgres::Pg;
use support::s3::Moto;
use support::Scratch;

fn seed(pg: &Pg) {
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("postgres", "CREATE ROLE app_owner LOGIN");
    pg.psql(
        "app",
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
         ALTER TABLE users OWNER TO app_owner;
         INSERT INTO users (name) VALUES ('Zoë'), ('山田'), ('Ωmega');
         CREATE TABLE events (id bigint PRIMARY KEY, user_id int REFERENCES users(id), at timestamptz, body text);
         INSERT INTO events SELECT g, 1 + g % 3, now(), repeat('é', g % 40) FROM generate_series(1, 20000) g;
         CREATE INDEX events_user ON events (user_id);
         CREATE VIEW per_user AS SELECT user_id, count(*) FROM events GROUP BY user_id;
         CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS $$ SELECT 42 $$;
         SELECT lo_from_bytea(0, '\\x00ff');",
    );
}

struct Setup {
    scratch: Scratch,
    gpg: Gpg,
}

impl Setup {
    fn new() -> Setup {
        let scratch = Scratch::new();
        let gpg = Gpg::new();
        gpg.export_public(&scratch.path("backup.pub.asc"));
        std::fs::create_dir_all(scratch.path("keys")).unwrap();
        gpg.export_secret(&scratch.path("keys/backup.sec.asc"));
        std::fs::create_dir_all(scratch.path("spool")).unwrap();
        Setup { scratch, gpg }
    }

    fn config(&self, pg: &Pg, s3: Option<&Moto>, drill_from: &str, extra: &str) -> PathBuf {
        let endpoint = s3.map(Moto::endpoint);
        let s3 = endpoint
            .as_deref()
            .map(|e| support::S3Dest::new(e, "drill"));
        let (mut body, names) = self.scratch.destinations(s3.as_ref());
        body += &format!(
            "[backup]\nconnection = \"{}\"\ndestinations = [{names}]\nencrypt_to = [\"{}\"]\ndatabases = [\"app\"]\n\n\
             [restore_drill]\ndestination = \"{drill_from}\"\ndecryption_key = \"{}\"\nrun_as = \"postgres\"\njobs = 2\nspool_dir = \"{}\"\nallow_unencrypted_spool = true\n{extra}\n",
            pg.conninfo(),
            self.scratch.path("backup.pub.asc").display(),
            self.scratch.path("keys/backup.sec.asc").display(),
            self.scratch.path("spool").display(),
        );
        self.scratch.config(&body)
    }

    /// Nothing left behind: no drill dir in the spool, no postgres running from it.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.scratch.path("spool"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "drill dirs left behind: {left:?}");
        let spool = self.scratch.path("spool").display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                assert!(!cmd.contains(&spool), "process left running: {cmd}");
            }
        }
    }

    fn backup_dir(&self) -> PathBuf {
        let d = self.scratch.path("fs/test-host/postgres/app");
        std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
    }
}

fn drill(cfg: &Path) -> (Option<i32>, Value, String) {
    let out = support::agent(cfg, &["--json", "restore-drill"]);
    let text = support::text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, text)
}

#[test]
fn backup_then_drill_from_s3_passes_every_check_and_reports_rto() {
    let pg = Pg::start();
    seed(&pg);
    let moto = Moto::start();
    moto.bucket("drill", false);
    let s = Setup::new();
    let cfg = s.config(
        &pg,
        Some(&moto),
        "s3",
        "probes = [\"app: SELECT count(*) = 3 FROM users\", \"SELECT answer() = 42\"]",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));

    let (code, rec, text) = drill(&cfg);
    assert_eq!(code, Some(0), "{text}");
    let checks = rec["result"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .filter(|c| c["database"] == "app")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "schema_fingerprint",
            "row_counts",
            "pg_amcheck",
            "probe_1",
            "probe_2"
        ],
        "{rec:#}"
    );
    assert!(checks.iter().all(|c| c["ok"] == true), "{rec:#}");
    let rto = rec["result"]["rto_seconds"].as_f64().unwrap();
    assert!(rto > 0.0);
    for p in ["download", "decrypt", "cluster_start", "restore", "checks"] {
        assert!(
            rec["result"]["phases"][p].as_f64().is_some(),
            "phase {p}: {rec:#}"
        );
    }
    let prom = s.scratch.prom();
    assert!(
        prom.contains("cloudnx_restore_drill_last_rto_seconds "),
        "{prom}"
    );
    assert!(
        prom.contains("cloudnx_restore_drill_last_phase_seconds{phase=\"restore\"}"),
        "{prom}"
    );
    assert!(
        prom.contains("cloudnx_job_last_status{kind=\"restore-drill\"} 1"),
        "{prom}"
    );
    s.assert_clean();
}

#[test]
fn damaged_or_mismatching_backups_fail_the_drill_precisely_and_leave_nothing() {
    let pg = Pg::start();
    seed(&pg);
    let s = Setup::new();
    let cfg = s.config(&pg, None, "local", "");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let dir = s.backup_dir();
    let object = dir.join("app.dump.pgp");
    let manifest = dir.join("manifest.json");
    let pristine = (
        std::fs::read(&object).unwrap(),
        std::fs::read(&manifest).unwrap(),
    );
    let m: Value = serde_json::from_slice(&pristine.1).unwrap();
    let restore = || {
        std::fs::write(&object, &pristine.0).unwrap();
        std::fs::write(&manifest, &pristine.1).unwrap();
    };
    let set_manifest = |f: &dyn Fn(&mut Value)| {
        let mut v = m.clone();
        f(&mut v);
        std::fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
    };

    // Sanity: the pristine backup drills green.
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(0), "{text}");

    // One flipped byte.
    let mut b = pristine.0.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&object, &b).unwrap();
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("download phase") && text.contains("damaged or was replaced"),
        "{text}"
    );
    s.assert_clean();
    restore();

    // Truncated.
    std::fs::write(&object, &pristine.0[..pristine.0.len() / 3]).unwrap();
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("download phase") && text.contains("damaged"),
        "{text}"
    );
    s.assert_clean();
    restore();

    // A flipped byte with a manifest that matches it: the OpenPGP integrity check catches it.
    let mut b = pristine.0.clone();
    let last = b.len() - 10;
    b[last] ^= 0x01;
    std::fs::write(&object, &b).unwrap();
    set_manifest(&|v| {
        v["sha256"] = Value::from(hex(&Sha256::digest(&b)));
    });
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("decrypt phase"), "{text}");
    s.assert_clean();
    restore();

    // Wrong decryption key.
    let other = Gpg::new();
    other.export_secret(&s.scratch.path("keys/backup.sec.asc"));
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("decrypt phase") && text.contains("decrypting"),
        "{text}"
    );
    s.assert_clean();
    s.gpg.export_secret(&s.scratch.path("keys/backup.sec.asc"));

    // Encrypted details whose row count differs from what was dumped (the
    // counts travel only encrypted, beside the manifest).
    let details = dir.join("manifest.details.pgp");
    let pristine_details = std::fs::read(&details).unwrap();
    let mut d: Value = serde_json::from_slice(&s.gpg.decrypt(&details)).unwrap();
    d["row_counts"]["public.events"] = Value::from(19_999);
    let forged = s.scratch.path("forged.details.pgp");
    s.gpg.encrypt(&serde_json::to_vec(&d).unwrap(), &forged);
    let forged = std::fs::read(&forged).unwrap();
    std::fs::write(&details, &forged).unwrap();
    // Replaced without the manifest knowing: refused by its checksum.
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("manifest.details.pgp") && text.contains("checksum mismatch"),
        "{text}"
    );
    s.assert_clean();
    set_manifest(&|v| v["details_sha256"] = Value::from(hex(&Sha256::digest(&forged))));
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("row_counts")
            && text.contains("public.events: restored 20000, manifest 19999"),
        "{text}"
    );
    s.assert_clean();
    std::fs::write(&details, &pristine_details).unwrap();
    restore();

    // A manifest whose schema fingerprint differs.
    set_manifest(&|v| v["schema_sha256"] = Value::from("0".repeat(64)));
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("schema_fingerprint"), "{text}");
    s.assert_clean();
    restore();

    // A dump pg_restore rejects (well encrypted, consistent manifest, broken content).
    let plain = b"PGDMP\x01\x0e\x00this is not a dump".to_vec();
    s.gpg.encrypt(&plain, &object);
    let forged = std::fs::read(&object).unwrap();
    set_manifest(&|v| {
        v["sha256"] = Value::from(hex(&Sha256::digest(&forged)));
        v["size_bytes"] = Value::from(forged.len());
        v["plaintext_sha256"] = Value::from(hex(&Sha256::digest(&plain)));
        v["plaintext_size_bytes"] = Value::from(plain.len());
    });
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("restore phase") && text.contains("pg_restore of app failed"),
        "{text}"
    );
    s.assert_clean();
    let prom = s.scratch.prom();
    assert!(
        prom.contains("cloudnx_job_last_status{kind=\"restore-drill\"} 0"),
        "{prom}"
    );
    let outbox = std::fs::read_dir(s.scratch.path("state"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    let events: String = outbox
        .iter()
        .filter(|p| p.to_string_lossy().contains("outbox"))
        .map(|p| {
            if p.is_dir() {
                std::fs::read_dir(p)
                    .unwrap()
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<String>()
            } else {
                std::fs::read_to_string(p).unwrap_or_default()
            }
        })
        .collect();
    assert!(
        events.contains("\"page\"") && events.contains("restore-drill"),
        "a page-severity event is queued: {outbox:?}"
    );
}

/// A drill host that holds the decryption key drills another host's backups
/// (`source_host_id`), and a failing drill pages a real Alertmanager directly.
#[test]
fn drill_of_another_hosts_backups_and_a_direct_alertmanager_page() {
    let pg = Pg::start();
    seed(&pg);
    let s = Setup::new();
    let am = support::alertmanager::Alertmanager::start(&s.scratch.path("alertmanager"));
    let cfg = s.config(&pg, None, "local", "");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));

    // The drill host: its own host_id and state, the same destination.
    let drill_host = |extra: &str| {
        let text = std::fs::read_to_string(s.config(&pg, None, "local", extra)).unwrap();
        let state = s.scratch.path("state").display().to_string();
        let text = text
            .replacen("host_id = \"test-host\"", "host_id = \"drill-host\"", 1)
            .replace(&state, &format!("{state}-drill"));
        let p = s.scratch.path("drill-host.toml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let page = format!("alertmanager_url = \"{}\"", am.url());
    let cfg = drill_host(&format!("source_host_id = \"test-host\"\n{page}"));
    let (code, rec, text) = drill(&cfg);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rec["result"]["prefix"], "test-host", "{rec:#}");
    let drilled: Vec<&str> = rec["result"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["database"].as_str().unwrap())
        .collect();
    assert_eq!(drilled, ["_globals", "app"], "{rec:#}");
    assert_eq!(
        am.alerts(),
        serde_json::json!([]),
        "a green drill pages nobody"
    );
    s.assert_clean();

    // Without source_host_id it looks under its own host_id, finds nothing, and pages.
    let cfg = drill_host(&page);
    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no complete backup under drill-host/postgres/"),
        "{text}"
    );
    let alerts = am.alerts();
    let a = alerts
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|a| a["labels"]["alertname"] == "CloudnxRestoreDrillFailed")
        })
        .unwrap_or_else(|| panic!("no CloudnxRestoreDrillFailed alert in {alerts:#}"));
    assert_eq!(a["labels"]["severity"], "page", "{a:#}");
    assert_eq!(a["labels"]["host_id"], "drill-host", "{a:#}");
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("no complete backup under drill-host/postgres/"),
        "{a:#}"
    );
    assert_eq!(a["status"]["state"], "active", "{a:#}");
    s.assert_clean();
}

#[test]
fn sigterm_midway_through_a_drill_leaves_no_process_and_no_temp_dir() {
    let pg = Pg::start();
    seed(&pg);
    let s = Setup::new();
    let cfg = s.config(&pg, None, "local", "");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));

    let child = std::process::Command::new(support::agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("restore-drill")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the throwaway cluster's postmaster runs from the spool dir.
    let spool = s.scratch.path("spool").display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    'wait: loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains("bin/postgres") && cmd.contains(&spool) {
                    break 'wait;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the throwaway cluster never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("cancelled"),
        "{}",
        support::text(&out)
    );
    s.assert_clean();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_spool_on_an_unencrypted_disk_is_refused_unless_allowed_and_tmpfs_is_accepted() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t AS SELECT generate_series(1, 100) g");
    let s = Setup::new();
    // /dev/shm is a tmpfs (checked: the test means nothing otherwise).
    let shm = tempfile::Builder::new()
        .prefix("cnx-spool-")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::set_permissions(
        shm.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let df = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(shm.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&df.stdout).trim(), "tmpfs");
    let disk = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(s.scratch.path("spool"))
        .output()
        .unwrap();
    let disk_fs = String::from_utf8_lossy(&disk.stdout).trim().to_owned();
    assert_ne!(disk_fs, "tmpfs", "the scratch spool must be on a disk here");
    assert!(!disk_fs.is_empty());

    let config = |spool: &Path, allow: &str| {
        let (mut body, names) = s.scratch.destinations(None);
        body += &format!(
            "[backup]\nconnection = \"{}\"\ndestinations = [{names}]\nencrypt_to = [\"{}\"]\ndatabases = [\"app\"]\n\n\
             [restore_drill]\ndestination = \"local\"\ndecryption_key = \"{}\"\nrun_as = \"postgres\"\njobs = 2\nspool_dir = \"{}\"\n{allow}\n",
            pg.conninfo(),
            s.scratch.path("backup.pub.asc").display(),
            s.scratch.path("keys/backup.sec.asc").display(),
            spool.display(),
        );
        s.scratch.config(&body)
    };
    let cfg = config(&s.scratch.path("spool"), "");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));

    let (code, _, text) = drill(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("neither dm-crypt nor tmpfs")
            && text.contains("mounted at")
            && text.contains("allow_unencrypted_spool = true"),
        "{text}"
    );
    s.assert_clean();

    let (code, _, text) = drill(&config(shm.path(), ""));
    assert_eq!(code, Some(0), "a tmpfs spool is accepted: {text}");

    let (code, _, text) = drill(&config(
        &s.scratch.path("spool"),
        "allow_unencrypted_spool = true",
    ));
    assert_eq!(code, Some(0), "allowed by the operator: {text}");
    s.assert_clean();
}
