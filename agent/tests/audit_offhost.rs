//! The audit log off the host (SPEC §11): sealed segments, checkpoints and
//! keys shipped in order to `[audit] destinations` (moto with Object Lock, a
//! filesystem destination), a destination down for many checkpoints, and
//! `audit verify --destination` catching a truncated or rewritten local log.

mod support;

use cloudnx_agent::audit::checkpoint::Checkpoint;
use cloudnx_agent::audit::offhost;
use std::path::{Path, PathBuf};
use support::audit::{mixed_entry, AuditScratch};
use support::{agent, text};

/// A log shipped to the filesystem destination `local` at `fs/`.
fn fs_scratch(extra: &str) -> AuditScratch {
    AuditScratch::with_local_destination(&format!("destinations = [\"local\"]\n{extra}"))
}

trait Fs {
    fn fs_root(&self) -> PathBuf;
    fn append(&self, from: u64, to: u64);
    fn run(&self, args: &[&str]) -> (i32, String);
    fn copy_dir(&self) -> PathBuf;
}

impl Fs for AuditScratch {
    fn fs_root(&self) -> PathBuf {
        match &self.config.destination("local").unwrap().kind {
            cloudnx_agent::config::DestinationKind::Filesystem { path } => path.clone(),
            _ => unreachable!(),
        }
    }
    fn append(&self, from: u64, to: u64) {
        let log = self.log();
        for i in from..=to {
            log.append(mixed_entry(i)).unwrap();
        }
    }
    fn run(&self, args: &[&str]) -> (i32, String) {
        let o = agent(&self.config_path, args);
        (o.status.code().unwrap_or(-1), text(&o))
    }
    fn copy_dir(&self) -> PathBuf {
        self.fs_root().join("test-host/audit/test-host")
    }
}

fn ix(n: u64) -> usize {
    usize::try_from(n).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn local_lines(s: &AuditScratch) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in s.chain_files() {
        let b = std::fs::read(f).unwrap();
        out.extend(b.split_inclusive(|c| *c == b'\n').map(<[u8]>::to_vec));
    }
    out
}

/// The off-host copy is exactly the local log cut at the checkpoints.
fn assert_copy_matches(s: &AuditScratch) {
    let dir = s.copy_dir();
    let lines = local_lines(s);
    let cps: Vec<String> = std::fs::read_to_string(s.checkpoints())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut first = 1u64;
    let segs = names(&dir.join("segments"));
    assert_eq!(
        segs.len(),
        cps.len(),
        "one segment per checkpoint: {segs:?}"
    );
    for (seg, cp_line) in segs.iter().zip(&cps) {
        let cp: Checkpoint = serde_json::from_str(cp_line).unwrap();
        assert_eq!(
            *seg,
            format!("{first:020}-{:020}.jsonl", cp.seq),
            "segments in order, contiguous"
        );
        let want: Vec<u8> = lines[ix(first - 1)..ix(cp.seq)].concat();
        assert_eq!(std::fs::read(dir.join("segments").join(seg)).unwrap(), want);
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("checkpoints/{:020}.json", cp.seq))).unwrap(),
            format!("{cp_line}\n"),
            "the checkpoint line, exact bytes"
        );
        first = cp.seq + 1;
    }
}

#[test]
fn checkpoints_carry_the_kid_and_the_signed_bytes_are_unchanged() {
    let s = fs_scratch("");
    s.append(1, 3);
    s.seal();
    let cp: Checkpoint =
        serde_json::from_str(std::fs::read_to_string(s.checkpoints()).unwrap().trim()).unwrap();
    // kid = first 16 hex of SHA-256 of the DER SPKI, computed by openssl.
    let pem = s.run(&["audit", "public-key"]).1;
    let p = s.scratch.path("pub.pem");
    std::fs::write(&p, &pem).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-in"])
        .arg(&p)
        .args(["-outform", "DER"])
        .output()
        .unwrap();
    assert!(der.status.success());
    let kid = &cloudnx_agent::audit::sha256_hex(&der.stdout)[..16];
    assert_eq!(cp.kid.as_deref(), Some(kid));
    // The §7 bytes verify with openssl.
    let o = support::audit::openssl_verify_checkpoint(&s.scratch.path(""), &p, "test-host", &cp);
    assert!(o.status.success(), "{}", text(&o));
    // Published beside the log.
    assert_eq!(
        names(&s.log().files().keys_dir()),
        vec![format!("{kid}.pem")]
    );
}

