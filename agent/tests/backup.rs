//! End-to-end tests of the `backup` duty against real PostgreSQL 15, moto S3
//! (Object Lock bucket), a filesystem destination and GnuPG.

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use support::gpg::Gpg;
use support::postgres::Pg;
use support::s3::Moto;
use support::Scratch;

const BUCKET: &str = "pg-backups";

/// The sample source: two databases, non-ASCII text, a large object, a view, a function.
fn seed(pg: &Pg) {
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "app",
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL UNIQUE, born date);
         INSERT INTO users (name, born) VALUES ('Zoë Ångström', '1990-01-02'), ('山田太郎', NULL), ('Ωmega 🚀', '2001-09-09');
         CREATE TABLE notes (id bigint PRIMARY KEY, user_id int REFERENCES users(id), body text);
         INSERT INTO notes SELECT g, 1 + g % 3, repeat('ünïcødé ', g % 50) FROM generate_series(1, 5000) g;
         CREATE INDEX notes_user ON notes (user_id);
         CREATE VIEW user_notes AS SELECT u.name, count(n.*) AS notes FROM users u LEFT JOIN notes n ON n.user_id = u.id GROUP BY u.name;
         CREATE FUNCTION greet(who text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'héllo ' || who $$;
         SELECT lo_from_bytea(0, convert_to('large object ✓', 'UTF8'));",
    );
    pg.psql(
        "shop",
        "CREATE TYPE state AS ENUM ('new', 'paid');
         CREATE TABLE orders (id int PRIMARY KEY, s state NOT NULL DEFAULT 'new', total numeric(10,2));
         INSERT INTO orders SELECT g, 'paid', g * 1.5 FROM generate_series(1, 1234) g;",
    );
}

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
    /// A config with a filesystem destination `local` and, when given, an S3 destination `s3`.
    fn config(&self, pg_conninfo: &str, s3: Option<(&str, u32)>, extra: &str) -> PathBuf {
        self.config_with_keys(pg_conninfo, s3, ("test", "test"), extra)
    }

    fn config_with_keys(
        &self,
        pg_conninfo: &str,
        s3: Option<(&str, u32)>,
        keys: (&str, &str),
        extra: &str,
    ) -> PathBuf {
        let s3 = s3.map(|(endpoint, lock_days)| support::S3Dest {
            endpoint,
            bucket: BUCKET,
            key_id: keys.0,
            secret: keys.1,
            lock_days,
        });
        let (mut body, names) = self.scratch.destinations(s3.as_ref());
        body += &format!(
            "[backup]\nconnection = \"{pg_conninfo}\"\ndestinations = [{names}]\nencrypt_to = [\"{}\"]\n\
             pg_bin_dir = \"/usr/lib/postgresql/15/bin\"\npart_size_mib = 5\n{extra}\n",
            self.key.display()
        );
        self.scratch.config(&body)
    }

    fn fs(&self) -> PathBuf {
        self.scratch.path("fs")
    }

    /// Every file under the filesystem destination, relative.
    fn fs_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        walk(&self.fs(), &self.fs(), &mut out);
        out.sort();
        out
    }

    fn manifests(&self, db: &str) -> Vec<(PathBuf, Value)> {
        let dir = self.fs().join("test-host/postgres").join(db);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let m = e.path().join("manifest.json");
            if m.is_file() {
                out.push((e.path(), self.gpg.manifest(&m)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn metric(prom: &str, series: &str) -> Option<f64> {
    prom.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn backup_to_s3_and_filesystem_opens_with_gpg_and_restores_exactly() {
    let pg = Pg::start();
    seed(&pg);
    let moto = Moto::start();
    moto.bucket(BUCKET, true);
    let s = setup();
    let cfg = s.config(&pg.conninfo(), Some((&moto.endpoint(), 1)), "");

    let out = support::agent(&cfg, &["backup"]);
    assert!(
        out.status.success(),
        "backup failed: {}",
        support::text(&out)
    );

    let target = Pg::start();
    for db in ["app", "shop"] {
        let ms = s.manifests(db);
        assert_eq!(
            ms.len(),
            1,
            "one complete backup of {db}: {:?}",
            s.fs_files()
        );
        let (dir, m) = &ms[0];
        assert_eq!(m["format"], "cloudnx-backup/1");
        assert_eq!(m["database"], db);
        assert_eq!(m["host_id"], "test-host");
        assert_eq!(m["object"], format!("{db}.dump.pgp"));
        assert!(m["server_version"].as_str().unwrap().starts_with("15."));
        assert_eq!(m["recipients"][0].as_str().unwrap(), s.gpg.fingerprint);
        // The audit head when the manifest was written (SPEC §11): a real
        // line of this host's audit log, so each anchors the other.
        let seq = m["audit_head"]["seq"].as_u64().unwrap();
        let log = std::fs::read_to_string(s.scratch.path("state/audit.jsonl")).unwrap();
        let line = log.lines().nth(usize::try_from(seq).unwrap() - 1).unwrap();
        assert_eq!(m["audit_head"]["hash"], sha256_hex(line.as_bytes()));
        let stamp = dir.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(stamp.len(), 16, "stamp YYYYMMDDTHHMMSSZ: {stamp}");

        // The filesystem object: hashes match, gpg opens it, no compression packet.
        let object = dir.join(format!("{db}.dump.pgp"));
        let cipher = std::fs::read(&object).unwrap();
        assert_eq!(cipher.len() as u64, m["size_bytes"].as_u64().unwrap());
        assert_eq!(sha256_hex(&cipher), m["sha256"]);
        let plain = s.gpg.decrypt(&object);
        assert_eq!(
            plain.len() as u64,
            m["plaintext_size_bytes"].as_u64().unwrap()
        );
        assert_eq!(sha256_hex(&plain), m["plaintext_sha256"]);
        assert!(plain.starts_with(b"PGDMP"), "a custom-format dump");
        let packets = s.gpg.list_packets(&object);
        assert!(
            packets.contains("encrypted data packet") && packets.contains("mdc_method: 2"),
            "SEIPD v1 with MDC: {packets}"
        );
        assert!(
            !packets.contains("compressed packet"),
            "no compression packet: {packets}"
        );
        assert!(packets.contains("AES256"), "AES-256: {packets}");

        // The S3 copy is the same stream, and its manifest too.
        let key = format!("test-host/postgres/{db}/{stamp}/{db}.dump.pgp");
        assert_eq!(sha256_hex(&moto.get(BUCKET, &key)), m["sha256"]);
        let s3_manifest: Value = serde_json::from_slice(&moto.get(
            BUCKET,
            &format!("test-host/postgres/{db}/{stamp}/manifest.json"),
        ))
        .unwrap();
        let plain_manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(s3_manifest, plain_manifest);
        // The encrypted details beside it are the same object too.
        let details = moto.get(
            BUCKET,
            &format!("test-host/postgres/{db}/{stamp}/manifest.details.pgp"),
        );
        assert_eq!(sha256_hex(&details), plain_manifest["details_sha256"]);

        // Object Lock as HeadObject reports it.
        let lock = moto.py(&format!(
            "h = s3.head_object(Bucket='{BUCKET}', Key='{key}')\nprint(h.get('ObjectLockMode'), h.get('ObjectLockRetainUntilDate').isoformat())"
        ));
        assert!(
            lock.starts_with("COMPLIANCE "),
            "object lock on {key}: {lock}"
        );
        let until =
            chrono::DateTime::parse_from_rfc3339(lock.trim().split(' ').nth(1).unwrap()).unwrap();
        let days = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
        assert!(
            (23..=24).contains(&days),
            "retain-until about 1 day ahead: {lock}"
        );

        // Restore into a fresh cluster: same row counts and schema fingerprint as the manifest says.
        let dump = s.scratch.path(&format!("{db}.dump"));
        std::fs::write(&dump, &plain).unwrap();
        target.restore(db, &dump);
        let counts = m["row_counts"].as_object().unwrap();
        assert!(!counts.is_empty());
        for (table, n) in counts {
            let got = target.psql(db, &format!("SELECT count(*) FROM {table}"));
            assert_eq!(got.trim(), n.to_string(), "rows of {table} in {db}");
        }
        let fp = fingerprint(&target, db);
        assert_eq!(
            fp,
            m["schema_sha256"].as_str().unwrap(),
            "schema fingerprint of {db} after restore"
        );
    }
    let app = &s.manifests("app")[0].1;
    assert_eq!(app["row_counts"]["public.users"], 3);
    assert_eq!(app["row_counts"]["public.notes"], 5000);
    assert_eq!(app["row_counts"]["pg_catalog.pg_largeobject_metadata"], 1);
    assert_eq!(
        target
            .psql("app", "SELECT name FROM users ORDER BY id LIMIT 1")
            .trim(),
        "Zoë Ångström"
    );
    assert_eq!(
        target.psql("app", "SELECT greet('wörld')").trim(),
        "héllo wörld"
    );
    assert_eq!(
        target
            .psql(
                "app",
                "SELECT notes FROM user_notes WHERE name = '山田太郎'"
            )
            .trim(),
        "1667"
    );
    assert_eq!(
        target
            .psql(
                "app",
                "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"
            )
            .trim(),
        "large object ✓"
    );

    // Globals are their own backup object, with a manifest.
    let globals = s.manifests("_globals");
    assert_eq!(globals.len(), 1);
    let g = &globals[0];
    assert_eq!(g.1["content"], "globals");
    let sql = s.gpg.decrypt(&g.0.join("_globals.dump.pgp"));
    assert!(String::from_utf8_lossy(&sql).contains("CREATE ROLE postgres"));

    // Metrics name the database and the destination.
    let prom = s.scratch.prom();
    for db in ["app", "shop", "_globals"] {
        for d in ["local", "s3"] {
            let ts = metric(&prom, &format!("cloudnx_backup_last_success_timestamp_seconds{{database=\"{db}\",destination=\"{d}\"}}"));
            assert!(
                ts.is_some_and(|t| t > 1.7e9),
                "success timestamp for {db} on {d}:\n{prom}"
            );
            assert_eq!(
                metric(
                    &prom,
                    &format!("cloudnx_backup_retained{{database=\"{db}\",destination=\"{d}\"}}")
                ),
                Some(1.0),
                "{prom}"
            );
        }
    }
    let size = metric(&prom, "cloudnx_backup_last_size_bytes{database=\"app\"}").unwrap();
    assert_eq!(size, app["size_bytes"].as_f64().unwrap());
    assert_eq!(
        metric(&prom, "cloudnx_job_last_status{kind=\"backup\"}"),
        Some(1.0)
    );
}

/// The schema fingerprint as the agent computes it (the library function, on a real server).
fn fingerprint(pg: &Pg, db: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cloudnx_agent::pg::ConnInfo::parse(&pg.conninfo()).unwrap();
        let client = c.connect(Some(db)).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        cloudnx_agent::pg::schema_sha256(&client).await.unwrap()
    })
}

#[test]
fn one_destination_down_the_other_completes_and_the_job_fails_naming_it() {
    let pg = Pg::start();
    seed(&pg);
    let s = setup();
    // Nothing listens on this port: the S3 destination is down.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let cfg = s.config(
        &pg.conninfo(),
        Some((&dead, 0)),
        "databases = [\"app\"]\nglobals = false",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("app to s3") && text.contains("unreachable"),
        "names the destination and cause: {text}"
    );
    assert_eq!(
        s.manifests("app").len(),
        1,
        "the filesystem copy completed: {:?}",
        s.fs_files()
    );
    let prom = s.scratch.prom();
    assert!(
        metric(
            &prom,
            "cloudnx_backup_last_success_timestamp_seconds{database=\"app\",destination=\"local\"}"
        )
        .is_some(),
        "{prom}"
    );
    assert!(
        metric(
            &prom,
            "cloudnx_backup_last_success_timestamp_seconds{database=\"app\",destination=\"s3\"}"
        )
        .is_none(),
        "{prom}"
    );
    assert_eq!(
        metric(&prom, "cloudnx_job_last_status{kind=\"backup\"}"),
        Some(0.0)
    );
}

#[test]
fn unreachable_database_fails_clearly_and_writes_nothing() {
    let s = setup();
    let cfg = s.config(
        &format!("host=127.0.0.1 port={} user=postgres", support::free_port()),
        None,
        "",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("connecting to PostgreSQL at host=127.0.0.1"),
        "{text}"
    );
    assert!(s.fs_files().is_empty(), "{:?}", s.fs_files());
}

#[test]
fn disk_full_on_the_filesystem_destination_leaves_no_partial_backup_and_next_run_works() {
    let pg = Pg::start();
    seed(&pg);
    // Incompressible rows so the dump cannot fit in 1 MiB.
    pg.psql("app", "CREATE TABLE blob AS SELECT g, md5(g::text) || md5((g*7)::text) AS h FROM generate_series(1, 60000) g");
    let s = setup();
    std::fs::create_dir_all(s.fs()).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(s.fs())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 1 MiB tmpfs needs root");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(s.fs());
    let cfg = s.config(
        &pg.conninfo(),
        None,
        "databases = [\"app\"]\nglobals = false",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(text.contains("No space left on device"), "{text}");
    assert!(s.manifests("app").is_empty());
    assert!(
        s.fs_files().is_empty(),
        "no temp file or object left: {:?}",
        s.fs_files()
    );

    // Space again (the big table gone): the next run succeeds.
    pg.psql("app", "DROP TABLE blob");
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(s.manifests("app").len(), 1);
}

#[test]
fn killed_pg_dump_and_concurrent_runs_leave_no_manifest_and_the_next_run_works() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE big");
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g",
    );
    let s = setup();
    let cfg = s.config(
        &pg.conninfo(),
        None,
        "databases = [\"big\"]\nglobals = false\nrow_counts = false",
    );
    // A leftover from an earlier crashed run: an object without a manifest.
    let leftover = s.fs().join("test-host/postgres/big/20200101T000000Z");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("big.dump.pgp"), b"partial").unwrap();

    // While the test holds a lock on the table, pg_dump waits for it: alive
    // for as long as needed, whatever the machine's speed.
    let lock = pg.lock_table("big", "t");
    let first = spawn_backup(&cfg);
    let dump_pid = wait_for_child(first.id(), "pg_dump");

    // A second one-shot while the first runs is refused, naming the holder.
    let second = support::agent(&cfg, &["backup"]);
    assert_eq!(second.status.code(), Some(1), "{}", support::text(&second));
    let text = support::text(&second);
    assert!(
        text.contains("already running") && text.contains(&format!("pid {}", first.id())),
        "{text}"
    );

    // Kill pg_dump midway.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dump_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("pg_dump"),
        "{}",
        support::text(&out)
    );
    assert!(
        s.manifests("big").is_empty(),
        "no manifest for a killed dump"
    );
    let files = s.fs_files();
    assert!(
        files.iter().all(|f| f.contains("20200101T000000Z")),
        "no partial object of the killed run: {files:?}"
    );

    // The next run works and cleans the leftover (audited).
    drop(lock);
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(s.manifests("big").len(), 1);
    assert!(
        !leftover.exists(),
        "the incomplete leftover was cleaned: {:?}",
        s.fs_files()
    );
    let audit = std::fs::read_to_string(s.scratch.path("state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("backup.retention.delete")
            && l.contains("20200101T000000Z")
            && l.contains("incomplete")),
        "{audit}"
    );

    // SIGTERM midway (what systemd sends on stop): cancelled cleanly, nothing looks complete.
    let before = s.fs_files();
    let _lock = pg.lock_table("big", "t");
    let third = spawn_backup(&cfg);
    wait_for_child(third.id(), "pg_dump");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(third.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = third.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("cancelled"),
        "{}",
        support::text(&out)
    );
    assert_eq!(
        s.fs_files(),
        before,
        "a cancelled backup leaves nothing behind"
    );
}

