//! Steps made to fail at named fail points (built with `--features
//! failpoints`): the failure stays where it happened and nothing that looks
//! complete is left.

mod support;

use support::faults::Rig;

#[test]
fn a_failed_row_count_fails_that_database_with_no_manifest_and_the_others_go_on() {
    let rig = Rig::new(5_000);
    rig.pg
        .psql("postgres", "CREATE DATABASE other TEMPLATE app");
    let cfg = rig.config(None, "");
    std::fs::create_dir_all(rig.scratch.path("agent.d")).unwrap();
    std::fs::write(
        rig.scratch.path("agent.d/dbs.toml"),
        "[backup]\ndatabases = [\"app\", \"other\"]\n",
    )
    .unwrap();
    // The first database's count fails, the second's does not.
    let out = std::process::Command::new(support::agent_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--json", "backup"])
        .env("FAILPOINTS", "backup::row_counts=1*return->off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.starts_with("app: taking the schema fingerprint and row counts")
            && err.contains("fail point backup::row_counts"),
        "{err}"
    );
    let files = rig.fs_files();
    assert!(
        !files
            .iter()
            .any(|f| f.contains("/postgres/app/") && f.ends_with("manifest.json")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.contains("/postgres/other/") && f.ends_with("manifest.json")),
        "{files:?}"
    );
}
