//! `luks-check` end to end: the real binary against LUKS volumes made with the
//! real cryptsetup CLI on image files and loop devices.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::luks::{
    add_key, attach, cryptsetup, format, image, import_clevis_token, LoopDev, FAST_ARGON, PBKDF2,
};
use support::Scratch;

/// One `[[luks.volumes]]` entry.
fn volume(name: &str, device: &Path, extra: &str) -> String {
    format!(
        "[[luks.volumes]]\nname = \"{name}\"\ndevice = \"{}\"\n{extra}\n",
        device.display()
    )
}

fn luks_section(s: &Scratch, volumes: &str) -> String {
    format!(
        "[luks]\nheader_backup_dir = \"{}\"\n[luks.policy]\nluks_version = 2\ncipher = \"aes-xts-plain64\"\nkey_bits = 512\npbkdf = \"argon2id\"\nmax_keyslots = 2\n\n{volumes}",
        s.path("state/luks-headers").display()
    )
}

/// Run `luks-check --json`; (exit code, job record, stderr).
fn check(s: &Scratch, volumes: &str) -> (i32, serde_json::Value, String) {
    let cfg = s.config(&luks_section(s, volumes));
    let o = support::agent(&cfg, &["--json", "luks-check"]);
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", support::text(&o)));
    (
        o.status.code().unwrap_or(-1),
        rec,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// volume → its failed checks, from the job record.
fn failed_by_volume(rec: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    rec["result"]["volumes"]
        .as_array()
        .expect("result.volumes")
        .iter()
        .map(|v| {
            let checks = v["failed_checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            (v["name"].as_str().unwrap().to_owned(), checks)
        })
        .collect()
}

/// Series of one family in the textfile: labels text → value.
fn series(prom: &str, family: &str) -> BTreeMap<String, String> {
    prom.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k[family.len()..].to_owned(), v.to_owned()))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

struct Volumes {
    /// (name, config entry, expected failed checks)
    list: Vec<(String, String, BTreeSet<String>)>,
    _loops: Vec<LoopDev>,
}

/// `--type luks2`, fast Argon2id, and `extra`.
fn luks2<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    [&["--type", "luks2"][..], FAST_ARGON, extra].concat()
}

/// The policy matrix of the issue, each volume made with cryptsetup.
fn make_matrix(s: &Scratch) -> Volumes {
    let d = s.path("disks");
    std::fs::create_dir_all(&d).unwrap();
    let k0 = s.secret("keys/k0", "first passphrase");
    let k1 = s.secret("keys/k1", "second passphrase");
    let k2 = s.secret("keys/k2", "third passphrase");
    let mut loops = Vec::new();
    let mut list = Vec::new();
    let mut add = |name: &str, dev: &Path, extra: &str, want: &[&str]| {
        list.push((name.to_owned(), volume(name, dev, extra), set(want)))
    };

    // Compliant LUKS2, checked through a loop device where the machine has them.
    let img = image(&d, "compliant.img");
    format(&img, &k0, &luks2(&[]));
    let dev = match attach(&img) {
        Some(l) => {
            let p = l.dev.clone();
            loops.push(l);
            p
        }
        None => img,
    };
    add("compliant", &dev, "require_open = false", &[]);

    let img = image(&d, "luks1.img");
    format(&img, &k0, &[&["--type", "luks1"][..], PBKDF2].concat());
    add(
        "luks1",
        &img,
        "require_open = false",
        &["luks_version", "pbkdf"],
    );

    let img = image(&d, "pbkdf2.img");
    format(&img, &k0, &[&["--type", "luks2"][..], PBKDF2].concat());
    add("pbkdf2", &img, "require_open = false", &["pbkdf"]);

    // A clevis-bound PBKDF2 slot next to an Argon2id passphrase slot: compliant by design.
    let img = image(&d, "clevis.img");
    format(&img, &k0, &luks2(&[]));
    add_key(&img, &k0, &k1, PBKDF2);
    import_clevis_token(&img, &[1]);
    add("clevis", &img, "require_open = false", &[]);

    let img = image(&d, "cbc.img");
    format(
        &img,
        &k0,
        &luks2(&["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"]),
    );
    add("cbc", &img, "require_open = false", &["cipher", "key_bits"]);

    let img = image(&d, "key256.img");
    format(&img, &k0, &luks2(&["--key-size", "256"]));
    add("key256", &img, "require_open = false", &["key_bits"]);

    let img = image(&d, "slots.img");
    format(&img, &k0, &luks2(&[]));
    add_key(&img, &k0, &k1, FAST_ARGON);
    add_key(&img, &k0, &k2, FAST_ARGON);
    add("slots", &img, "require_open = false", &["keyslots"]);

    let img = image(&d, "unbound.img");
    format(&img, &k0, &luks2(&[]));
    let mut a = vec![
        "luksAddKey",
        "--batch-mode",
        "--unbound",
        "--key-size",
        "512",
    ];
    a.extend_from_slice(FAST_ARGON);
    a.extend([img.to_str().unwrap(), k1.to_str().unwrap()]);
    cryptsetup(&a);
    add(
        "unbound",
        &img,
        "require_open = false",
        &["unbound_keyslot"],
    );

    // A clevis token left behind when its keyslot was killed.
    let img = image(&d, "orphan.img");
    format(&img, &k0, &luks2(&[]));
    add_key(&img, &k0, &k1, PBKDF2);
    import_clevis_token(&img, &[1]);
    cryptsetup(&[
        "luksKillSlot",
        "--batch-mode",
        "--key-file",
        k0.to_str().unwrap(),
        img.to_str().unwrap(),
        "1",
    ]);
    add("orphan", &img, "require_open = false", &["orphan_token"]);

    let img = image(&d, "plain.img");
    let o = std::process::Command::new(support::require("mkfs.ext4"))
        .args(["-q", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4: {}", support::text(&o));
    let dev = match attach(&img) {
        Some(l) => {
            let p = l.dev.clone();
            loops.push(l);
            p
        }
        None => img,
    };
    add("plain", &dev, "", &["not_luks"]);

    // Something that is there but is no disk.
    let not_a_disk = d.join("not-a-disk");
    std::fs::create_dir_all(&not_a_disk).unwrap();
    add("notadisk", &not_a_disk, "", &["unreadable"]);

    add(
        "missing",
        &d.join("no-such-disk.img"),
        "",
        &["missing_device"],
    );

    // A compliant header whose mapping is expected open and mounted, but is neither.
    let img = image(&d, "closed.img");
    format(&img, &k0, &luks2(&[]));
    add(
        "closed",
        &img,
        "mountpoint = \"/srv/cloudnx-test-not-mounted\"",
        &["not_open", "not_mounted"],
    );

    Volumes {
        list,
        _loops: loops,
    }
}

#[test]
fn each_volume_reports_exactly_its_failing_checks_in_json_and_metrics() {
    let s = Scratch::new();
    let vols = make_matrix(&s);
    let body: String = vols.list.iter().map(|v| v.1.clone()).collect();
    let (code, rec, stderr) = check(&s, &body);
    assert_eq!(code, 1, "non-compliant volumes fail the job: {stderr}");

    let want: BTreeMap<String, BTreeSet<String>> = vols
        .list
        .iter()
        .map(|v| (v.0.clone(), v.2.clone()))
        .collect();
    assert_eq!(failed_by_volume(&rec), want);

    let prom = s.prom();
    let failed = series(&prom, "cloudnx_luks_check_failed");
    let want_series: BTreeMap<String, String> = want
        .iter()
        .flat_map(|(v, cs)| {
            cs.iter()
                .map(move |c| (format!("{{check=\"{c}\",volume=\"{v}\"}}"), "1".to_owned()))
        })
        .collect();
    assert_eq!(failed, want_series, "metrics file:\n{prom}");
    let compliant = series(&prom, "cloudnx_luks_volume_compliant");
    for (v, cs) in &want {
        let expect = if cs.is_empty() { "1" } else { "0" };
        assert_eq!(
            compliant
                .get(&format!("{{volume=\"{v}\"}}"))
                .map(String::as_str),
            Some(expect),
            "{v}"
        );
        assert_eq!(
            series(&prom, "cloudnx_luks_volume_open")
                .get(&format!("{{volume=\"{v}\"}}"))
                .map(String::as_str),
            Some("0"),
            "{v}"
        );
    }
    // The error names each non-compliant volume with its checks.
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("cbc (cipher, key_bits)"), "{err}");
    assert!(err.contains("missing (missing_device)"), "{err}");
    // What was inspected is reported: the clevis token and its PBKDF2 slot.
    let clevis = rec["result"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "clevis")
        .unwrap();
    assert_eq!(clevis["header"]["tokens"][0]["kind"], "clevis");
    assert_eq!(
        clevis["header"]["tokens"][0]["keyslots"],
        serde_json::json!([1])
    );
    assert_eq!(clevis["header"]["keyslots"][1]["pbkdf"]["kind"], "pbkdf2");
    assert_eq!(clevis["header"]["keyslots"][1]["pbkdf"]["iterations"], 1000);
}

#[test]
fn compliant_volumes_only_succeed_with_exit_zero() {
    let s = Scratch::new();
    let vols = make_matrix(&s);
    let body: String = vols
        .list
        .iter()
        .filter(|v| v.2.is_empty())
        .map(|v| v.1.clone())
        .collect();
    let (code, rec, stderr) = check(&s, &body);
    assert_eq!(code, 0, "{stderr}\n{rec:#}");
    assert_eq!(rec["state"], "succeeded");
    assert!(series(&s.prom(), "cloudnx_luks_check_failed").is_empty());
    assert_eq!(
        series(&s.prom(), "cloudnx_luks_volume_compliant")
            .values()
            .filter(|v| *v == "1")
            .count(),
        2
    );
}

/// One LUKS image `disks/{file}` formatted with `opts`, and its key file `keys/{key}`.
fn one_image(s: &Scratch, file: &str, key: (&str, &str), opts: &[&str]) -> (PathBuf, PathBuf) {
    let k = s.secret(&format!("keys/{}", key.0), key.1);
    std::fs::create_dir_all(s.path("disks")).unwrap();
    let img = image(&s.path("disks"), file);
    format(&img, &k, opts);
    (img, k)
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    v.sort();
    v
}

fn outbox_drift(s: &Scratch) -> Vec<serde_json::Value> {
    std::fs::read_to_string(s.path("state/outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "luks.drift")
        .collect()
}

#[test]
fn header_change_writes_a_new_0400_backup_that_cryptsetup_accepts_and_reports_drift() {
    let s = Scratch::new();
    let (img, k0) = one_image(
        &s,
        "vol.img",
        ("k0", "first passphrase"),
        &[&["--type", "luks2"][..], FAST_ARGON].concat(),
    );
    let k1 = s.secret("keys/k1", "second passphrase");
    let body = volume("vol", &img, "require_open = false");
    let dir = s.path("state/luks-headers");

    let (code, rec, stderr) = check(&s, &body);
    assert_eq!(code, 0, "{stderr}");
    let first = backups(&dir);
    assert_eq!(first.len(), 1, "first sight writes one backup");
    let uuid = cryptsetup(&["luksUUID", img.to_str().unwrap()])
        .trim()
        .to_owned();
    let seq1 = rec["result"]["volumes"][0]["header"]["seqid"]
        .as_u64()
        .unwrap();
    assert_eq!(first[0], dir.join(format!("{uuid}-{seq1}.img")));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&first[0]).unwrap().permissions().mode() & 0o777,
        0o400
    );
    cryptsetup(&["isLuks", first[0].to_str().unwrap()]);
    let ts = series(&s.prom(), "cloudnx_luks_header_backup_timestamp_seconds");
    assert!(
        ts.get("{volume=\"vol\"}")
            .is_some_and(|v| v.parse::<f64>().unwrap() > 1.7e9),
        "{ts:?}"
    );
    assert!(
        outbox_drift(&s).is_empty(),
        "first sight of a compliant volume is not drift"
    );

    // Unchanged header: nothing new.
    let (code, _, _) = check(&s, &body);
    assert_eq!(code, 0);
    assert_eq!(backups(&dir), first);

    // Add a keyslot: the sequence id moves, a second backup appears, the first stays.
    add_key(&img, &k0, &k1, FAST_ARGON);
    let (code, rec, stderr) = check(&s, &body);
    assert_eq!(code, 0, "two keyslots are within max_keyslots: {stderr}");
    let seq2 = rec["result"]["volumes"][0]["header"]["seqid"]
        .as_u64()
        .unwrap();
    assert!(seq2 > seq1, "{seq2} > {seq1}");
    let second = dir.join(format!("{uuid}-{seq2}.img"));
    assert_eq!(backups(&dir), {
        let mut v = vec![first[0].clone(), second.clone()];
        v.sort();
        v
    });
    assert_eq!(
        std::fs::metadata(&second).unwrap().permissions().mode() & 0o777,
        0o400
    );
    cryptsetup(&["isLuks", second.to_str().unwrap()]);
    // The new backup holds the new keyslot: the second passphrase opens it.
    cryptsetup(&[
        "open",
        "--test-passphrase",
        "--key-file",
        k1.to_str().unwrap(),
        second.to_str().unwrap(),
    ]);
    assert_eq!(
        rec["result"]["volumes"][0]["header_backup"]["written"],
        true
    );
    let drift = outbox_drift(&s);
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert_eq!(drift[0]["severity"], "warning");
    assert_eq!(drift[0]["data"]["volume"], "vol");
    assert_eq!(
        drift[0]["data"]["drift"]["header_changed"],
        serde_json::json!([seq1.to_string(), seq2.to_string()])
    );
    // No leftovers that look like backups.
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("partial")));
}

