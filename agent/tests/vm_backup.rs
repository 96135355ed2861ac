//! End to end: `cloudnx-agent vm-backup` and `vm-restore` against the Proxmox
//! VE API simulator (tests/pve-simulator: real archive files, vzdump task
//! logs, storage content, restores), a real S3 server (moto) beside a
//! filesystem destination, and real gpg opening what the agent wrote.

mod support;

use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use support::gpg::Gpg;
use support::pve::{PveSim, TOKEN_SECRET};
use support::s3::Moto;
use support::{agent, text, S3Dest, Scratch};

const BUCKET: &str = "vm-backups";

struct Setup {
    scratch: Scratch,
    gpg: Gpg,
    key: PathBuf,
    sim: PveSim,
}

fn privileges() -> Value {
    json!({"*": ["VM.Audit", "VM.Snapshot", "VM.Backup", "VM.Allocate"],
           "/storage": ["Datastore.Audit", "Datastore.AllocateSpace", "Datastore.Allocate"]})
}

fn setup(guests: Value) -> Setup {
    let scratch = Scratch::new();
    let gpg = Gpg::new();
    let key = gpg.export_public(&scratch.path("backup.pub.asc"));
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "nodes": ["pve1", "pve2"], "vzdump_seconds": 0.3,
               "backup_size_bytes": 300_000, "privileges": privileges(), "guests": guests}),
    );
    Setup {
        scratch,
        gpg,
        key,
        sim,
    }
}

impl Setup {
    /// `[proxmox]`, the destinations (`local`, and `s3` when given) and `[vm_backup]`.
    fn config(&self, s3_endpoint: Option<&str>, extra: &str) -> PathBuf {
        let secret = self
            .scratch
            .secret("secrets/pve-token", &format!("{TOKEN_SECRET}\n"));
        let s3 = s3_endpoint.map(|e| S3Dest::new(e, BUCKET));
        let (dests, names) = self.scratch.destinations(s3.as_ref());
        let body = format!(
            "{}{dests}[vm_backup]\ndump_storage = \"local\"\ndestinations = [{names}]\nencrypt_to = [\"{}\"]\n{extra}\n",
            self.sim.proxmox_section(&secret),
            self.key.display()
        );
        self.scratch.config(&body)
    }

    fn run(&self, cfg: &Path, args: &[&str]) -> (std::process::Output, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = agent(cfg, &all);
        let rec: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, rec)
    }

    /// The filesystem destination's file at `key`.
    fn fs(&self, key: &str) -> PathBuf {
        self.scratch.path("fs").join(key)
    }
}

fn guest(rec: &Value, vmid: u64) -> &Value {
    rec["result"]["guests"]
        .as_array()
        .unwrap_or_else(|| panic!("no guests in {rec:#}"))
        .iter()
        .find(|g| g["vmid"] == vmid)
        .unwrap_or_else(|| panic!("guest {vmid} not in result: {rec:#}"))
}

/// The simulator's record of the archive `volid`.
fn archive<'a>(stats: &'a Value, volid: &str) -> &'a Value {
    stats["archives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["volid"] == volid)
        .unwrap_or_else(|| panic!("{volid} not among the simulator's archives: {stats:#}"))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn dest<'a>(g: &'a Value, name: &str) -> &'a Value {
    g["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == name)
        .unwrap_or_else(|| panic!("{name} not in {g:#}"))
}

