//! Hostile local users (issue 23): another account on the host that can write
//! a directory the agent also writes — node_exporter's textfile directory, the
//! drill's spool — must not be able to redirect, read or delete anything
//! through it. Each test plants what an attacker would, then runs the real
//! agent against real PostgreSQL.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use support::faults::Rig;
use support::{agent, text};

/// A 0600 file standing for the audit log, a key, state.
fn victim(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let v = dir.join("victim.secret");
    std::fs::write(&v, "do not touch").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).unwrap();
    v
}

/// Set an entry's times ten minutes back, without following a symlink.
fn ten_minutes_old(p: &Path) {
    let st = std::process::Command::new("touch")
        .args(["-h", "-d", "10 minutes ago"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

fn assert_untouched(v: &Path) {
    assert_eq!(std::fs::read_to_string(v).unwrap(), "do not touch");
    assert_eq!(
        std::fs::metadata(v).unwrap().permissions().mode() & 0o777,
        0o600,
        "the victim's mode changed"
    );
}

#[test]
fn a_symlink_spray_in_the_textfile_directory_redirects_no_write() {
    let rig = Rig::new(1000);
    let cfg = rig.config(None, "");
    let metrics = rig.scratch.path("metrics");
    let v = victim(&rig.scratch.dir.path().join("state-like"));
    // The exposition file itself, and the temp names earlier versions used
    // (`.cloudnx_agent.prom.<pid>.tmp`) for the pids the next processes get.
    std::os::unix::fs::symlink(&v, metrics.join("cloudnx_agent.prom")).unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last..last + 3000 {
        let _ =
            std::os::unix::fs::symlink(&v, metrics.join(format!(".cloudnx_agent.prom.{pid}.tmp")));
    }
    let out = agent(&cfg, &["backup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_untouched(&v);
    let prom = metrics.join("cloudnx_agent.prom");
    let meta = std::fs::symlink_metadata(&prom).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the metrics file is still a symlink"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert!(std::fs::read_to_string(&prom)
        .unwrap()
        .contains("cloudnx_job_last_status{kind=\"backup\"} 1"));
}

#[test]
fn a_spool_directory_others_can_write_or_that_another_user_owns_is_refused() {
    let rig = Rig::new(1000);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    let spool = rig.scratch.path("spool");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = agent(&cfg, &["restore-drill"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("not safe for decrypted backups"), "{t}");
    assert!(t.contains("without the sticky bit"), "{t}");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "nothing created in it"
    );

    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&spool, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = agent(&cfg, &["restore-drill"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("belongs to uid 65534"), "{t}");

    // A sticky shared directory (like /var/tmp) is fine.
    nix::unistd::chown(&spool, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = agent(&cfg, &["restore-drill"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_stale_drill_clean_up_removes_only_the_agents_own_directories() {
    let rig = Rig::new(1000);
    let cfg = rig.config(None, "");
    assert!(agent(&cfg, &["backup"]).status.success());
    let spool = rig.scratch.path("spool");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Another user's drill-looking directory, old enough to look stale.
    let foreign = spool.join("drill-someone-elses");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("their-file"), "theirs").unwrap();
    nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    ten_minutes_old(&foreign);
    // And a drill-looking symlink to one of ours.
    let ours = rig.scratch.path("precious");
    std::fs::create_dir(&ours).unwrap();
    std::fs::write(ours.join("data"), "keep").unwrap();
    std::os::unix::fs::symlink(&ours, spool.join("drill-link")).unwrap();
    ten_minutes_old(&spool.join("drill-link"));

    let out = agent(&cfg, &["restore-drill"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(foreign.join("their-file")).unwrap(),
        "theirs"
    );
    assert_eq!(std::fs::metadata(&foreign).unwrap().uid(), 65534);
    assert_eq!(std::fs::read_to_string(ours.join("data")).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(spool.join("drill-link")).is_ok());
}

#[test]
fn a_symlink_inside_a_filesystem_destination_is_refused_not_followed() {
    let rig = Rig::new(1000);
    let cfg = rig.config(None, "");
    let elsewhere = rig.scratch.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(rig.fs().join("test-host/postgres")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, rig.fs().join("test-host/postgres/app")).unwrap();
    let out = agent(&cfg, &["backup"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("test-host/postgres/app"), "{t}");
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "a backup was written through the symlink"
    );
}
