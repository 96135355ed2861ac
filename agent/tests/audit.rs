//! The audit chain end to end: records appended through the library, checked
//! by `cloudnx-agent audit verify`; every kind of tampering is caught at the
//! right seq.

mod support;

use support::audit::{mixed_entry, AuditScratch};

/// A log of `n` mixed records rotating past `rotate` bytes, sealed at the head.
fn log_of(n: u64, rotate: u64) -> AuditScratch {
    sealed_every(n, rotate, 50)
}

/// Like [`log_of`], with a checkpoint every `every` records.
fn sealed_every(n: u64, rotate: u64, every: u64) -> AuditScratch {
    let s = AuditScratch::new(rotate);
    let log = s.log();
    for i in 1..=n {
        assert_eq!(log.append(mixed_entry(i)).unwrap(), i);
        if i % every == 0 {
            s.seal();
        }
    }
    s.seal();
    s
}

fn bad_seq(s: &AuditScratch) -> Option<u64> {
    s.verify_lib().problem.map(|p| p.seq)
}

#[test]
fn ten_thousand_mixed_records_across_rotations_verify() {
    let s = AuditScratch::new(1 << 20);
    let log = s.log();
    let t = std::time::Instant::now();
    for i in 1..=10_000u64 {
        assert_eq!(log.append(mixed_entry(i)).unwrap(), i);
        if i % 2_000 == 0 {
            s.seal();
        }
    }
    eprintln!("appended 10000 records in {:.2?}", t.elapsed());
    let files = s.chain_files();
    assert!(files.len() >= 3, "expected rotations, got {files:?}");
    // The first record of each new file carries the hash of the last line of the previous one.
    for pair in files.windows(2) {
        let prev = std::fs::read_to_string(&pair[0]).unwrap();
        let last = prev.lines().last().unwrap();
        let next = std::fs::read_to_string(&pair[1]).unwrap();
        let first: serde_json::Value = serde_json::from_str(next.lines().next().unwrap()).unwrap();
        assert_eq!(
            first["prev_hash"],
            cloudnx_agent::audit::sha256_hex(last.as_bytes())
        );
    }
    let t = std::time::Instant::now();
    let (code, out) = s.verify();
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 10000 records in"), "{out}");
    assert!(out.contains("last checkpoint: seq 10000 "), "{out}");
    assert!(out.contains("5 checkpoint(s) verified"), "{out}");
    eprintln!(
        "audit verify of 10000 records in {} files took {took:.2?} (whole process)\n{out}",
        files.len()
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "verify took {took:?}"
    );
}

