//! Policies a host can prove (SPEC §10), end to end against real PostgreSQL
//! 15, moto S3 with Object Lock, GnuPG and libfaketime: the legal hold, and
//! retired databases.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::gpg::Gpg;
use support::postgres::Pg;
use support::s3::Moto;
use support::Scratch;

const BUCKET: &str = "pg-policies";

struct Setup {
    scratch: Scratch,
    gpg: Gpg,
    key: PathBuf,
}

fn setup() -> Setup {
    let scratch = Scratch::new();
    let gpg = Gpg::new();
    let key = gpg.export_public(&scratch.path("backup.pub.asc"));
    Setup { scratch, gpg, key }
}

impl Setup {
    fn config(&self, conninfo: &str, s3: Option<&str>, extra: &str) -> PathBuf {
        let s3 = s3.map(|endpoint| support::S3Dest {
            lock_days: 1,
            ..support::S3Dest::new(endpoint, BUCKET)
        });
        let (mut body, names) = self.scratch.destinations(s3.as_ref());
        // `extra` may name its own recipients.
        let to = if extra.contains("encrypt_to") {
            String::new()
        } else {
            format!("encrypt_to = [\"{}\"]\n", self.key.display())
        };
        body += &format!(
            "[backup]\nconnection = \"{conninfo}\"\ndestinations = [{names}]\n{to}\
             pg_bin_dir = \"/usr/lib/postgresql/15/bin\"\npart_size_mib = 5\nglobals = false\n{extra}\n"
        );
        self.scratch.config(&body)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.scratch.path("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn actions(&self, action: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect()
    }

    /// Seed a complete old backup on the filesystem destination.
    fn seed_fs(&self, db: &str, stamp: &str) -> PathBuf {
        let dir = self
            .scratch
            .path(&format!("fs/test-host/postgres/{db}/{stamp}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{db}.dump.pgp")), b"x").unwrap();
        std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
        dir
    }
}

