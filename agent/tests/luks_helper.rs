//! The privileged LUKS helper (docs/adr/0008-privileges.md) end to end: the real
//! `cloudnx-luks-helper` binary on a unix socket as stdin/stdout (what systemd's
//! Accept=yes gives it), and an unprivileged `luks-check` that asks it, against
//! images made with the real cryptsetup CLI.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::luks::{cryptsetup, format, image, FAST_ARGON, PBKDF2};
use support::Scratch;

const NOBODY: u32 = 65534;

/// A config with its own state and metrics dirs, the LUKS policy and `volumes`.
fn config(s: &Scratch, tag: &str, volumes: &str, socket: Option<&Path>) -> PathBuf {
    let st = s.path(&format!("{tag}-state"));
    let m = s.path(&format!("{tag}-metrics"));
    std::fs::create_dir_all(&m).unwrap();
    let sock = socket.map_or(String::new(), |p| {
        format!("helper_socket = \"{}\"\n", p.display())
    });
    let body = format!(
        "host_id = \"test-host\"\nstate_dir = \"{s}\"\ntimezone = \"UTC\"\n\n[metrics]\ntextfile_dir = \"{m}\"\n\n[audit]\npath = \"{s}/audit.jsonl\"\nsigning_key_file = \"{s}/audit.ed25519.pem\"\n\n[luks]\nheader_backup_dir = \"{s}/luks-headers\"\n{sock}[luks.policy]\nluks_version = 2\ncipher = \"aes-xts-plain64\"\nkey_bits = 512\npbkdf = \"argon2id\"\nmax_keyslots = 2\n\n{volumes}",
        s = st.display(),
        m = m.display()
    );
    let p = s.path(&format!("{tag}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

fn volume(name: &str, device: &Path, extra: &str) -> String {
    format!(
        "[[luks.volumes]]\nname = \"{name}\"\ndevice = \"{}\"\nrequire_open = false\n{extra}\n",
        device.display()
    )
}

/// Root-only images: `disks/` is 0700 root, so only a root process can open them.
fn images(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let d = s.path("disks");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = s.secret("keys/k0", "first passphrase");
    let good = image(&d, "good.img");
    format(
        &good,
        &key,
        &[&["--type", "luks2"][..], FAST_ARGON].concat(),
    );
    let weak = image(&d, "weak.img");
    format(&weak, &key, &[&["--type", "luks2"][..], PBKDF2].concat());
    (good, weak, key)
}

/// Run `cloudnx-luks-helper` with one end of a socketpair as stdin and
/// stdout; send `request` raw; (exit code, answer).
fn ask_helper(cfg: &Path, request: &[u8]) -> (i32, serde_json::Value) {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let out = theirs.try_clone().unwrap();
    let child = Command::new(support::helper_bin())
        .arg("--config")
        .arg(cfg)
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cloudnx-luks-helper");
    // The helper may answer before reading everything (oversized requests).
    let _ = ours.write_all(request);
    let _ = ours.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    ours.read_to_end(&mut answer).unwrap();
    let o = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&answer).unwrap_or_else(|e| {
        panic!(
            "answer is not one JSON line ({e}): {:?}; stderr {}",
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(answer.ends_with(b"\n") && answer.iter().filter(|b| **b == b'\n').count() == 1);
    (o.status.code().unwrap_or(-1), v)
}

fn request(action: &str, volume: &str) -> Vec<u8> {
    format!("{{\"action\":\"{action}\",\"volume\":\"{volume}\"}}\n").into_bytes()
}

#[test]
fn helper_answers_the_header_summary_of_a_configured_volume() {
    let s = Scratch::new();
    let (good, weak, _) = images(&s);
    let cfg = config(
        &s,
        "root",
        &(volume("good", &good, "") + &volume("weak", &weak, "")),
        None,
    );
    let (code, a) = ask_helper(&cfg, &request("inspect", "good"));
    assert_eq!(code, 0, "{a}");
    assert_eq!(a["ok"], true, "{a}");
    let h = &a["result"]["detail"];
    assert_eq!(a["result"]["state"], "luks", "{a}");
    assert_eq!(h["luks_version"], 2);
    assert_eq!(h["cipher"], "aes");
    assert_eq!(h["cipher_mode"], "xts-plain64");
    assert_eq!(h["key_bits"], 512);
    let uuid = cryptsetup(&["luksUUID", good.to_str().unwrap()]);
    assert_eq!(h["uuid"], uuid.trim());
    assert_eq!(h["keyslots"][0]["pbkdf"]["kind"], "argon2id");
    let (_, a) = ask_helper(&cfg, &request("inspect", "weak"));
    assert_eq!(
        a["result"]["detail"]["keyslots"][0]["pbkdf"]["kind"],
        "pbkdf2"
    );
}

#[test]
fn helper_header_backup_is_bytes_cryptsetup_accepts_as_a_luks_header() {
    let s = Scratch::new();
    let (good, _, _) = images(&s);
    let cfg = config(&s, "root", &volume("good", &good, ""), None);
    let (code, a) = ask_helper(&cfg, &request("header-backup", "good"));
    assert_eq!(code, 0, "{a}");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(a["result"]["bytes"].as_str().expect("result.bytes"))
        .unwrap();
    let f = s.path("backup.img");
    std::fs::write(&f, &bytes).unwrap();
    cryptsetup(&["isLuks", f.to_str().unwrap()]);
    assert_eq!(
        cryptsetup(&["luksUUID", f.to_str().unwrap()]),
        cryptsetup(&["luksUUID", good.to_str().unwrap()])
    );
}

#[test]
fn helper_open_without_device_mapper_fails_naming_device_mapper() {
    assert!(
        !Path::new("/sys/module/dm_mod").exists(),
        "this test expects a kernel without device-mapper"
    );
    let s = Scratch::new();
    let (good, _, key) = images(&s);
    let cfg = config(
        &s,
        "root",
        &volume("good", &good, &format!("keyfile = \"{}\"", key.display())),
        None,
    );
    let (code, a) = ask_helper(&cfg, &request("open", "good"));
    assert_eq!(code, 1, "{a}");
    assert_eq!(a["ok"], false);
    let e = a["error"].as_str().unwrap();
    assert!(
        e.contains("re-opening volume \"good\": device-mapper not available ("),
        "{e}"
    );
    assert!(!e.contains("first passphrase"));
}

#[test]
fn helper_refuses_unknown_volumes_and_malformed_or_oversized_requests() {
    let s = Scratch::new();
    let (good, _, _) = images(&s);
    let cfg = config(&s, "root", &volume("good", &good, ""), None);
    let big = format!(
        "{{\"action\":\"inspect\",\"volume\":\"{}\"}}\n",
        "x".repeat(300_000)
    );
    let cases: [(&[u8], &str); 5] = [
        (&request("inspect", "other"), "request: no volume \"other\""),
        (&request("format", "good"), "request: not {"),
        (
            br#"{"action":"inspect","volume":"good","device":"/dev/sda"}"#,
            "request: not {",
        ),
        (b"inspect good\n", "request: not {"),
        (big.as_bytes(), "request: longer than 4096 bytes"),
    ];
    for (req, want) in cases {
        let (code, a) = ask_helper(&cfg, req);
        assert_eq!(code, 1, "{a}");
        assert_eq!(a["ok"], false, "{a}");
        let e = a["error"].as_str().unwrap();
        assert!(e.contains(want), "{e} should contain {want}");
    }
}

/// The helper runs as root without CAP_DAC_OVERRIDE (its unit), so it cannot
/// read the agent's 0700 key directory: it must judge only the files of
/// `[luks]`, and still refuse a keyfile others can read. A refusal of the
/// configuration reaches the caller as an answer, not as a reset connection.
#[test]
fn helper_checks_only_the_files_it_uses_and_answers_configuration_errors() {
    let s = Scratch::new();
    let (good, _, key) = images(&s);
    // A secret of another section that check-config rejects (group-readable).
    let cfg = config(&s, "root", &volume("good", &good, ""), None);
    let audit_key = s.path("root-state/audit.ed25519.pem");
    std::fs::create_dir_all(audit_key.parent().unwrap()).unwrap();
    std::fs::write(&audit_key, "not read").unwrap();
    std::fs::set_permissions(&audit_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = support::agent(&cfg, &["check-config"]);
    assert_eq!(o.status.code(), Some(2), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("signing_key_file"),
        "{}",
        support::text(&o)
    );
    let (code, a) = ask_helper(&cfg, &request("inspect", "good"));
    assert_eq!((code, &a["ok"]), (0, &serde_json::json!(true)), "{a}");

    // Its own keyfile readable by others: refused, naming the key and the fix.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = config(
        &s,
        "loose",
        &volume("good", &good, &format!("keyfile = \"{}\"", key.display())),
        None,
    );
    let (code, a) = ask_helper(&cfg, &request("inspect", "good"));
    assert_eq!(code, 1, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("`keyfile`") && e.contains("chmod 0600"), "{e}");
}

/// systemd's Accept=yes, played by the test: per connection on `path`, one
/// `cloudnx-luks-helper --config cfg` with the connection as stdin/stdout.
struct SocketActivation {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl SocketActivation {
    fn start(path: &Path, cfg: &Path) -> Self {
        let l = UnixListener::bind(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, cfg) = (stop.clone(), cfg.to_owned());
        let thread = std::thread::spawn(move || {
            let mut children = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let out = conn.try_clone().unwrap();
                        children.push(
                            Command::new(support::helper_bin())
                                .arg("--config")
                                .arg(&cfg)
                                .stdin(Stdio::from(OwnedFd::from(conn)))
                                .stdout(Stdio::from(OwnedFd::from(out)))
                                .spawn()
                                .unwrap(),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            let n = children.len();
            for mut c in children {
                c.wait().unwrap();
            }
            n
        });
        SocketActivation {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop accepting; how many helpers ran.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The unprivileged agent's state and metrics directories, owned by nobody.
fn nobody_dirs(s: &Scratch) {
    for d in ["nobody-state", "nobody-metrics"] {
        std::fs::create_dir_all(s.path(d)).unwrap();
        nix::unistd::chown(
            &s.path(d),
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }
}

/// `luks-check --json` as nobody (no groups, no capabilities).
fn check_as_nobody(cfg: &Path) -> std::process::Output {
    Command::new(support::require("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(support::agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(["--json", "luks-check"])
        .env_remove("CLOUDNX_AGENT_CONFIG")
        .output()
        .unwrap()
}

/// The comparable part of a job record: per volume its failed checks, header
/// and whether a backup was written.
fn checks(rec: &serde_json::Value) -> BTreeMap<String, (serde_json::Value, serde_json::Value)> {
    rec["result"]["volumes"]
        .as_array()
        .expect("result.volumes")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                (v["failed_checks"].clone(), v["header"].clone()),
            )
        })
        .collect()
}

#[test]
fn unprivileged_luks_check_through_the_helper_reports_what_a_root_run_reports() {
    let s = Scratch::new();
    let (good, weak, _) = images(&s);
    let vols = volume("good", &good, "") + &volume("weak", &weak, "");
    let sock = s.path("helper.sock");

    let root_cfg = config(&s, "root", &vols, None);
    let o = support::agent(&root_cfg, &["--json", "luks-check"]);
    let root: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(root["state"], "failed", "{}", support::text(&o));

    let cfg = config(&s, "nobody", &vols, Some(&sock));
    nobody_dirs(&s);
    // The unprivileged agent cannot open the images itself.
    assert!(
        std::fs::metadata(s.path("disks"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077
            == 0
    );
    let activation = SocketActivation::start(&sock, &cfg);
    let o = check_as_nobody(&cfg);
    let helpers = activation.finish();
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", support::text(&o)));
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    assert_eq!(rec["state"], "failed");
    assert_eq!(checks(&rec), checks(&root), "{rec:#}");
    assert_eq!(checks(&rec)["weak"].0, serde_json::json!(["pbkdf"]));
    assert_eq!(checks(&rec)["good"].0, serde_json::json!([]));
    // Two inspects and two header backups, one helper each.
    assert_eq!(helpers, 4);
    assert_eq!(rec["result"]["errors"], serde_json::json!([]), "{rec:#}");

    // Header backups written by the unprivileged agent as a root run writes them.
    let dir = s.path("nobody-state/luks-headers");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    for v in rec["result"]["volumes"].as_array().unwrap() {
        let b = &v["header_backup"];
        assert_eq!(b["written"], true, "{v:#}");
        let p = PathBuf::from(b["path"].as_str().unwrap());
        let h = &v["header"];
        assert_eq!(
            p,
            dir.join(format!(
                "{}-{}.img",
                h["uuid"].as_str().unwrap(),
                h["header_id"].as_str().unwrap()
            ))
        );
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o400);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), NOBODY);
        cryptsetup(&["isLuks", p.to_str().unwrap()]);
    }
}

#[test]
fn unprivileged_luks_check_without_the_helper_says_how_to_fix_it() {
    let s = Scratch::new();
    let (good, _, _) = images(&s);
    let sock = s.path("absent.sock");
    let cfg = config(&s, "nobody", &volume("good", &good, ""), Some(&sock));
    nobody_dirs(&s);
    let o = check_as_nobody(&cfg);
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = rec["error"].as_str().unwrap();
    assert_eq!(
        rec["result"]["volumes"][0]["failed_checks"],
        serde_json::json!(["unreadable"])
    );
    assert!(
        err.contains(&format!("asking the LUKS helper on {}", sock.display()))
            && err.contains("is cloudnx-agent-luks-helper.socket enabled?"),
        "{err}"
    );
}

#[test]
fn helper_refuses_a_peer_that_is_neither_root_nor_the_agent_user() {
    let s = Scratch::new();
    let (good, _, _) = images(&s);
    let vols = volume("good", &good, "");
    let sock = s.path("helper.sock");
    // The helper's configuration: its state_dir belongs to root, not to nobody.
    let helper_cfg = config(&s, "root", &vols, None);
    std::fs::create_dir_all(s.path("root-state")).unwrap();
    let cfg = config(&s, "nobody", &vols, Some(&sock));
    nobody_dirs(&s);
    let activation = SocketActivation::start(&sock, &helper_cfg);
    let o = check_as_nobody(&cfg);
    assert!(activation.finish() >= 1, "the helper was never asked");
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("peer: uid 65534 may not use the LUKS helper"),
        "{err}"
    );
    assert!(
        !s.path("nobody-state/luks-headers").exists()
            || std::fs::read_dir(s.path("nobody-state/luks-headers"))
                .unwrap()
                .next()
                .is_none(),
        "a refused peer got a header backup"
    );
}
