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

#[test]
fn sigterm_mid_upload_leaves_no_stamp_directory_behind() {
    let rig = Rig::new(80_000);
    // Uncompressed: the dump is two 5 MiB parts; the run stops after the first.
    let cfg = rig.config(None, "compression_level = 0");
    let mut run =
        support::faults::Running::start(&cfg, &["backup"], "backup::after_part=sleep(60000)");
    run.wait_for("fail point backup::after_part reached", 60);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(run.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = run.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let app = rig.fs().join("test-host/postgres/app");
    let left: Vec<_> = std::fs::read_dir(&app)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