#[test]
fn newly_non_compliant_volume_emits_one_drift_event_not_one_per_run() {
    let s = Scratch::new();
    let (img, _) = one_image(
        &s,
        "cbc.img",
        ("k0", "first passphrase"),
        &luks2(&["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"]),
    );
    let body = volume("cbc", &img, "require_open = false");
    for _ in 0..2 {
        let (code, _, _) = check(&s, &body);
        assert_eq!(code, 1);
    }
    let drift = outbox_drift(&s);
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert_eq!(
        drift[0]["data"]["drift"]["new_failures"],
        serde_json::json!(["cipher", "key_bits"])
    );
}

#[test]
fn closed_keyed_volume_is_not_opened_without_device_mapper_and_says_so() {
    let s = Scratch::new();
    let (img, k0) = one_image(
        &s,
        "vmdata.img",
        ("vmdata.key", "vmdata key"),
        &[&["--type", "luks2"][..], FAST_ARGON].concat(),
    );
    let body = volume("vmdata", &img, &format!("keyfile = \"{}\"", k0.display()));
    let (code, rec, stderr) = check(&s, &body);
    assert_eq!(code, 1, "{stderr}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("re-opening volume \"vmdata\": device-mapper not available ("),
        "{err}"
    );
    assert_eq!(
        rec["result"]["volumes"][0]["repair"]["result"],
        "impossible"
    );
    assert_eq!(failed_by_volume(&rec)["vmdata"], set(&["not_open"]));
    // No key was used, so nothing to audit as luks.open; the key never appears anywhere.
    let audit = std::fs::read_to_string(s.path("state/audit.jsonl")).unwrap();
    assert!(!audit.contains("luks.open"), "{audit}");
    assert!(
        !audit.contains("vmdata key")
            && !s.prom().contains("vmdata key")
            && !rec.to_string().contains("vmdata key")
    );
}