#[test]
fn a_destination_down_for_many_checkpoints_catches_up_in_order() {
    let s = fs_scratch("");
    s.append(1, 4);
    assert_eq!(s.run(&["audit", "ship"]).0, 0);
    assert_copy_matches(&s);

    // Down: the root is not a directory any more.
    let root = s.fs_root();
    let away = s.scratch.path("fs.away");
    std::fs::rename(&root, &away).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    for k in 0..12u64 {
        s.append(5 + 3 * k, 7 + 3 * k);
        let (code, out) = s.run(&["audit", "ship"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("audit ship to local"), "{out}");
    }
    let prog = offhost::progress(&s.config.state_dir, "local");
    assert_eq!(prog.seq, 4, "nothing confirmed while down: {prog:?}");
    // Appends were never blocked, and 12 checkpoints wait.
    assert_eq!(local_lines(&s).len(), 40);
    assert_eq!(
        std::fs::read_to_string(s.checkpoints())
            .unwrap()
            .lines()
            .count(),
        13
    );

    // Back: everything arrives, in order, the same bytes.
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&away, &root).unwrap();
    let (code, out) = s.run(&["audit", "ship"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("12 checkpoint(s) shipped; confirmed up to seq 40"),
        "{out}"
    );
    assert_copy_matches(&s);

    // A pass that forgot its progress finds every object already there with
    // the same bytes: nothing twice, nothing different.
    std::fs::remove_file(offhost::progress_path(&s.config.state_dir, "local")).unwrap();
    let (code, out) = s.run(&["audit", "ship"]);
    assert_eq!(code, 0, "{out}");
    assert_copy_matches(&s);
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("off-host head: seq 40"), "{out}");

    // An object changed off the host is never overwritten: shipping stops.
    std::fs::remove_file(offhost::progress_path(&s.config.state_dir, "local")).unwrap();
    let seg = s
        .copy_dir()
        .join("segments/00000000000000000001-00000000000000000004.jsonl");
    let mut b = std::fs::read(&seg).unwrap();
    b[10] ^= 1;
    std::fs::write(&seg, &b).unwrap();
    let (code, out) = s.run(&["audit", "ship"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already exists with other bytes"), "{out}");
}

fn shipped_30() -> AuditScratch {
    let s = fs_scratch("");
    for k in 0..6 {
        s.append(1 + 5 * k, 5 + 5 * k);
        s.seal();
    }
    assert_eq!(s.run(&["audit", "ship"]).0, 0);
    s
}

#[test]
fn a_truncated_local_tail_fails_verify_naming_the_range() {
    let s = shipped_30();
    assert_eq!(s.run(&["audit", "verify", "--destination", "local"]).0, 0);
    // Cut the last 8 records and the checkpoints that name them: the local
    // log alone still verifies.
    let lines = local_lines(&s);
    std::fs::write(s.active(), lines[..22].concat()).unwrap();
    let cps = std::fs::read_to_string(s.checkpoints()).unwrap();
    let kept: Vec<&str> = cps.lines().take(4).collect();
    std::fs::write(s.checkpoints(), kept.join("\n") + "\n").unwrap();
    assert_eq!(s.verify().0, 0, "{}", s.verify().1);
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 23") && out.contains("records 23..=30 were removed locally"),
        "{out}"
    );
}

#[test]
fn a_rewritten_record_resigned_with_the_host_key_fails_verify_naming_the_range() {
    let s = shipped_30();
    // Whoever holds the host edits record 12, rebuilds the chain from there
    // and re-signs every checkpoint with the host's own key.
    let lines = local_lines(&s);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut prev = "0".repeat(64);
    for (i, l) in lines.iter().enumerate() {
        let mut v = cloudnx_agent::audit::Record::parse_canonical(&l[..l.len() - 1]).unwrap();
        if i == 11 {
            v.actor = "someone-else".into();
        }
        v.prev_hash = prev.clone();
        let mut line = v.to_line();
        prev = cloudnx_agent::audit::sha256_hex(&line);
        line.push(b'\n');
        out.push(line);
    }
    assert_ne!(out[11], lines[11]);
    std::fs::write(s.active(), out.concat()).unwrap();
    let key = cloudnx_agent::audit::key::load(&s.config.audit.signing_key_file).unwrap();
    let mut cps = String::new();
    for l in std::fs::read_to_string(s.checkpoints()).unwrap().lines() {
        let c: Checkpoint = serde_json::from_str(l).unwrap();
        let head = cloudnx_agent::audit::Head {
            seq: c.seq,
            hash: cloudnx_agent::audit::sha256_hex(out[ix(c.seq) - 1].strip_suffix(b"\n").unwrap()),
        };
        let n = Checkpoint::sign(&key, "test-host", &head);
        cps += &String::from_utf8(n.to_line()).unwrap();
        cps += "\n";
    }
    std::fs::write(s.checkpoints(), cps).unwrap();
    let (code, o) = s.verify();
    assert_eq!(code, 0, "the local log alone is self-consistent: {o}");
    let (code, o) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 1, "{o}");
    assert!(
        o.contains("FAILED at seq 12") && o.contains("records 12..=30"),
        "{o}"
    );
}

