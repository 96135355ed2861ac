//! `audit verify` and `audit public-key`.

use super::{load_or_report, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::audit::{key, verify, AuditLog};
use std::path::PathBuf;

/// `audit verify`: 0 when the chain and every checkpoint verify, 1 naming the
/// first bad seq, 2 for configuration errors.
pub fn verify(config: Option<PathBuf>) -> u8 {
    let (_, cfg) = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes);
    let key_path = &cfg.audit.signing_key_file;
    let key = if key_path.exists() {
        match key::load(key_path) {
            Ok(k) => Some(k.verifying_key()),
            Err(e) => {
                eprintln!("cloudnx-agent: audit verify: {e:#}");
                return EXIT_USAGE;
            }
        }
    } else {
        None
    };
    let cps = log.files().checkpoints();
    if key.is_none() && std::fs::metadata(&cps).is_ok_and(|m| m.len() > 0) {
        eprintln!(
            "cloudnx-agent: audit verify: {} holds checkpoints but the signing key {} does not exist, \
             so their signatures cannot be checked; point `[audit] signing_key_file` at the key that signed them",
            cps.display(),
            key_path.display()
        );
        return EXIT_USAGE;
    }
    let started = std::time::Instant::now();
    let report = match verify::verify(log.files(), &cfg.host_id, key.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cloudnx-agent: audit verify: {e:#}");
            return EXIT_FAILED;
        }
    };
    print_report(&report, &log, started.elapsed());
    match &report.problem {
        None => EXIT_OK,
        Some(p) => {
            eprintln!(
                "cloudnx-agent: audit verify FAILED at seq {}: {}",
                p.seq, p.what
            );
            EXIT_FAILED
        }
    }
}

fn print_report(r: &verify::Report, log: &AuditLog, took: std::time::Duration) {
    let verdict = if r.problem.is_none() {
        "OK"
    } else {
        "verified up to the problem below"
    };
    println!(
        "audit log {}: {verdict}: {} records in {} file(s) ({:.3} s)",
        log.files().active.display(),
        r.records,
        r.files.len(),
        took.as_secs_f64()
    );
    for f in &r.files {
        println!("  file {}", f.display());
    }
    match &r.head {
        Some(h) => println!("head: seq {} hash {}", h.seq, h.hash),
        None => println!("head: none (the log is empty)"),
    }
    match &r.last_checkpoint {
        Some(c) => println!(
            "last checkpoint: seq {} hash {} at {} (signature good; {} checkpoint(s) verified)",
            c.seq, c.hash, c.ts, r.checkpoints
        ),
        None => println!("last checkpoint: none"),
    }
    if let Some(h) = &r.head {
        let sealed = r.last_checkpoint.as_ref().map_or(0, |c| c.seq);
        if h.seq > sealed {
            println!(
                "unsealed: seq {}..={} (not yet covered by a checkpoint)",
                sealed + 1,
                h.seq
            );
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

/// `audit public-key`: print the checkpoint public key (SPKI PEM), creating
/// the signing key (0600) if it does not exist yet.
pub fn public_key(config: Option<PathBuf>) -> u8 {
    let (_, cfg) = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match key::load_or_create(&cfg.audit.signing_key_file)
        .and_then(|k| key::public_pem(&k.verifying_key()))
    {
        Ok(pem) => {
            print!("{pem}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cloudnx-agent: audit public-key: {e:#}");
            EXIT_USAGE
        }
    }
}