fn metric(prom: &str, series: &str) -> Option<f64> {
    prom.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn legal_holds(moto: &Moto) -> Vec<(String, String)> {
    moto.py(&format!(
        "for o in s3.list_objects_v2(Bucket='{BUCKET}').get('Contents', []):\n\
         \x20   try:\n\
         \x20       st = s3.get_object_legal_hold(Bucket='{BUCKET}', Key=o['Key'])['LegalHold']['Status']\n\
         \x20   except Exception:\n\
         \x20       st = 'NONE'\n\
         \x20   print(o['Key'], st)"
    ))
    .lines()
    .map(|l| {
        let (k, s) = l.rsplit_once(' ').unwrap();
        (k.to_owned(), s.to_owned())
    })
    .collect()
}

#[test]
fn legal_hold_stops_deletions_holds_s3_objects_and_release_lifts_them() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 10)",
    );
    let moto = Moto::start();
    moto.bucket(BUCKET, true);
    let s = setup();
    let cfg = s.config(
        &pg.conninfo(),
        Some(&moto.endpoint()),
        "databases = [\"shop\"]\nretention_days = 14\nkeep_min = 1",
    );
    let old_fs = s.seed_fs("shop", "20200101T000000Z");
    // An expired backup on S3, not under any retention lock.
    moto.py(&format!(
        "for name in ['shop.dump.pgp', 'manifest.json']:\n\
         \x20   body = b'{{}}'\n\
         \x20   md5 = base64.b64encode(hashlib.md5(body).digest()).decode()\n\
         \x20   s3.put_object(Bucket='{BUCKET}', Key='test-host/postgres/shop/20200202T000000Z/' + name, Body=body, ContentMD5=md5)"
    ));

    let st = support::agent(&cfg, &["--json", "hold", "status"]);
    assert!(st.status.success(), "{}", support::text(&st));
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["held"], false, "{v}");

    let empty = support::agent(&cfg, &["hold", "set", "--reason", "  "]);
    assert_eq!(empty.status.code(), Some(2), "{}", support::text(&empty));

    let set = support::agent(&cfg, &["hold", "set", "--reason", "case 42: Acme v. Host"]);
    assert!(set.status.success(), "{}", support::text(&set));
    // At once: the backup already on S3 is under legal hold before any run.
    let holds = legal_holds(&moto);
    assert_eq!(
        holds
            .iter()
            .filter(|(k, st)| k.contains("20200202T000000Z") && st == "ON")
            .count(),
        2,
        "{holds:?}"
    );
    let st = support::agent(&cfg, &["--json", "hold", "status"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["held"], true, "{v}");
    assert_eq!(v["reason"], "case 42: Acme v. Host", "{v}");
    assert_eq!(metric(&s.scratch.prom(), "cloudnx_legal_hold"), Some(1.0));
    let rec = s.actions("hold.set");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["detail"]["reason"], "case 42: Acme v. Host");

    // A backup under the hold: retention decides, deletes nothing, says so.
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("legal hold: 2 retention deletion(s) held"),
        "{}",
        support::text(&out)
    );
    assert!(
        old_fs.join("manifest.json").exists(),
        "held on the filesystem"
    );
    assert!(s.actions("backup.retention.delete").is_empty());
    let holds = legal_holds(&moto);
    let dumps: Vec<&(String, String)> = holds
        .iter()
        .filter(|(k, _)| k.ends_with(".dump.pgp") || k.ends_with("manifest.json"))
        .collect();
    assert_eq!(dumps.len(), 4, "the old backup and the new one: {holds:?}");
    assert!(
        dumps.iter().all(|(_, st)| st == "ON"),
        "every kept object is under legal hold: {holds:?}"
    );
    // hold set held the old backup, the run the new one.
    let on = s.actions("backup.legal_hold.on");
    assert_eq!(on.len(), 2, "{on:#?}");
    assert!(on
        .iter()
        .all(|r| r["detail"]["reason"] == "case 42: Acme v. Host"));

    // Release: the agent's holds come OFF at once; the next run prunes.
    let rel = support::agent(&cfg, &["hold", "release", "--reason", "case closed"]);
    assert!(rel.status.success(), "{}", support::text(&rel));
    let holds = legal_holds(&moto);
    assert!(
        holds.iter().all(|(_, st)| st != "ON"),
        "release turned every hold the agent set OFF: {holds:?}"
    );
    let rec = s.actions("hold.release");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["detail"]["reason"], "case closed");
    assert_eq!(rec[0]["detail"]["hold"]["reason"], "case 42: Acme v. Host");
    assert_eq!(metric(&s.scratch.prom(), "cloudnx_legal_hold"), Some(0.0));

    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(
        !old_fs.exists(),
        "the expired backup is pruned after release"
    );
    assert!(
        !moto
            .keys(BUCKET)
            .iter()
            .any(|k| k.contains("20200202T000000Z")),
        "{:?}",
        moto.keys(BUCKET)
    );
    assert_eq!(s.actions("backup.retention.delete").len(), 4);
}

