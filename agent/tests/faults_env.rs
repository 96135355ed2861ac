//! Fault injection around the agent: PostgreSQL restarted mid-dump, the clock
//! jumped forward and back around retention (libfaketime), a read-only
//! state directory and a read-only filesystem destination. After each: the job's outcome is exact, nothing that looks
//! complete is partial, no good copy is lost, and the next run succeeds.

mod support;

use support::faults::{agent_at, metric, restart_postgres_fast, wait_for_pg_dump, Rig};

#[test]
fn postgres_restarted_mid_dump_fails_clearly_and_the_next_run_works() {
    // ~40 MB at -Z9: pg_dump runs for seconds.
    let rig = Rig::new(400_000);
    let cfg = rig.config(None, "compression_level = 9");
    let child = std::process::Command::new(support::agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("backup")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pg_dump(child.id());
    restart_postgres_fast(&rig.pg);
    let out = child.wait_with_output().unwrap();
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("pg_dump for database app failed"),
        "names the failing step: {text}"
    );
    assert!(
        // Where the restart catches pg_dump decides the server's words.
        text.contains("terminating connection")
            || text.contains("server closed the connection")
            || text.contains("the database system is shutting down"),
        "carries pg_dump's reason: {text}"
    );
    assert!(rig.complete_stamps().is_empty(), "{:?}", rig.fs_files());
    assert!(
        rig.fs_files().is_empty(),
        "nothing left: {:?}",
        rig.fs_files()
    );
    assert_eq!(
        metric(&rig.prom(), "cloudnx_job_last_status{kind=\"backup\"}"),
        Some(0.0)
    );

    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(rig.assert_complete_backups_whole(), 1);
    assert_eq!(
        metric(&rig.prom(), "cloudnx_job_last_status{kind=\"backup\"}"),
        Some(1.0)
    );
}

fn backup(cfg: &std::path::Path, offset: Option<&str>) -> std::process::Output {
    match offset {
        Some(o) => agent_at(o, cfg, &["backup"]),
        None => support::agent(cfg, &["backup"]),
    }
}

#[test]
fn clock_jumps_around_retention_keep_the_newest_and_never_the_only_good_copy_lost() {
    let rig = Rig::new(2_000);
    let cfg = rig.config(None, "retention_days = 7\nkeep_min = 2");
    for _ in 0..3 {
        let out = backup(&cfg, None);
        assert!(out.status.success(), "{}", support::text(&out));
    }
    let now3 = rig.complete_stamps();
    assert_eq!(now3.len(), 3, "three distinct stamps, even within a second");

    // +30 days, and this run fails (no such database): nothing expired may go,
    // since this run made no new good copy.
    let out = agent_at("+30d", &cfg, &["backup", "--database", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::text(&out));
    assert_eq!(
        rig.complete_stamps(),
        now3,
        "a failed run deletes no good copy"
    );

    // +30 days, a good run: everything else is 30 days old, yet the newest
    // keep_min (2) complete backups stay: the new one and the newest old one.
    let out = backup(&cfg, Some("+30d"));
    assert!(out.status.success(), "{}", support::text(&out));
    let after = rig.complete_stamps();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], now3[2], "the newest old backup is kept");
    let future = after[1].clone();
    assert!(future > now3[2]);
    assert_eq!(rig.assert_complete_backups_whole(), 2);

    // −30 days: the future backup is not old, nothing is deleted, the new
    // stamp differs from every other.
    let out = backup(&cfg, Some("-30d"));
    assert!(out.status.success(), "{}", support::text(&out));
    let back = rig.complete_stamps();
    assert_eq!(back.len(), 3, "nothing deleted after a jump back: {back:?}");
    assert!(back.contains(&future) && back.contains(&now3[2]));
    let past = back[0].clone();
    assert!(past < now3[2], "stamped 30 days ago: {back:?}");

    // A normal run again: fine; the future one stays (not older than now).
    let out = backup(&cfg, None);
    assert!(out.status.success(), "{}", support::text(&out));
    let last = rig.complete_stamps();
    assert!(last.contains(&future), "{last:?}");
    assert!(
        !last.contains(&past),
        "the 30-day-old one expired: {last:?}"
    );
    assert_eq!(rig.assert_complete_backups_whole(), last.len());
    rig.assert_audit_verifies(&cfg);
}

/// Unmounts on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &std::path::Path) {
    let ok = std::process::Command::new("mount")
        .args(args)
        .arg(at)
        .status()
        .unwrap();
    assert!(ok.success(), "mount {args:?} {} (needs root)", at.display());
}

#[test]
fn read_only_state_dir_fails_the_job_naming_the_path_and_writes_nothing() {
    let rig = Rig::new(2_000);
    let cfg = rig.config(None, "");
    // A real read-only filesystem: chmod does not stop root.
    let state = rig.scratch.path("state");
    std::fs::create_dir_all(&state).unwrap();
    mount(&["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"], &state);
    let _guard = Mount(state.clone());
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let before_fs = rig.fs_files();
    let before_prom = rig.prom();

    mount(&["-o", "remount,ro"], &state);
    let out = support::agent(&cfg, &["backup"]);
    let text = support::text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&state.display().to_string()),
        "the error names the state dir: {text}"
    );
    assert!(text.contains("Read-only file system"), "{text}");
    assert_eq!(rig.fs_files(), before_fs, "no backup written without state");

    mount(&["-o", "remount,rw"], &state);
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(rig.assert_complete_backups_whole(), 2);
    rig.assert_audit_verifies(&cfg);
    assert_ne!(rig.prom(), before_prom);
}

#[test]
fn read_only_filesystem_destination_fails_the_job_naming_the_path_and_erofs() {
    let rig = Rig::new(2_000);
    let cfg = rig.config(None, "");
    let fs = rig.fs();
    std::fs::create_dir_all(&fs).unwrap();
    mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &fs);
    let _guard = Mount(fs.clone());
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    let before = rig.fs_files();

    mount(&["-o", "remount,ro"], &fs);
    let out = support::agent(&cfg, &["backup"]);
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let error = text
        .lines()
        .find(|l| l.contains("app to local:"))
        .unwrap_or_else(|| panic!("the error names the destination: {text}"));
    assert!(
        error.contains(&fs.display().to_string()),
        "names the path: {error}"
    );
    assert!(
        error.contains("Read-only file system"),
        "names EROFS: {error}"
    );
    assert_eq!(rig.fs_files(), before, "nothing written");

    mount(&["-o", "remount,rw"], &fs);
    let out = support::agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(rig.assert_complete_backups_whole(), 2);
}
