//! `posture` end to end against THIS machine's real apt and dpkg (as root):
//! a local `file:` repository whose Release file says Debian-Security offers
//! a newer version of an installed test package (TESTING.md, "A pending
//! security update"). The agent's counts must equal `apt-get -s upgrade`'s on
//! the same machine, the package must count as security, its pending-since
//! clock must survive a newer version (1.2 published after 1.1), and it must
//! leave the count once upgraded. The machine's own sources stay untouched:
//! the agent and the test's apt calls get them plus the test repository
//! through `APT_CONFIG`, and only the test repository is ever updated.
//! The package and the repository's list files are removed even on failure.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PKG: &str = "cnx-posture-test";
const LISTS: &str = "/var/lib/apt/lists";

fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", support::text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// apt's name for the list files of `file:DIR ./` (`/` → `_`).
fn list_prefix(repo: &Path) -> String {
    format!("{}_", repo.display().to_string().replace('/', "_"))
}

/// The test repository, its sources and the installed package; removed on drop.
struct Rig {
    dir: tempfile::TempDir,
    /// `APT_CONFIG` for the agent and the test's apt calls: the machine's
    /// sources plus the test repository.
    apt_config: PathBuf,
    /// The test repository alone, for `apt-get update`.
    only_list: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PKG]).output();
        remove_lists(&list_prefix(&self.repo()));
    }
}

fn remove_lists(prefix: &str) {
    for dir in [
        Path::new(LISTS).to_path_buf(),
        Path::new(LISTS).join("partial"),
    ] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Rig {
    fn new() -> Rig {
        use std::os::unix::fs::PermissionsExt;
        // List files of earlier runs whose repository is gone (a killed run).
        for e in std::fs::read_dir(LISTS).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("_tmp_cnx-posture-") {
                let dir = format!("/tmp/cnx-posture-{}", rest.split('_').next().unwrap_or(""));
                if !Path::new(&dir).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // apt fetches a file: repository as the _apt user: world-readable.
        let dir = tempfile::Builder::new()
            .prefix("cnx-posture-")
            .rand_bytes(8)
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        for sub in ["repo", "build", "sources.list.d"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let line = format!("deb [trusted=yes] file:{} ./\n", d.join("repo").display());
        let only_list = d.join("only.list");
        std::fs::write(&only_list, &line).unwrap();
        // The machine's source files (only those apt reads) beside ours.
        for e in std::fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".list") || name.ends_with(".sources") {
                std::os::unix::fs::symlink(e.path(), d.join("sources.list.d").join(&name)).unwrap();
            }
        }
        std::fs::write(d.join("sources.list.d/zz-cnx-posture-test.list"), &line).unwrap();
        let apt_config = d.join("apt.conf");
        std::fs::write(
            &apt_config,
            format!(
                "Dir::Etc::sourceparts \"{}\";\n",
                d.join("sources.list.d").display()
            ),
        )
        .unwrap();
        Rig {
            dir,
            apt_config,
            only_list,
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// `PKG_VERSION_all.deb`, built with dpkg-deb.
    fn build(&self, version: &str) -> PathBuf {
        let root = self.dir.path().join("build").join(version);
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc").join(PKG)).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: cloudnx tests <t@test.invalid>\n\
                 Section: misc\nPriority: optional\nDescription: cloudnx-agent posture test package\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("usr/share/doc").join(PKG).join("version"),
            version,
        )
        .unwrap();
        let deb = self.dir.path().join(format!("{PKG}_{version}_all.deb"));
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&root)
            .arg(&deb));
        deb
    }

    /// Offer `deb` (only it) from the repository, as Debian's security archive,
    /// and update apt's lists of that repository alone.
    fn publish(&self, deb: &Path) {
        use sha2::Digest;
        let repo = self.repo();
        for e in std::fs::read_dir(&repo).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        std::fs::copy(deb, repo.join(deb.file_name().unwrap())).unwrap();
        let packages = run(Command::new("dpkg-scanpackages")
            .current_dir(&repo)
            .args(["-m", "."]));
        std::fs::write(repo.join("Packages"), &packages).unwrap();
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S UTC");
        let sha = hex::encode(sha2::Sha256::digest(packages.as_bytes()));
        std::fs::write(
            repo.join("Release"),
            format!(
                "Origin: Debian\nLabel: Debian-Security\nSuite: bookworm-security\nCodename: bookworm-security\n\
                 Date: {date}\nSHA256:\n {sha} {} Packages\n",
                packages.len()
            ),
        )
        .unwrap();
        run(Command::new("apt-get")
            .args(["-q", "update", "-o"])
            .arg(format!("Dir::Etc::sourcelist={}", self.only_list.display()))
            .args([
                "-o",
                "Dir::Etc::sourceparts=-",
                "-o",
                "APT::Get::List-Cleanup=0",
            ]));
    }

    /// `apt-get -s upgrade` on this machine with the test repository:
    /// (all Inst lines, those from a security release).
    fn apt_counts(&self) -> (u64, u64) {
        let out = run(Command::new("apt-get")
            .env("APT_CONFIG", &self.apt_config)
            .args(["-s", "-o", "Debug::NoLocking=1", "upgrade"]));
        let inst: Vec<&str> = out.lines().filter(|l| l.starts_with("Inst ")).collect();
        let security = inst
            .iter()
            .filter(|l| l.contains("Debian-Security:") || l.contains("-security"))
            .count();
        (inst.len() as u64, security as u64)
    }
}