#[test]
fn a_dropped_database_is_retired_and_deleted_retention_days_after_its_newest_backup() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("postgres", "CREATE DATABASE shop");
    let s = setup();
    let extra = "exclude_databases = [\"postgres\"]\nretention_days = 3\nkeep_min = 5";
    let cfg = s.config(&pg.conninfo(), None, extra);
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let shop_success =
        "cloudnx_backup_last_success_timestamp_seconds{database=\"shop\",destination=\"local\"}";
    assert!(metric(&s.scratch.prom(), shop_success).is_some());

    pg.psql("postgres", "DROP DATABASE shop");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let prom = s.scratch.prom();
    assert!(
        !prom
            .lines()
            .any(|l| l.contains("database=\"shop\"") && !l.starts_with("cloudnx_backup_retired")),
        "a retired database's series leave the metrics file: {prom}"
    );
    assert_eq!(
        metric(
            &prom,
            "cloudnx_backup_retired{database=\"shop\",destination=\"local\"}"
        ),
        Some(1.0),
        "{prom}"
    );
    assert!(metric(
        &prom,
        "cloudnx_backup_last_success_timestamp_seconds{database=\"app\",destination=\"local\"}"
    )
    .is_some());
    let shop_dir = s.scratch.path("fs/test-host/postgres/shop");
    assert!(
        shop_dir.read_dir().unwrap().next().is_some(),
        "kept for now"
    );
    no_alert_for_retired(&prom);

    // Past retention_days with the server unreachable: nothing is retired.
    let down = s.config(
        &format!("host=127.0.0.1 port={} user=postgres", support::free_port()),
        None,
        extra,
    );
    let out = support::faults::agent_at("+5d", &down, &["backup"]);
    assert!(!out.status.success(), "{}", support::text(&out));
    assert!(
        shop_dir.read_dir().unwrap().next().is_some(),
        "an unreachable server retires nothing"
    );
    assert!(s.actions("backup.retention.delete").is_empty());

    // Another agent's old backup of a database this server does not have
    // (a shared prefix): reported, never retired by this agent.
    let theirs = s.seed_fs("theirs", "20200101T000000Z");
    std::fs::write(theirs.join(".writer"), "0123456789abcdef backup-x").unwrap();

    // Past retention_days with the listing: every backup of shop goes, audited.
    let cfg = s.config(&pg.conninfo(), None, extra);
    let out = support::faults::agent_at("+5d", &cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let left: Vec<_> = std::fs::read_dir(&shop_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "no keep floor for a retired database: {left:?}"
    );
    let del = s.actions("backup.retention.delete");
    assert!(!del.is_empty());
    assert!(
        del.iter()
            .all(|r| r["detail"]["reason"] == "retired" && r["detail"]["database"] == "shop"),
        "{del:#?}"
    );
    let prom = s.scratch.prom();
    assert!(!prom.contains("database=\"shop\""), "{prom}");
    assert!(
        theirs.join("manifest.json").exists(),
        "another writer's backup is left alone"
    );
    assert_eq!(
        metric(&prom, "cloudnx_backup_shared_prefix{destination=\"local\"}"),
        Some(1.0),
        "{prom}"
    );
    // app: two backups kept (keep_min), none retired.
    assert!(
        s.scratch
            .path("fs/test-host/postgres/app")
            .read_dir()
            .unwrap()
            .count()
            >= 2
    );
}

/// The alert rules over the metrics file (every backup aged 27 h):
/// `CloudnxBackupTooOld` fires for the live database only, never the retired one.
fn no_alert_for_retired(prom: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut series = String::new();
    for l in prom
        .lines()
        .filter(|l| l.starts_with("cloudnx_backup_last_success"))
    {
        let (name, _) = l.rsplit_once(' ').unwrap();
        let name = name.replacen('{', "{instance=\"h1\",", 1);
        series += &format!("      - series: '{name}'\n        values: '0x1800'\n");
    }
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/prometheus/cloudnx-agent.rules.yml");
    let test = format!(
        "rule_files: ['{}']\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n      - eval_time: 27h\n        alertname: CloudnxBackupTooOld\n        exp_alerts:\n          - exp_labels: {{severity: page, instance: h1, database: app, destination: local}}\n            exp_annotations:\n              summary: \"No backup of app to local on h1 for 1d 3h 0m 0s\"\n              description: \"The last backup of database app that completed on destination local is older than 26 h. Check the backup job's last error: `journalctl -u cloudnx-agent` or `cloudnx-agent backup --database app`.\"\n              runbook_url: \"file:///usr/share/doc/cloudnx-agent/operations.md#cloudnxbackuptooold\"\n",
        rules.display()
    );
    let t = dir.path().join("t.yml");
    std::fs::write(&t, test).unwrap();
    let out = std::process::Command::new(support::require("promtool"))
        .args(["test", "rules"])
        .arg(&t)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::text(&out));
}

#[test]
fn no_table_name_is_readable_on_the_destination_and_the_counts_travel_encrypted() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE crm");
    pg.psql(
        "crm",
        "CREATE TABLE patient_diagnoses_secret (id int); INSERT INTO patient_diagnoses_secret SELECT generate_series(1, 7);
         CREATE SCHEMA payroll_zx; CREATE TABLE payroll_zx.salaries_qq (id int);",
    );
    let s = setup();
    let cfg = s.config(&pg.conninfo(), None, "databases = [\"crm\"]");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let fs = s.scratch.path("fs");
    for name in ["patient_diagnoses_secret", "payroll_zx", "salaries_qq"] {
        let grep = std::process::Command::new("grep")
            .args(["-r", "-a", "-l", name])
            .arg(&fs)
            .output()
            .unwrap();
        assert_eq!(
            grep.status.code(),
            Some(1),
            "{name} readable on the destination: {}",
            support::text(&grep)
        );
    }
    // The counts are there, encrypted to the backup's recipients.
    let manifest = std::fs::read_dir(fs.join("test-host/postgres/crm"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("manifest.json"))
        .find(|p| p.is_file())
        .unwrap();
    let m = s.gpg.manifest(&manifest);
    assert_eq!(m["row_counts"]["public.patient_diagnoses_secret"], 7, "{m}");
    assert_eq!(m["row_counts"]["payroll_zx.salaries_qq"], 0, "{m}");
}