/// Start `cloudnx-agent backup` in the background (output captured).
fn spawn_backup(cfg: &Path) -> std::process::Child {
    std::process::Command::new(support::agent_bin())
        .arg("--config")
        .arg(cfg)
        .arg("backup")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pid of the first child of `parent` whose command is `name` and whose
/// arguments contain `--format=custom` (so not a `pg_dump --version`; polls up to 60 s).
fn wait_for_child(parent: u32, name: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let comm = &stat[stat.find('(').unwrap() + 1..close];
            let ppid: u32 = stat[close + 2..]
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let args = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let dumping = String::from_utf8_lossy(&args).contains("--format=custom");
            if comm == name && ppid == parent && dumping {
                return e.file_name().to_str().unwrap().parse().unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {name} child of {parent} within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn retention_prunes_old_backups_keeps_locked_ones_and_audits_deletions() {
    let pg = Pg::start();
    seed(&pg);
    let moto = Moto::start();
    moto.bucket(BUCKET, true);
    let s = setup();
    let cfg = s.config(
        &pg.conninfo(),
        Some((&moto.endpoint(), 0)),
        "databases = [\"shop\"]\nglobals = false\nretention_days = 14\nskip_row_counts = [\"shop\"]",
    );

    // Seeded history on the filesystem: one expired complete backup, one young one.
    let base = s.fs().join("test-host/postgres/shop");
    for stamp in ["20200101T000000Z", "20991231T000000Z"] {
        std::fs::create_dir_all(base.join(stamp)).unwrap();
        std::fs::write(base.join(stamp).join("shop.dump.pgp"), b"x").unwrap();
        std::fs::write(base.join(stamp).join("manifest.json"), b"{}").unwrap();
    }
    // On S3: an expired backup that is still under COMPLIANCE lock, and an expired unlocked one.
    moto.py(&format!(
        "until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)\n\
         for stamp, locked in [('20200101T000000Z', True), ('20200202T000000Z', False)]:\n\
         \x20   for name in ['shop.dump.pgp', 'manifest.json']:\n\
         \x20       body = b'{{}}'\n\
         \x20       md5 = base64.b64encode(hashlib.md5(body).digest()).decode()\n\
         \x20       extra = dict(ObjectLockMode='COMPLIANCE', ObjectLockRetainUntilDate=until) if locked else {{}}\n\
         \x20       s3.put_object(Bucket='{BUCKET}', Key='test-host/postgres/shop/' + stamp + '/' + name, Body=body, ContentMD5=md5, **extra)"
    ));

    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    // Row counting switched off for this database: the manifest says so.
    let current = s
        .manifests("shop")
        .into_iter()
        .find(|(d, _)| !d.ends_with("20991231T000000Z"))
        .unwrap()
        .1;
    assert_eq!(current["row_counts"], Value::Null, "{current}");
    assert_eq!(current["row_counts_skipped"], true, "{current}");

    assert!(
        !base.join("20200101T000000Z").exists(),
        "expired filesystem backup deleted"
    );
    assert!(
        base.join("20991231T000000Z/manifest.json").exists(),
        "young backup kept"
    );
    let keys = moto.keys(BUCKET);
    assert!(
        keys.iter()
            .any(|k| k.contains("20200101T000000Z/shop.dump.pgp")),
        "locked object kept: {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.contains("20200101T000000Z/manifest.json")),
        "a locked backup keeps its manifest: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.contains("20200202T000000Z")),
        "expired unlocked backup deleted: {keys:?}"
    );
    let prom = s.scratch.prom();
    // Filesystem: the new one + the young one. S3: the new one + the locked one.
    assert_eq!(
        metric(
            &prom,
            "cloudnx_backup_retained{database=\"shop\",destination=\"local\"}"
        ),
        Some(2.0),
        "{prom}"
    );
    assert_eq!(
        metric(
            &prom,
            "cloudnx_backup_retained{database=\"shop\",destination=\"s3\"}"
        ),
        Some(2.0),
        "{prom}"
    );
    let audit = std::fs::read_to_string(s.scratch.path("state/audit.jsonl")).unwrap();
    let deletions: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"backup.retention.delete\""))
        .collect();
    assert_eq!(
        deletions.len(),
        4,
        "two objects each on local and s3: {deletions:#?}"
    );
    assert!(deletions.iter().all(|l| l.contains("expired")));
}

#[test]
fn sigv4_is_accepted_by_a_checking_server_and_a_wrong_secret_fails_without_manifest() {
    let pg = Pg::start();
    seed(&pg);
    let moto = Moto::start_with_auth();
    moto.bucket(BUCKET, true);
    let s = setup();

    // Wrong secret: the server refuses every signature; the filesystem copy still completes.
    let cfg = s.config_with_keys(
        &pg.conninfo(),
        Some((&moto.endpoint(), 1)),
        (&moto.key_id, "not-the-secret"),
        "databases = [\"app\"]\nglobals = false",
    );
    let out = support::agent(&cfg, &["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let text = support::text(&out);
    assert!(
        text.contains("app to s3") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret"),
        "the secret never appears in messages"
    );
    assert!(
        moto.keys(BUCKET).is_empty(),
        "nothing stored with a wrong secret"
    );
    assert_eq!(s.manifests("app").len(), 1);

    // The right key: every request of the upload path (CreateMultipartUpload
    // with Object Lock headers, UploadPart, CompleteMultipartUpload,
    // PutObjectRetention, HEAD, PUT of the manifest) passes the signature check.
    let cfg = s.config_with_keys(
        &pg.conninfo(),
        Some((&moto.endpoint(), 1)),
        (&moto.key_id, &moto.secret),
        "databases = [\"app\"]\nglobals = false",
    );
    let out = support::agent(&cfg, &["backup"]);
    let keys = moto.keys(BUCKET);
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("manifest.json")).count(),
        1,
        "{keys:?}\n{}",
        support::text(&out)
    );
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("app.dump.pgp")).count(),
        1,
        "{keys:?}"
    );
    // moto's checker rejects any ListObjectsV2 whose prefix contains '/' (boto3's own
    // request too), so retention's listing may fail here; nothing else may.
    if !out.status.success() {
        let text = support::text(&out);
        let err = text
            .lines()
            .find(|l| l.starts_with("cloudnx-agent: backup failed"))
            .unwrap_or(&text);
        assert!(
            err.contains("retention of app on s3: listing") && !err.contains("app to s3"),
            "{text}"
        );
    }
}

