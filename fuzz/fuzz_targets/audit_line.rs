//! Audit log lines: the canonical-line parser, checkpoint lines, the tail
//! splitter, and `audit verify` over a small synthetic log whose middle line
//! is replaced by the input.
//!
//! Properties: no panic; an accepted line re-serialises to exactly its bytes
//! and its head hash is the SHA-256 of those bytes; a synthetic log verifies
//! when the input is the original middle line and reports a problem whenever
//! it is anything else (no edit of a record goes unnoticed).
#![no_main]

use cloudnx_agent::audit::checkpoint::Checkpoint;
use cloudnx_agent::audit::files::{split_tail, LogFiles};
use cloudnx_agent::audit::verify::{verify, Keys};
use cloudnx_agent::audit::{sha256_hex, AuditEntry, Head, Record};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

struct Synthetic {
    _dir: tempfile::TempDir,
    active: PathBuf,
    lines: [Vec<u8>; 3],
}

fn synthetic() -> &'static Synthetic {
    static S: OnceLock<Synthetic> = OnceLock::new();
    S.get_or_init(|| {
        let entry = |action: &str| AuditEntry {
            actor: "schedule".into(),
            action: action.into(),
            detail: serde_json::json!({"n": action.len()}),
            ..Default::default()
        };
        let r1 = Record::next(None, entry("job.start")).to_line();
        let h1 = Head::of_line(&r1).expect("record 1");
        let r2 = Record::next(Some(&h1), entry("backup.retention.delete")).to_line();
        let h2 = Head::of_line(&r2).expect("record 2");
        let r3 = Record::next(Some(&h2), entry("job.finish")).to_line();
        let dir = tempfile::tempdir().expect("temp dir");
        let active = dir.path().join("audit.log");
        // The baseline the property compares against: untouched, it verifies.
        std::fs::write(&active, [&r1[..], b"\n", &r2, b"\n", &r3, b"\n"].concat())
            .expect("write synthetic log");
        let files = LogFiles::new(&active);
        let keys = Keys::local(&files, None).expect("keys");
        let report = verify(&files, "fuzz-host", &keys).expect("verify");
        assert!(
            report.problem.is_none() && report.records == 3,
            "{:?}",
            report.problem
        );
        Synthetic {
            _dir: dir,
            active,
            lines: [r1, r2, r3],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = Record::parse_canonical(data) {
        assert_eq!(
            rec.to_line(),
            data,
            "an accepted line must be exactly what we write"
        );
        let head = Head::of_line(data).expect("of_line accepts what parse_canonical does");
        assert_eq!((head.seq, head.hash), (rec.seq, sha256_hex(data)));
    }

    if let Ok(cp) = serde_json::from_slice::<Checkpoint>(data) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = cp.check_signature(&key, "fuzz-host");
        let _ = cp.to_line();
    }

    for at_start in [false, true] {
        if let Some((whole, last)) = split_tail(data, at_start) {
            assert!(whole <= data.len());
            if let Some((a, b)) = last {
                assert!(a <= b && b < whole && data[b] == b'\n');
                assert!(!data[a..b].contains(&b'\n'));
            }
        }
    }

    // verify over record 1, the input in place of record 2, record 3.
    let s = synthetic();
    let mut log = Vec::with_capacity(data.len() + 1024);
    for part in [&s.lines[0][..], data, &s.lines[2][..]] {
        log.extend_from_slice(part);
        log.push(b'\n');
    }
    std::fs::write(&s.active, &log).expect("write synthetic log");
    let files = LogFiles::new(&s.active);
    let keys = Keys::local(&files, None).expect("keys");
    let report = verify(&files, "fuzz-host", &keys).expect("verify (no I/O error)");
    if data == &s.lines[1][..] {
        assert!(
            report.problem.is_none(),
            "the untouched log must verify: {:?}",
            report.problem
        );
        assert_eq!(report.records, 3);
    } else {
        assert!(
            report.problem.is_some(),
            "an edited record 2 went unnoticed: {:?}",
            String::from_utf8_lossy(data)
        );
    }
});