/// One `posture --json` run: the job record.
fn posture(cfg: &Path, rig: &Rig) -> Value {
    let o = Command::new(support::agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(["posture", "--json"])
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .env("APT_CONFIG", &rig.apt_config)
        .output()
        .unwrap();
    let rec: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("posture --json: {e}\n{}", support::text(&o)));
    assert_eq!(rec["state"], "succeeded", "{rec:#}\n{}", support::text(&o));
    rec
}

fn security_entry(rec: &Value) -> Option<&Value> {
    rec["result"]["updates"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["package"] == PKG)
}

fn metric(prom: &str, series: &str) -> Option<f64> {
    prom.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn posture_counts_a_pending_security_update_like_apt_and_keeps_its_clock_across_versions() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs a package with dpkg: run it as root"
    );
    for p in ["apt-get", "dpkg-deb", "dpkg-scanpackages"] {
        support::require(p);
    }
    let rig = Rig::new();
    let _ = Command::new("dpkg").args(["--purge", PKG]).output();
    let (v10, v11, v12) = (rig.build("1.0"), rig.build("1.1"), rig.build("1.2"));
    run(Command::new("dpkg").arg("-i").arg(&v10));
    rig.publish(&v11);

    let s = support::Scratch::new();
    let cfg = s.config("[posture]\nmaintenance_window = \"Sun 22:00-24:00\"\n");

    // 1.1 pending from a security origin; every count as apt-get -s upgrade's.
    let first = posture(&cfg, &rig);
    let (apt_all, apt_security) = rig.apt_counts();
    let pending = &first["result"]["updates"]["pending"];
    let (sec1, other1) = (
        pending["security"].as_u64().unwrap(),
        pending["other"].as_u64().unwrap(),
    );
    assert_eq!(sec1 + other1, apt_all, "{pending}");
    assert_eq!(sec1, apt_security, "{pending}");
    let e =
        security_entry(&first).unwrap_or_else(|| panic!("{PKG} not a security update: {first:#}"));
    assert_eq!(e["current"], "1.0");
    assert_eq!(e["candidate"], "1.1");
    assert_eq!(e["releases"], "Debian-Security:bookworm-security");
    assert_eq!(e["held_back"], false);
    let since = e["pending_since"].as_str().unwrap().to_owned();
    let prom = s.prom();
    assert_eq!(
        metric(&prom, "cloudnx_host_updates_pending{origin=\"security\"}"),
        Some(sec1 as f64),
        "{prom}"
    );
    assert_eq!(
        metric(&prom, "cloudnx_host_updates_pending{origin=\"other\"}"),
        Some(other1 as f64),
        "{prom}"
    );
    let age1 = metric(&prom, "cloudnx_host_security_update_oldest_pending_seconds").unwrap();

    // 1.2 replaces 1.1 before anyone installed it: the clock keeps running.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    rig.publish(&v12);
    let second = posture(&cfg, &rig);
    let e = security_entry(&second).unwrap_or_else(|| panic!("{second:#}"));
    assert_eq!(e["candidate"], "1.2");
    assert_eq!(
        e["pending_since"],
        since.as_str(),
        "a newer version reset the clock"
    );
    let (apt_all, apt_security) = rig.apt_counts();
    let pending = &second["result"]["updates"]["pending"];
    assert_eq!(pending["security"].as_u64().unwrap(), apt_security);
    assert_eq!(
        pending["security"].as_u64().unwrap() + pending["other"].as_u64().unwrap(),
        apt_all
    );
    let prom = s.prom();
    let age2 = metric(&prom, "cloudnx_host_security_update_oldest_pending_seconds").unwrap();
    assert!(
        age2 >= age1 + 2.0,
        "the age did not grow: {age1} then {age2}"
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(s.path("state/posture/state.json")).unwrap())
            .unwrap();
    assert!(state["security_since"][PKG].is_i64(), "{state:#}");

    // Upgraded: out of the count and out of the clocks.
    run(Command::new("apt-get")
        .env("APT_CONFIG", &rig.apt_config)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-y", "install", "--only-upgrade", PKG]));
    assert_eq!(
        run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", PKG])),
        "1.2"
    );
    let third = posture(&cfg, &rig);
    assert!(security_entry(&third).is_none(), "{third:#}");
    let (apt_all, apt_security) = rig.apt_counts();
    let pending = &third["result"]["updates"]["pending"];
    let sec3 = pending["security"].as_u64().unwrap();
    assert_eq!(sec3, apt_security);
    assert_eq!(sec3 + pending["other"].as_u64().unwrap(), apt_all);
    assert_eq!(
        sec3 + 1,
        second["result"]["updates"]["pending"]["security"]
            .as_u64()
            .unwrap()
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(s.path("state/posture/state.json")).unwrap())
            .unwrap();
    assert!(state["security_since"].get(PKG).is_none(), "{state:#}");
}