#[test]
fn records_carry_exactly_the_spec_fields_in_order() {
    let s = log_of(3, 1 << 20);
    let line = std::fs::read_to_string(s.active()).unwrap();
    let first = line.lines().next().unwrap();
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(first)
            .unwrap()
            .keys()
            .cloned()
            .collect();
    let mut want = vec![
        "seq",
        "ts",
        "actor",
        "source_ip",
        "method",
        "path",
        "status",
        "request_id",
        "user_agent",
        "duration_ms",
        "action",
        "detail",
        "prev_hash",
    ];
    // serde_json's Map is sorted; compare the set here and the order on the raw text.
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    let order: Vec<usize> = [
        "\"seq\"",
        "\"ts\"",
        "\"actor\"",
        "\"source_ip\"",
        "\"method\"",
        "\"path\"",
        "\"status\"",
        "\"request_id\"",
        "\"user_agent\"",
        "\"duration_ms\"",
        "\"action\"",
        "\"detail\"",
        "\"prev_hash\"",
    ]
    .iter()
    .map(|k| first.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{first}");
    assert!(first.contains(&format!(
        "\"prev_hash\":\"{}\"",
        cloudnx_agent::audit::GENESIS
    )));
}

#[test]
fn changing_any_single_byte_of_any_record_is_caught_at_that_seq() {
    let s = log_of(60, 4096);
    assert!(s.chain_files().len() >= 3);
    assert_eq!(bad_seq(&s), None);
    let spans = s.record_spans();
    assert_eq!(spans.len(), 60);
    let mut tried = 0;
    // Every record; in each, positions spread over the line including its newline.
    for (idx, (file, start, len)) in spans.iter().enumerate() {
        let seq = idx as u64 + 1;
        let mut positions = vec![
            0,
            1,
            len / 3,
            len / 2,
            len - 66,
            len - 3,
            len - 2,
            len - 1,
            *len,
        ];
        positions.extend((0..8).map(|k| (idx * 7919 + k * 104_729) % (len + 1)));
        for pos in positions {
            let original = std::fs::read(file).unwrap();
            let mut bytes = original.clone();
            let at = start + pos;
            for replacement in [bytes[at] ^ 0x01, b'\n', b'"'] {
                if replacement == original[at] {
                    continue;
                }
                bytes[at] = replacement;
                std::fs::write(file, &bytes).unwrap();
                let got = bad_seq(&s);
                std::fs::write(file, &original).unwrap();
                assert_eq!(
                    got,
                    Some(seq),
                    "byte {pos} of seq {seq} ({}) changed to {replacement:#04x}: {:?}",
                    file.display(),
                    s.verify_lib().problem
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 1500, "{tried}");
    // And the CLI says so with exit 1, naming the seq and what is wrong.
    let (file, start, _) = &spans[41];
    let original = std::fs::read(file).unwrap();
    let mut bytes = original.clone();
    let at = start
        + original[*start..]
            .windows(6)
            .position(|w| w == b"actor\"")
            .unwrap()
        + 9;
    bytes[at] ^= 0x20;
    std::fs::write(file, &bytes).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 42: record seq 42 was changed"),
        "{out}"
    );
}

#[test]
fn deleting_a_record_is_caught_at_its_seq() {
    let s = log_of(30, 1 << 20);
    let text = std::fs::read_to_string(s.active()).unwrap();
    let kept: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 11)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(s.active(), kept).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 12: ") && out.contains("record seq 12 is missing"),
        "{out}"
    );
}

#[test]
fn reordering_two_records_is_caught_at_the_first_moved_seq() {
    let s = log_of(30, 1 << 20);
    let text = std::fs::read_to_string(s.active()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(19, 20);
    std::fs::write(s.active(), lines.join("\n") + "\n").unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 20: ") && out.contains("out of order"),
        "{out}"
    );
}

#[test]
fn truncating_the_log_is_caught_at_the_first_missing_seq() {
    // At a line boundary: only the signed checkpoint knows more existed.
    let s = log_of(30, 1 << 20);
    let text = std::fs::read_to_string(s.active()).unwrap();
    let kept: String = text.lines().take(25).map(|l| format!("{l}\n")).collect();
    std::fs::write(s.active(), kept).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 26: ") && out.contains("log ends at seq 25"),
        "{out}"
    );

    // A rotated file cut short, in the middle of a record or at a line boundary.
    let s = log_of(60, 4096);
    let spans = s.record_spans();
    let first_file = &spans[0].0;
    let in_first: Vec<_> = spans
        .iter()
        .enumerate()
        .filter(|(_, sp)| &sp.0 == first_file)
        .collect();
    let (idx, (_, start, _)) = in_first[in_first.len() - 2];
    let original = std::fs::read(first_file).unwrap();
    std::fs::write(first_file, &original[..start + 10]).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAILED at seq {}: ", idx + 1)) && out.contains("truncated"),
        "{out}"
    );
    std::fs::write(first_file, &original[..*start]).unwrap();
    assert_eq!(bad_seq(&s), Some(idx as u64 + 1));

    // A whole rotated file removed.
    std::fs::write(first_file, &original).unwrap();
    assert_eq!(bad_seq(&s), None);
    std::fs::remove_file(&s.chain_files()[1]).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is missing"), "{out}");
}

#[test]
fn a_forged_or_moved_checkpoint_fails() {
    let s = sealed_every(20, 1 << 20, 5);
    let cps = std::fs::read_to_string(s.checkpoints()).unwrap();
    let last = cps.lines().last().unwrap().to_owned();
    let mut cp: serde_json::Value = serde_json::from_str(&last).unwrap();
    let restore = || std::fs::write(s.checkpoints(), &cps).unwrap();

    // Signed by another key (the attacker rewrote the chain and sealed it themselves).
    use base64::Engine;
    use ed25519_dalek::Signer;
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let msg =
        cloudnx_agent::audit::checkpoint::message("test-host", 20, cp["hash"].as_str().unwrap());
    cp["signature"] = base64::engine::general_purpose::STANDARD
        .encode(other.sign(&msg).to_bytes())
        .into();
    std::fs::write(s.checkpoints(), cps.replace(&last, &cp.to_string())).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 20: ")
            && out.contains("does not verify with the audit public key"),
        "{out}"
    );
    restore();

    // A real signature moved to another seq.
    let mut moved: serde_json::Value = serde_json::from_str(&last).unwrap();
    moved["seq"] = 19.into();
    let earlier: Vec<&str> = cps.lines().collect();
    std::fs::write(s.checkpoints(), format!("{}\n", moved)).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    restore();

    // A hash changed to match an edited record, signature kept.
    let mut rehashed: serde_json::Value = serde_json::from_str(&last).unwrap();
    rehashed["hash"] = "f".repeat(64).into();
    std::fs::write(s.checkpoints(), cps.replace(&last, &rehashed.to_string())).unwrap();
    assert_eq!(s.verify().0, 1);
    restore();

    // Checkpoints reordered.
    let mut swapped = earlier.clone();
    swapped.reverse();
    std::fs::write(s.checkpoints(), swapped.join("\n") + "\n").unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reordered"), "{out}");
    restore();
    assert_eq!(s.verify().0, 0);
}