/// A TLS 1.2-only proxy (Python's ssl, pinned to TLS 1.2) in front of `upstream`.
struct Tls12Proxy {
    child: std::process::Child,
    port: u16,
}

impl Tls12Proxy {
    fn start(cert: &std::path::Path, key: &std::path::Path, upstream: u16) -> Tls12Proxy {
        let port = support::free_port();
        let script = format!(
            r#"
import socket, ssl, threading, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain({cert:?}, {key:?})
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', {port}))
srv.listen(64)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except Exception:
        pass
    for s in (a, b):
        try:
            s.close()
        except Exception:
            pass
def handle(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
    except Exception:
        c.close()
        return
    u = socket.create_connection(('127.0.0.1', {upstream}))
    threading.Thread(target=pipe, args=(s, u), daemon=True).start()
    pipe(u, s)
print('ready', flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#,
            cert = cert.display().to_string(),
            key = key.display().to_string(),
        );
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        Tls12Proxy { child, port }
    }
}

impl Drop for Tls12Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_s3_endpoint_below_the_tls_floor_fails_the_backup_naming_it_and_the_version() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let s = setup();
    let pki = support::tls::Pki::new(&s.scratch.path("pki"), "test-host");
    let proxy = Tls12Proxy::start(&pki.control_plane.cert, &pki.control_plane.key, moto.port);
    // openssl agrees the proxy speaks 1.2 and refuses 1.3.
    let probe = |flag: &str| {
        std::process::Command::new(support::require("openssl"))
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", proxy.port),
                flag,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe("-tls1_2"));
    assert!(!probe("-tls1_3"));

    let endpoint = format!("https://127.0.0.1:{}", proxy.port);
    let id = s.scratch.secret("secrets/s3.id", "test");
    let secret = s.scratch.secret("secrets/s3.secret", "test");
    let config = |policy: &str| {
        s.scratch.config(&format!(
            "[[destinations]]\nname = \"s3\"\ntype = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
             ca_file = \"{}\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n\n\
             [backup]\nconnection = \"{}\"\ndestinations = [\"s3\"]\nencrypt_to = [\"{}\"]\n\
             pg_bin_dir = \"/usr/lib/postgresql/15/bin\"\ndatabases = [\"shop\"]\nglobals = false\n\n{policy}",
            pki.ca.display(),
            id.display(),
            secret.display(),
            pg.conninfo(),
            s.key.display()
        ))
    };
    let cfg = config("");
    let out = support::agent(&cfg, &["backup"]);
    let t = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("{endpoint} does not speak TLS 1.3 or newer")),
        "the error names the endpoint and the version: {t}"
    );
    assert!(moto
        .keys(BUCKET)
        .iter()
        .all(|k| !k.ends_with("manifest.json")));

    let cfg = config("[policy]\nmin_tls_version = \"1.2\"\n");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(
        moto.keys(BUCKET)
            .iter()
            .any(|k| k.ends_with("manifest.json")),
        "{:?}",
        moto.keys(BUCKET)
    );
}