#[test]
fn killed_pg_dump_aborts_the_s3_multipart_upload_and_stores_nothing() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE big");
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g",
    );
    let moto = Moto::start();
    moto.bucket(BUCKET, true);
    let s = setup();
    let cfg = s.config(
        &pg.conninfo(),
        Some((&moto.endpoint(), 1)),
        "databases = [\"big\"]\nglobals = false\nrow_counts = false",
    );
    let _lock = pg.lock_table("big", "t");
    let child = spawn_backup(&cfg);
    let dump_pid = wait_for_child(child.id(), "pg_dump");
    // Wait until the multipart upload exists on the server, then kill the dump.
    let uploads = || {
        moto.py(&format!(
            "print(len(s3.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads', [])))"
        ))
        .trim()
        .parse::<usize>()
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while uploads() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dump_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        killed.is_ok(),
        "pg_dump ended before the kill: {}",
        support::text(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert_eq!(uploads(), 0, "the multipart upload was aborted");
    assert!(
        moto.keys(BUCKET).is_empty(),
        "no object and no manifest: {:?}",
        moto.keys(BUCKET)
    );
    assert!(s.manifests("big").is_empty());
}

/// A root CLI run on a host whose `state_dir` belongs to the daemon's user
/// (here `nobody`) acts as that user, so everything it writes stays usable by
/// the daemon; the audit record still names the person who ran it.
#[test]
fn a_root_run_acts_as_the_state_dir_owner_and_leaves_only_files_the_daemon_can_use() {
    use std::os::unix::fs::MetadataExt;
    const NOBODY: u32 = 65534;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test checks what a root run does: run the suite as root (scripts/test)"
    );
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
    );
    let s = setup();
    for d in ["state", "metrics", "fs"] {
        let p = s.scratch.path(d);
        std::fs::create_dir_all(&p).unwrap();
        nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }
    let cfg = s.config(
        &pg.conninfo(),
        None,
        "databases = [\"app\"]\nglobals = false",
    );
    let out = support::agent(&cfg, &["backup"]);
    let text = support::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("running as nobody (uid 65534)"), "{text}");

    // Every file the run created, in the state dir, the metrics dir and the
    // destination, belongs to nobody.
    fn walk(d: &Path, out: &mut Vec<(PathBuf, u32)>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            out.push((p.clone(), e.metadata().unwrap().uid()));
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut files = Vec::new();
    for d in ["state", "metrics", "fs"] {
        walk(&s.scratch.path(d), &mut files);
    }
    assert!(files.len() > 5, "too few files: {files:?}");
    let root_owned: Vec<_> = files.iter().filter(|(_, u)| *u != NOBODY).collect();
    assert!(root_owned.is_empty(), "not owned by nobody: {root_owned:?}");
    assert_eq!(s.manifests("app").len(), 1);

    // The actor is still root, who ran it.
    let audit = std::fs::read_to_string(s.scratch.path("state/audit.jsonl")).unwrap();
    let first: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(first["actor"], "cli:root", "{first}");

    // And the daemon's user can run the next backup over those files.
    let out = std::process::Command::new(support::require("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(support::agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("backup")
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(s.manifests("app").len(), 2);
}