#[test]
fn the_off_host_copy_alone_catches_a_missing_segment_and_another_host_is_read_without_the_local_log(
) {
    let s = shipped_30();
    let (code, out) = s.run(&[
        "audit",
        "verify",
        "--destination",
        "local",
        "--host",
        "test-host",
    ]);
    assert_eq!(code, 0, "{out}");
    let seg = s
        .copy_dir()
        .join("segments/00000000000000000011-00000000000000000015.jsonl");
    std::fs::remove_file(seg).unwrap();
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 11") && out.contains("missing off the host"),
        "{out}"
    );
}

#[test]
fn on_s3_with_object_lock_every_object_is_locked_for_retention_days_and_a_delete_is_refused() {
    let moto = support::s3::Moto::start();
    moto.bucket("audit", true);
    let endpoint = moto.endpoint();
    let mut dest = support::S3Dest::new(&endpoint, "audit");
    dest.lock_days = 1;
    let s = AuditScratch::with_destinations(
        "destinations = [\"s3\"]\nretention_days = 365\n",
        Some(&dest),
    );
    s.append(1, 7);
    let (code, out) = s.run(&["audit", "ship"]);
    assert_eq!(code, 0, "{out}");
    let keys = moto.keys("audit");
    let kid = cloudnx_agent::audit::key::info(&s.config.audit.signing_key_file)
        .unwrap()
        .0;
    assert_eq!(
        keys,
        vec![
            "test-host/audit/test-host/checkpoints/00000000000000000007.json".to_owned(),
            format!("test-host/audit/test-host/keys/{kid}.pem"),
            "test-host/audit/test-host/segments/00000000000000000001-00000000000000000007.jsonl"
                .to_owned(),
        ]
    );
    let lines = std::fs::read(s.active()).unwrap();
    assert_eq!(moto.get("audit", &keys[2]), lines);
    for k in &keys {
        let out = moto.py(&format!(
            "h = s3.head_object(Bucket='audit', Key='{k}')\n\
             print(h['ObjectLockMode'], (h['ObjectLockRetainUntilDate'] - datetime.datetime.now(datetime.timezone.utc)).days)\n\
             try:\n    s3.delete_object(Bucket='audit', Key='{k}', VersionId=h['VersionId'])\n    print('deleted')\n\
             except Exception as e:\n    print('refused')"
        ));
        let mut it = out.split_whitespace();
        assert_eq!(it.next(), Some("COMPLIANCE"), "{k}: {out}");
        let days: i64 = it.next().unwrap().parse().unwrap();
        assert!(days >= 364, "{k} locked for {days} days only: {out}");
        assert_eq!(it.next(), Some("refused"), "{k}: {out}");
    }
    let (code, out) = s.run(&["audit", "verify", "--destination", "s3"]);
    assert_eq!(code, 0, "{out}");
}

