//! docs/audit.md, run for real: its `sha256sum` chain loop and its
//! `openssl pkeyutl -verify -rawin` checkpoint check, on a log the agent wrote.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::audit::{copy_dir, mixed_entry, AuditScratch};

/// The fenced block of docs/audit.md whose info string is `sh {name}`.
fn doc_script(name: &str) -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let open = format!("```sh {name}\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("docs/audit.md has no ```sh {name} block"))
        + open.len();
    let len = text[start..].find("```\n").unwrap();
    text[start..start + len].to_owned()
}

/// Run a doc script with `sh` in `dir`; (exit code, stdout+stderr).
fn run(dir: &Path, script: &str) -> (i32, String) {
    let o = Command::new(support::require("sh"))
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("HOST", "test-host")
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), support::text(&o))
}

/// A small rotated, sealed log copied (as an auditor would) with the public key.
fn auditor_copy() -> (AuditScratch, tempfile::TempDir, PathBuf) {
    for tool in ["sha256sum", "jq", "openssl", "base64", "sed"] {
        support::require(tool);
    }
    let s = AuditScratch::new(3000);
    for i in 1..=12 {
        s.log().append(mixed_entry(i)).unwrap();
        if i == 5 {
            s.seal();
        }
    }
    s.seal();
    assert!(s.chain_files().len() >= 2);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("audit-check");
    copy_dir(s.active().parent().unwrap(), &dir);
    let o = support::agent(&s.config_path, &["audit", "public-key"]);
    assert!(o.status.success());
    std::fs::write(dir.join("pub.pem"), &o.stdout).unwrap();
    (s, work, dir)
}

#[test]
fn the_documented_sha256sum_loop_checks_the_chain_across_rotated_files() {
    let (s, _work, dir) = auditor_copy();
    let script = doc_script("check-chain");
    let head = s.log().head().unwrap().unwrap();
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "chain OK: 12 records, head seq 12 hash {}",
            head.hash
        )),
        "{out}"
    );

    // An edit in record 4 breaks the link into record 5.
    let files = s.chain_files();
    let name = files[0].file_name().unwrap();
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let line4 = text.lines().nth(3).unwrap().to_owned();
    let edited = line4.replacen("\"ts\":\"2", "\"ts\":\"3", 1);
    assert_ne!(edited, line4);
    std::fs::write(&path, text.replace(&line4, &edited)).unwrap();
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BAD: seq 5 "), "{out}");
}

#[test]
fn the_documented_openssl_pkeyutl_rawin_command_verifies_a_checkpoint() {
    let (_s, _work, dir) = auditor_copy();
    let script = doc_script("check-checkpoint");
    assert!(script
        .contains("openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in msg -sigfile sig"));
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Signature Verified Successfully"), "{out}");
    assert!(out.contains("checkpoint OK: seq 12 "), "{out}");
    assert_eq!(
        std::fs::read(dir.join("msg"))
            .unwrap()
            .split(|b| *b == b'\n')
            .count(),
        5,
        "4 lines and a final newline"
    );

    // The same command refuses another host's message and a forged signature.
    let (code, out) = run(&dir, &format!("HOST=other-host; {script}"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Signature Verification Failure"), "{out}");
    let cps = dir.join("audit.jsonl.checkpoints");
    let text = std::fs::read_to_string(&cps).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    let mut cp: serde_json::Value = serde_json::from_str(&last).unwrap();
    let sig = cp["signature"].as_str().unwrap().to_owned();
    let forged = format!(
        "{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    cp["signature"] = forged.into();
    std::fs::write(&cps, text.replace(&last, &cp.to_string())).unwrap();
    let (code, out) = run(&dir, &script);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Signature Verification Failure"), "{out}");
}

#[test]
fn the_documented_off_host_recipe_checks_the_copy_across_a_key_rotation() {
    for tool in ["sha256sum", "jq", "openssl", "base64", "sed"] {
        support::require(tool);
    }
    let s = AuditScratch::with_local_destination("destinations = [\"local\"]\n");
    for i in 1..=6 {
        s.log().append(mixed_entry(i)).unwrap();
        if i % 3 == 0 {
            s.seal();
        }
    }
    let agent = |args: &[&str]| {
        let o = support::agent(&s.config_path, args);
        assert!(o.status.success(), "{}", support::text(&o));
    };
    agent(&["audit", "rotate-key"]);
    for i in 7..=9 {
        s.log().append(mixed_entry(i)).unwrap();
    }
    agent(&["audit", "ship"]);
    let copy = s.scratch.path("fs/test-host/audit/test-host");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("copy");
    copy_dir(&copy, &dir);
    let script = doc_script("check-offhost");
    let head = s.log().head().unwrap().unwrap();
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "copy OK: 10 records, 4 checkpoints, head seq 10 hash {}",
            head.hash
        )),
        "{out}"
    );

    // A changed byte in a segment breaks the chain.
    let seg = dir.join("segments/00000000000000000001-00000000000000000003.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("\"ts\":\"2", "\"ts\":\"3", 1)).unwrap();
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BAD: seq 2 "), "{out}");
    std::fs::write(&seg, &text).unwrap();

    // A missing segment is named.
    std::fs::remove_file(dir.join("segments/00000000000000000004-00000000000000000006.jsonl"))
        .unwrap();
    let (code, out) = run(&dir, &script);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BAD: records 4..6 are missing"), "{out}");
}