#[test]
fn vm_backup_three_guests_reach_every_destination_and_gpg_opens_each_archive() {
    let moto = Moto::start();
    moto.bucket(BUCKET, false);
    let s = setup(json!([
        {"vmid": 100, "type": "qemu", "name": "web"},
        {"vmid": 101, "type": "lxc", "name": "dns"},
        {"vmid": 102, "type": "qemu", "name": "db", "backup_size_bytes": 1_200_000},
        {"vmid": 200, "type": "qemu", "name": "elsewhere", "node": "pve2"},
    ]));
    let cfg = s.config(Some(&moto.endpoint()), "");
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    let stats = s.sim.stats();
    let s3_keys = moto.keys(BUCKET);
    for vmid in [100u64, 101, 102] {
        let g = guest(&rec, vmid);
        assert_eq!(g["result"], "ok", "{g:#}");
        let volid = g["volid"].as_str().unwrap();
        let a = archive(&stats, volid);
        let stamp = g["stamp"].as_str().unwrap();
        let name = Path::new(a["path"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let key = format!("test-host/vm/{vmid}/{stamp}/{name}.pgp");
        // Filesystem destination: gpg opens it, and it is the very archive.
        assert_eq!(dest(g, "local")["key"], key.as_str());
        let plain = s.gpg.decrypt(&s.fs(&key));
        assert_eq!(plain.len() as u64, a["size"].as_u64().unwrap());
        assert_eq!(
            sha256_hex(&plain),
            a["sha256"].as_str().unwrap(),
            "guest {vmid}"
        );
        let m: Value = serde_json::from_slice(
            &std::fs::read(s.fs(&format!("test-host/vm/{vmid}/{stamp}/manifest.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m["format"], "cloudnx-vm-backup/1");
        assert_eq!(m["vmid"], vmid);
        assert_eq!(m["type"], if vmid == 101 { "lxc" } else { "qemu" });
        assert_eq!(m["volid"], volid);
        assert_eq!(m["plaintext_sha256"], a["sha256"]);
        assert!(
            m["audit_head"]["seq"].is_u64() && m["audit_head"]["hash"].is_string(),
            "audit_head is {{seq, hash}} as in database manifests: {m:#}"
        );
        // S3: the same object and manifest.
        assert!(s3_keys.contains(&key), "{key} not in {s3_keys:?}");
        assert!(s3_keys.contains(&format!("test-host/vm/{vmid}/{stamp}/manifest.json")));
        let obj = moto.get(BUCKET, &key);
        assert_eq!(sha256_hex(&obj), m["sha256"].as_str().unwrap());
        let tmp = s.scratch.path(&format!("s3-{vmid}.pgp"));
        std::fs::write(&tmp, &obj).unwrap();
        assert_eq!(
            sha256_hex(&s.gpg.decrypt(&tmp)),
            a["sha256"].as_str().unwrap()
        );
        // The local archive is gone, deleted through the API.
        assert!(
            !Path::new(a["path"].as_str().unwrap()).exists(),
            "{volid} still on disk"
        );
        assert_eq!(g["local_deleted"], true);
        // Where the guest's time went: the vzdump task (0.3 s in the
        // scenario) and the upload, both inside the guest's duration.
        let (vz, up, all) = (
            g["vzdump_seconds"].as_f64().unwrap(),
            g["upload_seconds"].as_f64().unwrap(),
            g["duration_seconds"].as_f64().unwrap(),
        );
        assert!(vz >= 0.29 && up > 0.0 && vz + up <= all, "{g:#}");
    }
    assert!(
        !s3_keys.iter().any(|k| k.contains("/vm/200/")),
        "a guest of another node was backed up"
    );
    let prom = s.scratch.prom();
    for vmid in ["100", "101", "102"] {
        for d in ["local", "s3"] {
            assert!(
                prom.contains(&format!("cloudnx_vm_backup_last_success_timestamp_seconds{{destination=\"{d}\",vmid=\"{vmid}\"}}")),
                "{prom}"
            );
            assert!(
                prom.contains(&format!(
                    "cloudnx_vm_backup_retained{{destination=\"{d}\",vmid=\"{vmid}\"}} 1"
                )),
                "{prom}"
            );
        }
        assert!(prom.contains(&format!(
            "cloudnx_vm_backup_last_size_bytes{{vmid=\"{vmid}\"}}"
        )));
    }

    // keep_local: the archive stays in the dump storage.
    let cfg = s.config(Some(&moto.endpoint()), "keep_local = true");
    let (out, rec) = s.run(&cfg, &["vm-backup", "--vmid", "101"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let g = guest(&rec, 101);
    assert_eq!(g["local_deleted"], false);
    let stats = s.sim.stats();
    let a = archive(&stats, g["volid"].as_str().unwrap());
    assert!(Path::new(a["path"].as_str().unwrap()).exists());
    assert_eq!(
        rec["result"]["guests"].as_array().unwrap().len(),
        1,
        "--vmid selects"
    );
    // `status` shows every guest × destination as fresh.
    let out = agent(&cfg, &["--json", "status"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let vm = st["vm_backups"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert_eq!(vm.len(), 6, "{vm:?}");
    assert!(vm.iter().all(|b| b["ok"] == true), "{vm:?}");
}

#[test]
fn vm_backup_locked_guest_is_retried_warnings_degrade_and_an_error_writes_no_manifest() {
    let s = setup(json!([
        {"vmid": 103, "type": "qemu", "name": "iothread",
         "backup_warnings": ["iothread is only valid with virtio disk or virtio-scsi-single controller, ignoring"]},
        {"vmid": 104, "type": "qemu", "name": "disk-io-error",
         "backup_error": "job failed with err -5 - Input/output error"},
        {"vmid": 105, "type": "lxc", "name": "stale-lock", "lock": "backup"},
        {"vmid": 106, "type": "qemu", "name": "briefly-locked", "lock": "backup",
         "lock_seconds_after_first_attempt": 1.0},
    ]));
    let cfg = s.config(None, "lock_retry_seconds = 4");
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the error fails the job: {}",
        text(&out)
    );
    let stamp_dir = |vmid: u64, g: &Value| {
        g["stamp"]
            .as_str()
            .map(|st| s.fs(&format!("test-host/vm/{vmid}/{st}")))
    };
    let g = guest(&rec, 103);
    assert_eq!(g["result"], "degraded", "{g:#}");
    assert_eq!(g["exitstatus"], "WARNINGS: 1");
    assert!(stamp_dir(103, g).unwrap().join("manifest.json").exists());
    let g = guest(&rec, 104);
    assert_eq!(g["result"], "failed", "{g:#}");
    assert!(
        g["message"]
            .as_str()
            .unwrap()
            .contains("Input/output error"),
        "{g:#}"
    );
    assert!(
        g["stamp"].is_null(),
        "nothing is reserved for a failed task: {g:#}"
    );
    assert!(
        walk(&s.fs("test-host/vm/104")).is_empty(),
        "a failed vzdump leaves nothing on the destination"
    );
    let g = guest(&rec, 105);
    assert_eq!(g["result"], "locked", "{g:#}");
    assert!(g["attempts"].as_u64().unwrap() >= 2, "retried: {g:#}");
    assert!(
        g["message"].as_str().unwrap().contains("locked (backup)"),
        "{g:#}"
    );
    let g = guest(&rec, 106);
    assert_eq!(g["result"], "ok", "retried until the lock went: {g:#}");
    assert!(g["attempts"].as_u64().unwrap() >= 2, "{g:#}");
    assert!(stamp_dir(106, g).unwrap().join("manifest.json").exists());
    let prom = s.scratch.prom();
    assert!(
        prom.contains(
            "cloudnx_vm_backup_last_success_timestamp_seconds{destination=\"local\",vmid=\"103\"}"
        ),
        "{prom}"
    );
    assert!(
        !prom.contains("vmid=\"104\""),
        "no series for the failed guest: {prom}"
    );
    assert!(
        !prom.contains("vmid=\"105\""),
        "no series for the locked guest: {prom}"
    );
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(d) else {
        return out;
    };
    for e in rd.flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[test]
fn vm_backup_one_destination_down_the_other_completes_and_metrics_say_which() {
    let s = setup(json!([{"vmid": 100, "type": "qemu", "name": "web"}]));
    // Nothing listens there.
    let down = format!("http://127.0.0.1:{}", support::free_port());
    let cfg = s.config(Some(&down), "");
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let g = guest(&rec, 100);
    assert_eq!(dest(g, "local")["ok"], true, "{g:#}");
    assert_eq!(dest(g, "s3")["ok"], false, "{g:#}");
    let stamp = g["stamp"].as_str().unwrap();
    assert!(s
        .fs(&format!("test-host/vm/100/{stamp}/manifest.json"))
        .exists());
    // Not every destination has it: the local archive is kept.
    assert_eq!(g["local_deleted"], false);
    let stats = s.sim.stats();
    assert!(Path::new(
        archive(&stats, g["volid"].as_str().unwrap())["path"]
            .as_str()
            .unwrap()
    )
    .exists());
    let prom = s.scratch.prom();
    assert!(
        prom.contains(
            "cloudnx_vm_backup_last_success_timestamp_seconds{destination=\"local\",vmid=\"100\"}"
        ),
        "{prom}"
    );
    assert!(
        !prom.contains("cloudnx_vm_backup_last_success_timestamp_seconds{destination=\"s3\""),
        "{prom}"
    );
}

#[test]
fn vm_restore_of_an_older_backup_into_a_new_vmid_hands_proxmox_the_original_bytes() {
    let s = setup(json!([
        {"vmid": 100, "type": "qemu", "name": "web"},
        {"vmid": 101, "type": "lxc", "name": "dns"},
    ]));
    let cfg = s.config(None, "");
    let mut firsts = Vec::new();
    for _ in 0..2 {
        let (out, rec) = s.run(&cfg, &["vm-backup"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        firsts.push(rec);
        // Stamps are per second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let stats = s.sim.stats();
    let older = guest(&firsts[0], 100);
    let newer = guest(&firsts[1], 100);
    let older_sha = archive(&stats, older["volid"].as_str().unwrap())["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let newer_sha = archive(&stats, newer["volid"].as_str().unwrap())["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(older_sha, newer_sha, "the simulator's backups differ");
    let secret = s.gpg.export_secret(&s.scratch.path("backup.sec.asc"));

    // `backups list --vm` shows both.
    let out = agent(&cfg, &["--json", "backups", "list", "--vm"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stamps: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["vmid"] == 100)
        .map(|b| b["stamp"].as_str().unwrap())
        .collect();
    assert_eq!(
        stamps,
        vec![
            newer["stamp"].as_str().unwrap(),
            older["stamp"].as_str().unwrap()
        ]
    );

    let stamp = older["stamp"].as_str().unwrap();
    let (out, rec) = s.run(
        &cfg,
        &[
            "vm-restore",
            "--vmid",
            "100",
            "--backup",
            stamp,
            "--target-vmid",
            "900",
            "--storage",
            "local-lvm",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rec["state"], "succeeded", "{rec:#}");
    let stats = s.sim.stats();
    let restores = stats["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 1, "{stats:#}");
    let r = &restores[0];
    assert_eq!(r["vmid"], 900);
    assert_eq!(r["type"], "qemu");
    assert_eq!(r["storage"], "local-lvm");
    assert_eq!(
        r["sha256"],
        older_sha.as_str(),
        "Proxmox got the older archive's bytes"
    );
    assert_eq!(r["exitstatus"], "OK");
    assert_eq!(stats["guests"]["900"]["type"], "qemu");

    // An existing target is refused before anything is fetched.
    let (out, _) = s.run(
        &cfg,
        &[
            "vm-restore",
            "--vmid",
            "101",
            "--target-vmid",
            "100",
            "--storage",
            "local-lvm",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("guest 100 already exists"),
        "{}",
        text(&out)
    );
    assert_eq!(s.sim.stats()["restores"].as_array().unwrap().len(), 1);

    // A container comes back through lxc ostemplate + restore=1.
    let (out, _) = s.run(
        &cfg,
        &[
            "vm-restore",
            "--vmid",
            "101",
            "--target-vmid",
            "901",
            "--storage",
            "local-lvm",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stats = s.sim.stats();
    let r = stats["restores"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(r["type"], "lxc");
    assert_eq!(r["vmid"], 901);
    let newest101 = guest(&firsts[1], 101);
    assert_eq!(
        r["sha256"],
        archive(&stats, newest101["volid"].as_str().unwrap())["sha256"]
    );
}

/// A complete-looking old backup on the filesystem destination.
fn seed(s: &Setup, vmid: u32, stamp: &str) -> PathBuf {
    let dir = s.fs(&format!("test-host/vm/{vmid}/{stamp}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!(
            "vzdump-qemu-{vmid}-2020_01_01-00_00_00.vma.zst.pgp"
        )),
        b"old",
    )
    .unwrap();
    std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
    dir
}

fn audit_actions(s: &Setup, action: &str) -> Vec<Value> {
    std::fs::read_to_string(s.scratch.path("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == action)
        .collect()
}

#[test]
fn vm_backup_legal_hold_deletes_nothing_then_expired_and_retired_guests_go_with_their_series() {
    let s = setup(json!([
        {"vmid": 100, "type": "qemu", "name": "web"},
        // Migrated away: its old backups here belong to a retired guest.
        {"vmid": 300, "type": "qemu", "name": "moved", "node": "pve2"},
    ]));
    let expired = seed(&s, 100, "20200101T000000Z");
    let retired = seed(&s, 300, "20200102T000000Z");
    let cfg = s.config(None, "retention_days = 14");
    s.scratch.secret(
        "state/legal-hold.json",
        r#"{"reason": "case 42", "since": "2026-01-01T00:00:00Z", "by": "test"}"#,
    );
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(expired.join("manifest.json").exists() && retired.join("manifest.json").exists());
    let held = rec["result"]["retention"]["held"].as_array().unwrap();
    let reasons: Vec<(u64, &str)> = held
        .iter()
        .map(|h| (h["vmid"].as_u64().unwrap(), h["reason"].as_str().unwrap()))
        .collect();
    assert!(reasons.contains(&(100, "expired")), "{held:?}");
    assert!(reasons.contains(&(300, "retired")), "{held:?}");
    assert!(held.iter().all(|h| h["held"] == "case 42"), "{held:?}");
    assert!(audit_actions(&s, "vm_backup.retention.delete").is_empty());
    let prom = s.scratch.prom();
    assert!(
        prom.contains("cloudnx_vm_backup_retained{destination=\"local\",vmid=\"300\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("cloudnx_vm_backup_retained{destination=\"local\",vmid=\"100\"} 2"),
        "{prom}"
    );

    // Released: the expired backup and the retired guest's go, audited, and
    // the retired guest's series leave the metrics file.
    std::fs::remove_file(s.scratch.path("state/legal-hold.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !expired.exists() || walk(&expired).is_empty(),
        "{:?}",
        walk(&expired)
    );
    assert!(
        !retired.exists() || walk(&retired).is_empty(),
        "{:?}",
        walk(&retired)
    );
    assert_eq!(
        rec["result"]["retention"]["retired"],
        json!([300]),
        "{rec:#}"
    );
    let deleted = audit_actions(&s, "vm_backup.retention.delete");
    assert!(
        deleted
            .iter()
            .any(|a| a["detail"]["vmid"] == 300 && a["detail"]["reason"] == "retired"),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|a| a["detail"]["vmid"] == 100 && a["detail"]["reason"] == "expired"),
        "{deleted:?}"
    );
    let prom = s.scratch.prom();
    assert!(!prom.contains("vmid=\"300\""), "{prom}");
    // keep floor: the two runs' backups of 100 stay (both young).
    assert!(
        prom.contains("cloudnx_vm_backup_retained{destination=\"local\",vmid=\"100\"} 2"),
        "{prom}"
    );
}

#[test]
fn vm_backup_retention_keeps_a_backup_under_object_lock_and_deletes_an_unlocked_expired_one() {
    let moto = Moto::start();
    moto.bucket(BUCKET, true);
    let s = setup(json!([{"vmid": 100, "type": "qemu", "name": "web"}]));
    let cfg = s.config(Some(&moto.endpoint()), "retention_days = 14");
    moto.py(&format!(
        "until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)\n\
         for stamp, locked in [('20200101T000000Z', True), ('20200202T000000Z', False)]:\n\
         \x20   for name in ['vzdump-qemu-100-2020_01_01-00_00_00.vma.zst.pgp', 'manifest.json']:\n\
         \x20       body = b'{{}}'\n\
         \x20       md5 = base64.b64encode(hashlib.md5(body).digest()).decode()\n\
         \x20       extra = dict(ObjectLockMode='COMPLIANCE', ObjectLockRetainUntilDate=until) if locked else {{}}\n\
         \x20       s3.put_object(Bucket='{BUCKET}', Key='test-host/vm/100/' + stamp + '/' + name, Body=body, ContentMD5=md5, **extra)"
    ));
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let keys = moto.keys(BUCKET);
    assert!(
        keys.iter()
            .any(|k| k.contains("20200101T000000Z/manifest.json"))
            && keys
                .iter()
                .any(|k| k.contains("20200101T000000Z/vzdump-qemu-100")),
        "the locked backup is kept whole: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.contains("20200202T000000Z")),
        "the unlocked expired backup is deleted: {keys:?}"
    );
    let deleted = rec["result"]["retention"]["deleted"].as_array().unwrap();
    assert!(
        deleted.iter().all(|d| d["stamp"] == "20200202T000000Z"),
        "{deleted:?}"
    );
    let prom = s.scratch.prom();
    assert!(
        prom.contains("cloudnx_vm_backup_retained{destination=\"s3\",vmid=\"100\"} 2"),
        "the new backup and the locked one: {prom}"
    );
    let g = guest(&rec, 100);
    let stamp = g["stamp"].as_str().unwrap();
    // This run's own backup is the one counted beside the locked one.
    let key = dest(g, "s3")["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("test-host/vm/100/{stamp}/")));
}

#[test]
fn vm_restore_of_a_damaged_object_hands_proxmox_nothing_and_leaves_no_archive() {
    let s = setup(json!([{"vmid": 100, "type": "qemu", "name": "web"}]));
    let cfg = s.config(None, "");
    let (out, rec) = s.run(&cfg, &["vm-backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let g = guest(&rec, 100);
    let key = dest(g, "local")["key"].as_str().unwrap().to_owned();
    // One flipped byte in the middle of the stored object.
    let mut obj = std::fs::read(s.fs(&key)).unwrap();
    let mid = obj.len() / 2;
    obj[mid] ^= 0x55;
    std::fs::write(s.fs(&key), &obj).unwrap();
    let dump = s.scratch.path("pve-sim-storage/pve1/local/dump");
    assert!(dump.is_dir(), "{}", dump.display());
    let before = walk(&dump);
    let secret = s.gpg.export_secret(&s.scratch.path("backup.sec.asc"));
    let (out, _) = s.run(
        &cfg,
        &[
            "vm-restore",
            "--vmid",
            "100",
            "--target-vmid",
            "900",
            "--storage",
            "local-lvm",
            "--key",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("nothing was handed to Proxmox"),
        "{}",
        text(&out)
    );
    let stats = s.sim.stats();
    assert_eq!(stats["restores"], json!([]), "{stats:#}");
    assert!(stats["guests"].get("900").is_none());
    assert_eq!(walk(&dump), before, "no archive, no temporary file left");
}