#[test]
fn unencrypted_root_under_a_data_path_is_a_violation() {
    // This machine kind has no device-mapper, so "/" cannot be on dm-crypt.
    assert!(
        !Path::new("/sys/module/dm_mod").exists(),
        "this test expects a kernel without device-mapper"
    );
    let s = Scratch::new();
    let cfg = s.config(&format!(
        "[luks]\nheader_backup_dir = \"{}\"\ndata_paths = [\"/\"]\n",
        s.path("state/h").display()
    ));
    let o = support::agent(&cfg, &["--json", "luks-check"]);
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mounts = rec["result"]["unencrypted_mounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountpoint"] == "/"), "{mounts:#?}");
    assert!(
        mounts
            .iter()
            .all(|m| m["fstype"] != "proc" && m["fstype"] != "tmpfs"),
        "{mounts:#?}"
    );
    assert!(rec["error"]
        .as_str()
        .unwrap()
        .contains("unencrypted filesystems under data paths: / ("));
    assert_eq!(
        series(&s.prom(), "cloudnx_luks_unencrypted_mount")
            .iter()
            .filter(|(k, _)| k.contains("mountpoint=\"/\""))
            .count(),
        1
    );
}

#[test]
fn bad_volume_name_is_a_configuration_error_with_its_position() {
    let s = Scratch::new();
    let cfg = s.config(&luks_section(
        &s,
        "[[luks.volumes]]\nname = \"vm/data\"\ndevice = \"/dev/sdz\"\n",
    ));
    let o = support::agent(&cfg, &["check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let t = support::text(&o);
    assert!(
        t.contains("agent.toml:") && t.contains("\"vm/data\" is not a usable dm mapping name"),
        "{t}"
    );
}

#[test]
fn inspections_from_many_tasks_and_threads_share_the_one_libcryptsetup_thread() {
    use cloudnx_agent::jobs::luks::inspect::{inspect, HeaderState};
    let s = Scratch::new();
    let (img, _) = one_image(&s, "vol.img", ("k0", "first passphrase"), &luks2(&[]));
    let uuid = cryptsetup(&["luksUUID", img.to_str().unwrap()])
        .trim()
        .to_owned();
    // Two runtimes in turn (as the daemon's scheduled runs are), each with
    // concurrent tasks on several threads: libcryptsetup-rs would panic if a
    // handle were used from a second thread.
    for _ in 0..2 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(inspect(img.clone()))).collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            out
        });
        for r in results {
            match r {
                HeaderState::Luks(h) => assert_eq!(h.uuid, uuid),
                other => panic!("{other:?}"),
            }
        }
    }
}