#[test]
fn a_chain_rewritten_from_scratch_contradicts_the_signed_checkpoints() {
    // Whoever holds the host can rebuild a self-consistent chain; the heads
    // already signed (and sent off the host) no longer match it.
    let s = log_of(20, 1 << 20);
    let text = std::fs::read_to_string(s.active()).unwrap();
    let mut prev = cloudnx_agent::audit::GENESIS.to_owned();
    let mut out = String::new();
    for line in text.lines() {
        let mut r: cloudnx_agent::audit::Record = serde_json::from_str(line).unwrap();
        if r.seq == 7 {
            r.actor = "someone-else".into();
        }
        r.prev_hash = prev.clone();
        let l = String::from_utf8(r.to_line()).unwrap();
        prev = cloudnx_agent::audit::sha256_hex(l.as_bytes());
        out.push_str(&l);
        out.push('\n');
    }
    std::fs::write(s.active(), out).unwrap();
    let (code, text) = s.verify();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAILED at seq 20: ")
            && text.contains("differs from the one sealed in signed checkpoint"),
        "{text}"
    );
}

#[test]
fn a_torn_tail_is_reported_then_set_aside_audited_and_the_chain_continues() {
    let s = log_of(5, 1 << 20);
    // A crash in the middle of writing record 6 (power loss, disk full).
    let torn = b"{\"seq\":6,\"ts\":\"2026-11-23T10:00:00.000Z\",\"actor\":\"sched";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(s.active())
        .unwrap();
    std::io::Write::write_all(&mut f, torn).unwrap();
    drop(f);
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("a torn write of {} bytes after seq 5", torn.len())),
        "{out}"
    );

    // The next append sets the bytes aside, audits it, and continues the chain.
    assert_eq!(s.log().append(mixed_entry(1)).unwrap(), 7);
    let text = std::fs::read_to_string(s.active()).unwrap();
    let rec6: cloudnx_agent::audit::Record =
        serde_json::from_str(text.lines().nth(5).unwrap()).unwrap();
    assert_eq!(rec6.action, "audit.torn_tail");
    assert_eq!(rec6.detail["torn_bytes"], torn.len() as u64);
    assert_eq!(rec6.detail["after_seq"], 5);
    let side = rec6.detail["set_aside_to"].as_str().unwrap();
    assert_eq!(std::fs::read(side).unwrap(), torn);
    assert_eq!(
        rec6.detail["sha256"],
        cloudnx_agent::audit::sha256_hex(torn)
    );
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 7 records"), "{out}");
    assert!(out.contains("sha256 matches"), "{out}");
}

#[test]
fn a_damaged_last_line_stops_appends_instead_of_forking_the_chain() {
    let s = log_of(5, 1 << 20);
    let text = std::fs::read_to_string(s.active()).unwrap();
    std::fs::write(s.active(), text.replacen("\"seq\":5,", "\"seq\":5 ,", 1)).unwrap();
    let e = s.log().append(mixed_entry(1)).unwrap_err().to_string();
    assert!(
        e.contains("was edited or damaged") && e.contains("audit verify"),
        "{e}"
    );
}

#[test]
fn public_key_is_spki_pem_and_the_key_file_is_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let s = AuditScratch::new(1 << 20);
    let o = support::agent(&s.config_path, &["audit", "public-key"]);
    assert!(o.status.success(), "{}", support::text(&o));
    let pem = String::from_utf8(o.stdout).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
            && pem.ends_with("-----END PUBLIC KEY-----\n"),
        "{pem}"
    );
    let mode = std::fs::metadata(&s.config.audit.signing_key_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = support::agent(&s.config_path, &["audit", "public-key"]);
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        pem,
        "the key is created once"
    );
}

#[test]
fn verify_exits_2_on_configuration_errors() {
    let s = AuditScratch::new(1 << 20);
    std::fs::write(&s.config_path, "host_id = 1\n").unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 2, "{out}");
    let bad = support::Scratch::new();
    let o = support::agent(&bad.config("rotate_bytes = 10\n"), &["audit", "verify"]);
    let out = support::text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("agent.toml:12") && out.contains("rotate_bytes must be at least 1024"),
        "{out}"
    );
    // Checkpoints but no key to check them with is a configuration problem
    // too; the public keys published beside the log (`{path}.keys/`) are
    // enough without the private key.
    let s = log_of(3, 1 << 20);
    std::fs::remove_file(&s.config.audit.signing_key_file).unwrap();
    assert_eq!(s.verify().0, 0, "{}", s.verify().1);
    std::fs::remove_dir_all(s.log().files().keys_dir()).unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("signing_key_file"), "{out}");
}