fn kids(s: &AuditScratch) -> Vec<(u64, String)> {
    std::fs::read_to_string(s.checkpoints())
        .unwrap()
        .lines()
        .map(|l| {
            let c: Checkpoint = serde_json::from_str(l).unwrap();
            (c.seq, c.kid.unwrap())
        })
        .collect()
}

#[test]
fn rotating_the_key_twice_verifies_across_three_keys_here_and_off_the_host() {
    let s = fs_scratch("");
    let key_file = s.config.audit.signing_key_file.clone();
    s.append(1, 5);
    s.seal();
    let k1 = cloudnx_agent::audit::key::info(&key_file).unwrap().0;
    s.append(6, 7);
    let (code, out) = s.run(&["audit", "rotate-key"]);
    assert_eq!(code, 0, "{out}");
    let k2 = cloudnx_agent::audit::key::info(&key_file).unwrap().0;
    assert!(out.contains(&format!("{k1} -> {k2}")), "{out}");
    s.append(9, 12);
    s.seal();
    assert_eq!(s.run(&["audit", "rotate-key"]).0, 0);
    let k3 = cloudnx_agent::audit::key::info(&key_file).unwrap().0;
    s.append(14, 15);
    s.seal();
    assert!(k1 != k2 && k2 != k3 && k1 != k3);
    // The head before each rotation and the rotation record itself are
    // sealed by the old key; the new key signs from then on.
    assert_eq!(
        kids(&s),
        vec![
            (5, k1.clone()),
            (7, k1.clone()),
            (8, k1.clone()),
            (12, k2.clone()),
            (13, k2.clone()),
            (15, k3.clone()),
        ]
    );
    let rec: serde_json::Value =
        serde_json::from_slice(local_lines(&s)[7].strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(rec["action"], "audit.key_rotated");
    assert_eq!(rec["detail"]["old_kid"], k1.as_str());
    assert_eq!(rec["detail"]["new_kid"], k2.as_str());
    assert!(rec["detail"]["new_public_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 checkpoint(s) verified"), "{out}");
    assert_eq!(s.run(&["audit", "ship"]).0, 0);
    let mut want = vec![
        format!("{k1}.pem"),
        format!("{k2}.pem"),
        format!("{k3}.pem"),
    ];
    want.sort();
    assert_eq!(names(&s.copy_dir().join("keys")), want);
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_forged_rotation_signed_by_the_new_key_alone_fails() {
    let s = fs_scratch("");
    s.append(1, 5);
    s.seal();
    let k1 = cloudnx_agent::audit::key::info(&s.config.audit.signing_key_file)
        .unwrap()
        .0;
    // Whoever holds the host (but not the old key's blessing) appends a
    // rotation to a key of their own and seals it with that key.
    let forged = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let vk = forged.verifying_key();
    let fk = cloudnx_agent::audit::key::kid(&vk);
    cloudnx_agent::audit::key::publish(&s.log().files().keys_dir(), &vk).unwrap();
    s.log()
        .append(cloudnx_agent::audit::AuditEntry {
            actor: "cli:root".into(),
            action: "audit.key_rotated".into(),
            detail: serde_json::json!({
                "old_kid": k1, "new_kid": fk,
                "new_public_key": cloudnx_agent::audit::key::public_pem(&vk).unwrap(),
            }),
            ..Default::default()
        })
        .unwrap();
    let head = s.log().head().unwrap().unwrap();
    let cp = Checkpoint::sign(&forged, "test-host", &head);
    let mut cps = std::fs::read(s.checkpoints()).unwrap();
    cps.extend(cp.to_line());
    cps.push(b'\n');
    std::fs::write(s.checkpoints(), cps).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 6")
            && out.contains(&format!(
                "is signed by key {fk}, but the key in force is {k1}"
            )),
        "{out}"
    );
    // The copy off the host fails the same way.
    assert_eq!(s.run(&["audit", "ship"]).0, 0);
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a forged rotation"), "{out}");
}

fn faketime_ship(s: &AuditScratch, offset: &str) -> (i32, String) {
    let o = std::process::Command::new("faketime")
        .args(["-f", offset])
        .arg(support::agent_bin())
        .arg("--config")
        .arg(&s.config_path)
        .args(["audit", "ship"])
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

#[test]
fn past_retention_days_old_files_go_only_once_off_the_host_and_not_under_a_legal_hold() {
    let s = fs_scratch("rotate_bytes = 1024\nretention_days = 365\n");
    for k in 0..8 {
        s.append(1 + 5 * k, 5 + 5 * k);
        s.seal();
    }
    let before = s.chain_files();
    assert!(before.len() >= 4, "{before:?}");
    // The destination is down: a year later nothing may go.
    let root = s.fs_root();
    let away = s.scratch.path("fs.away");
    std::fs::rename(&root, &away).unwrap();
    std::fs::write(&root, b"down").unwrap();
    let (code, out) = faketime_ship(&s, "+400d");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not yet confirmed off the host"), "{out}");
    assert_eq!(s.chain_files(), before);
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&away, &root).unwrap();

    // Off the host now, but too young: kept.
    let (code, out) = s.run(&["audit", "ship"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("younger than 365 days"), "{out}");
    assert_eq!(s.chain_files(), before);

    // A legal hold: kept.
    std::fs::write(
        s.config.state_dir.join("legal-hold.json"),
        r#"{"reason":"case 7","since":"2026-01-01T00:00:00Z","by":"cli:root"}"#,
    )
    .unwrap();
    let (code, out) = faketime_ship(&s, "+400d");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a legal hold is in force (case 7)"), "{out}");
    assert_eq!(s.chain_files(), before);
    std::fs::remove_file(s.config.state_dir.join("legal-hold.json")).unwrap();

    // A year later, off the host, no hold: every rotated file but the newest
    // goes, whole, each removal audited; verification still passes from the
    // first kept record, here and against the copy.
    let (code, out) = faketime_ship(&s, "+400d");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("retention: removed"), "{out}");
    let files = s.log().files().clone();
    let kept = files.rotated_numbers().unwrap();
    assert!(!kept.contains(&1), "{kept:?}");
    let retained = files.retained_from().unwrap().unwrap();
    assert!(retained.first_seq > 1);
    let lines: Vec<String> = std::fs::read_to_string(s.active())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"action\":\"audit.retention\"")),
        "{lines:?}"
    );
    s.seal();
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed by local retention"), "{out}");
    assert_eq!(s.run(&["audit", "ship"]).0, 0);
    let (code, out) = s.run(&["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 0, "{out}");
    // Removing one more file by hand (not by retention) is caught.
    let first_kept = files.rotated(*kept.first().unwrap());
    std::fs::remove_file(first_kept).unwrap();
    assert_eq!(s.verify().0, 1);
}

#[test]
fn checkpoints_from_before_kids_still_verify_after_a_rotation() {
    let s = fs_scratch("");
    s.append(1, 3);
    s.seal();
    // As written before SPEC §11: no kid.
    let cps = std::fs::read_to_string(s.checkpoints()).unwrap();
    let c: serde_json::Value = serde_json::from_str(cps.trim()).unwrap();
    let legacy = format!(
        "{{\"seq\":{},\"hash\":{},\"ts\":{},\"signature\":{}}}\n",
        c["seq"], c["hash"], c["ts"], c["signature"]
    );
    std::fs::write(s.checkpoints(), legacy).unwrap();
    assert_eq!(s.verify().0, 0, "{}", s.verify().1);
    assert_eq!(s.run(&["audit", "rotate-key"]).0, 0);
    s.append(5, 6);
    s.seal();
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 checkpoint(s) verified"), "{out}");
}