#[test]
fn plain_http_off_the_host_and_endpoints_or_regions_outside_the_policy_are_config_errors() {
    let s = Scratch::new();
    let id = s.secret("secrets/s3.id", "test");
    let secret = s.secret("secrets/s3.secret", "test");
    let dest = |endpoint: &str, region: &str| {
        format!(
            "[[destinations]]\nname = \"s3\"\ntype = \"s3\"\nendpoint = \"{endpoint}\"\n{region}bucket = \"b\"\n\
             access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n\n",
            id.display(),
            secret.display()
        )
    };
    let check = |body: &str| {
        let cfg = s.config(body);
        let o = support::agent(&cfg, &["check-config"]);
        let text = std::fs::read_to_string(&cfg).unwrap();
        (o.status.code(), support::text(&o), text)
    };
    // file:line:col of `needle`'s value in the written file.
    let at = |text: &str, needle: &str| {
        let (n, l) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        format!("agent.toml:{}:{}:", n + 1, l.find('"').unwrap() + 1)
    };

    let (code, out, text) = check(&dest("http://198.51.100.7:9000", ""));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&at(&text, "198.51.100.7")), "{out}");
    assert!(
        out.contains("plain http://") && out.contains("use https://"),
        "{out}"
    );

    // Loopback http:// is fine, and the default floor, no lists: all good.
    let (code, out, _) = check(&dest("http://127.0.0.1:9000", ""));
    assert_eq!(code, Some(0), "{out}");

    let policy = "[policy]\nallowed_endpoints = [\"*.your-objectstorage.com\"]\nallowed_regions = [\"hel1\"]\n";
    let (code, out, text) = check(&format!(
        "{}{policy}",
        dest("https://s3.elsewhere.example", "region = \"hel1\"\n")
    ));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&at(&text, "s3.elsewhere.example")), "{out}");
    assert!(out.contains("outside [policy] allowed_endpoints"), "{out}");

    let (code, out, text) = check(&format!(
        "{}{policy}",
        dest(
            "https://hel1.your-objectstorage.com",
            "region = \"us-east-1\"\n"
        )
    ));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&at(&text, "region =")), "{out}");
    assert!(out.contains("outside [policy] allowed_regions"), "{out}");

    let (code, out, _) = check(&format!(
        "{}{policy}",
        dest("https://hel1.your-objectstorage.com", "region = \"hel1\"\n")
    ));
    assert_eq!(code, Some(0), "{out}");

    let (code, out, _) = check("[policy]\nmin_tls_version = \"1.1\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("min_tls_version") && out.contains("\"1.2\""),
        "{out}"
    );
}

#[test]
fn recipient_key_dates_match_gpg_with_colons_and_a_removed_key_loses_its_series() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    let s = setup();
    let expiring = Gpg::expiring("1y");
    // A later self-signature moves the expiry: the newest one counts.
    expiring.set_expire("2y");
    let second = expiring.export_public(&s.scratch.path("second.pub.asc"));
    let cfg = s.config(
        &pg.conninfo(),
        None,
        &format!(
            "databases = [\"shop\"]\nencrypt_to = [\"{}\", \"{}\"]",
            s.key.display(),
            second.display()
        ),
    );
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let prom = s.scratch.prom();
    for (g, name) in [(&s.gpg, "never"), (&expiring, "2y")] {
        let (created, expires) = g.colon_dates();
        let key = format!("{{key=\"openpgp:{}\"}}", g.fingerprint);
        assert_eq!(
            metric(
                &prom,
                &format!("cloudnx_key_created_timestamp_seconds{key}")
            ),
            Some(created as f64),
            "{name}: {prom}"
        );
        assert_eq!(
            metric(&prom, &format!("cloudnx_key_expiry_timestamp_seconds{key}")),
            expires.map(|e| e as f64),
            "{name}: {prom}"
        );
    }
    assert!(expiring.colon_dates().1.is_some(), "the 2y key expires");

    // The second key is no longer a recipient: its series go.
    let cfg = s.config(&pg.conninfo(), None, "databases = [\"shop\"]");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let prom = s.scratch.prom();
    assert!(!prom.contains(&expiring.fingerprint), "{prom}");
    assert!(prom.contains(&s.gpg.fingerprint), "{prom}");
}

#[test]
fn an_alertmanager_below_the_tls_floor_is_named_with_the_version() {
    let s = Scratch::new();
    let pki = support::tls::Pki::new(&s.path("pki"), "test-host");
    let port = support::free_port();
    let _server = Killed(
        std::process::Command::new(support::require("openssl"))
            .args(["s_server", "-accept", &port.to_string(), "-tls1_2", "-www"])
            .arg("-cert")
            .arg(&pki.control_plane.cert)
            .arg("-key")
            .arg(&pki.control_plane.key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}");
    let page = cloudnx_agent::alert::Page {
        alertname: "CloudnxRestoreDrillFailed",
        summary: "s".into(),
        description: "d".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(cloudnx_agent::alert::send(
            &url,
            "test-host",
            &page,
            cloudnx_agent::tls_floor::TlsFloor::V1_3,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{url} does not speak TLS 1.3 or newer")),
        "{e}"
    );
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
