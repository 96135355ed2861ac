//! Backups of every database a host has (issue 22): any name PostgreSQL
//! accepts, several databases at once, one failing database alone, and row
//! counts taken beside the dump — exact for the dump's moment while writes go on.

mod support;

use serde_json::Value;
use std::path::Path;
use support::faults::Rig;
use support::{agent, text};

/// Names a hosting customer may choose; each must back up and restore by name.
const ODD: [&str; 5] = ["a/b", "_globals", ".x", "50%", "données Ωmega"];

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn manifests(rig: &Rig) -> Vec<Value> {
    fn walk(rig: &Rig, d: &Path, out: &mut Vec<Value>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(rig, &p, out);
            } else if p.file_name().unwrap() == "manifest.json" {
                out.push(rig.gpg.manifest(&p));
            }
        }
    }
    let mut out = Vec::new();
    walk(rig, &rig.fs(), &mut out);
    out
}

#[test]
fn odd_names_back_up_and_restore_by_name_and_a_failing_database_fails_alone() {
    let rig = Rig::new(100);
    for (i, name) in ODD.iter().enumerate() {
        rig.pg
            .psql("postgres", &format!("CREATE DATABASE {}", quoted(name)));
        rig.pg.psql(
            name,
            &format!(
                "CREATE TABLE t AS SELECT g FROM generate_series(1, {}) g",
                10 + i
            ),
        );
    }
    rig.pg.psql("postgres", "CREATE DATABASE closed");
    rig.pg
        .psql("postgres", "ALTER DATABASE closed ALLOW_CONNECTIONS false");
    let list: Vec<String> = ODD
        .iter()
        .chain(["closed", "app"].iter())
        .map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let cfg = rig.config(None, "parallel_databases = 2");
    // The rig names `app` alone; name them all in a drop-in.
    std::fs::create_dir_all(rig.scratch.path("agent.d")).unwrap();
    std::fs::write(
        rig.scratch.path("agent.d/dbs.toml"),
        format!("[backup]\ndatabases = [{}]\n", list.join(", ")),
    )
    .unwrap();
    let out = agent(&cfg, &["--json", "backup"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("closed") && err.contains("not currently accepting connections"),
        "{err}"
    );
    for name in ODD.iter().chain(["app"].iter()) {
        assert!(!err.contains(&format!("{name}:")), "{name} failed: {err}");
    }
    // Every manifest names its real database; every key stays inside the destination.
    let ms = manifests(&rig);
    let mut names: Vec<&str> = ms.iter().map(|m| m["database"].as_str().unwrap()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = ODD.iter().copied().chain(["app"]).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    let root = rig.fs().join("test-host/postgres");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "%2Ex",
            "%5Fglobals",
            "50%25",
            "a%2Fb",
            "app",
            "données Ωmega"
        ]
    );

    // Each restores by its real name, to the rows it had.
    let target = rig.pg.conninfo();
    for (i, name) in ODD.iter().enumerate() {
        let into = format!("restored_{i}");
        let o = agent(
            &cfg,
            &[
                "restore",
                "--database",
                name,
                "--target",
                &target,
                "--target-database",
                &into,
            ],
        );
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert_eq!(
            rig.pg.psql(&into, "SELECT count(*) FROM t").trim(),
            (10 + i).to_string()
        );
    }
    let listed: Value = serde_json::from_slice(
        &agent(&cfg, &["--json", "backups", "list", "--database", "a/b"]).stdout,
    )
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["database"], "a/b");
}

#[test]
fn counts_beside_the_dump_are_exact_for_its_snapshot_while_writes_go_on() {
    let rig = Rig::new(300_000);
    let cfg = rig.config(None, "compression_level = 6");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let conn = rig.pg.conninfo();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let st = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
                    .args(["-X", "-q", "-d", &format!("{conn} dbname=app"), "-c"])
                    .arg("INSERT INTO t SELECT g, 'late' FROM generate_series(1, 500) g")
                    .status()
                    .unwrap();
                assert!(st.success());
                n += 1;
            }
            n
        })
    };
    // The writer is going before the backup starts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = agent(&cfg, &["backup"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(batches > 2, "the writer ran {batches} batches");
    let m = manifests(&rig).pop().unwrap();
    let counted = m["row_counts"]["public.t"].as_i64().unwrap();
    let live: i64 = rig
        .pg
        .psql("app", "SELECT count(*) FROM t")
        .trim()
        .parse()
        .unwrap();
    assert!(
        counted >= 300_000 && counted < live,
        "counted {counted}, live {live}"
    );
    // The dump holds exactly the counted rows: restore checks every count.
    let o = agent(
        &cfg,
        &[
            "restore",
            "--database",
            "app",
            "--target",
            &rig.pg.conninfo(),
            "--target-database",
            "copy",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        rig.pg.psql("copy", "SELECT count(*) FROM t").trim(),
        counted.to_string()
    );
}

#[test]
fn four_databases_two_at_a_time_have_complete_manifests_and_one_fails_alone() {
    let rig = Rig::new(20_000);
    for name in ["b1", "b2", "b3"] {
        rig.pg
            .psql("postgres", &format!("CREATE DATABASE {name} TEMPLATE app"));
    }
    rig.pg.psql("postgres", "CREATE DATABASE shut");
    rig.pg
        .psql("postgres", "ALTER DATABASE shut ALLOW_CONNECTIONS false");
    let cfg = rig.config(None, "parallel_databases = 2");
    std::fs::create_dir_all(rig.scratch.path("agent.d")).unwrap();
    std::fs::write(
        rig.scratch.path("agent.d/dbs.toml"),
        "[backup]\ndatabases = [\"app\", \"b1\", \"shut\", \"b2\", \"b3\"]\n",
    )
    .unwrap();
    let out = agent(&cfg, &["--json", "backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<&str> = rec["result"]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["database"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["app", "b1", "shut", "b2", "b3"],
        "results keep the configured order"
    );
    for d in rec["result"]["databases"].as_array().unwrap() {
        let failed = d["error"].is_string();
        assert_eq!(failed, d["database"] == "shut", "{d}");
    }
    let ms = manifests(&rig);
    assert_eq!(ms.len(), 4);
    for m in &ms {
        let dir = rig
            .fs()
            .join("test-host/postgres")
            .join(m["database"].as_str().unwrap());
        let stamp = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let obj = std::fs::read(stamp.join(m["object"].as_str().unwrap())).unwrap();
        assert_eq!(obj.len() as u64, m["size_bytes"].as_u64().unwrap());
        assert_eq!(support::faults::sha256_hex(&obj), m["sha256"]);
        assert_eq!(m["row_counts"]["public.t"], 20_000);
    }
}
