//! `audit verify [--destination NAME [--host H]]`, `audit ship`,
//! `audit rotate-key` and `audit public-key`.

use super::{act_as_state_owner, load_or_report, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::audit::{key, offhost, verify, AuditLog};
use std::path::PathBuf;

/// Load the configuration and become the owner of `state_dir` (a root run).
fn load_as_owner(config: Option<PathBuf>) -> Result<crate::config::Config, u8> {
    let (_, cfg) = load_or_report(config)?;
    if let Err(e) = act_as_state_owner(&cfg) {
        eprintln!("cloudnx-agent: {e}");
        return Err(EXIT_FAILED);
    }
    Ok(cfg)
}

/// `audit ship`: one shipping pass to every `[audit] destinations` entry,
/// as the daemon's checkpointer does each interval (seal the head first),
/// then local retention.
pub async fn ship(config: Option<PathBuf>) -> u8 {
    let cfg = match load_as_owner(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.audit.destinations.is_empty() {
        eprintln!("cloudnx-agent: audit ship: [audit] destinations is empty; name one or more [[destinations]] there");
        return EXIT_USAGE;
    }
    let log = AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes);
    let (l2, k2, h2) = (log.clone(), cfg.audit.key_source(), cfg.host_id.clone());
    match tokio::task::spawn_blocking(move || crate::audit::checkpoint::seal_from(&l2, &k2, &h2))
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("cloudnx-agent: audit ship: sealing the head: {e:#}");
            return EXIT_FAILED;
        }
        Err(e) => {
            eprintln!("cloudnx-agent: audit ship: {e}");
            return EXIT_FAILED;
        }
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut code = EXIT_OK;
    for name in &cfg.audit.destinations {
        let r = match cfg.audit.target(&cfg.destinations, name, &cancel) {
            Ok(t) => offhost::ship(log.files(), &cfg.host_id, &cfg.state_dir, &t).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(Some(s)) => println!(
                "{name}: {} checkpoint(s) shipped; confirmed up to seq {}",
                s.checkpoints, s.progress.seq
            ),
            Ok(None) => println!("{name}: another shipping pass is running; nothing done"),
            Err(e) => {
                eprintln!("cloudnx-agent: audit ship to {name}: {e:#}");
                code = EXIT_FAILED;
            }
        }
    }
    let (dests, days, state) = (
        cfg.audit.destinations.clone(),
        cfg.audit.retention_days,
        cfg.state_dir.clone(),
    );
    let now = chrono::Utc::now().timestamp();
    match tokio::task::spawn_blocking(move || {
        crate::audit::retention::prune(&log, &state, &dests, days, now)
    })
    .await
    {
        Ok(Ok(p)) => {
            for (f, a, b) in &p.removed {
                println!(
                    "retention: removed {f} (seq {a}..={b}, off the host, older than {days} days)"
                );
            }
            if let Some(why) = &p.kept_because {
                println!("retention: kept the rest: {why}");
            }
        }
        Ok(Err(e)) => {
            eprintln!("cloudnx-agent: audit retention: {e:#}");
            code = EXIT_FAILED;
        }
        Err(e) => {
            eprintln!("cloudnx-agent: audit retention: {e}");
            code = EXIT_FAILED;
        }
    }
    code
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `audit verify --destination NAME [--host H]`: the off-host copy alone,
/// then (for this host) the local log against it.
pub async fn verify_destination(config: Option<PathBuf>, name: &str, host: Option<String>) -> u8 {
    let (_, cfg) = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let target = match cfg.audit.target(&cfg.destinations, name, &cancel) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cloudnx-agent: audit verify: {e:#}");
            return EXIT_USAGE;
        }
    };
    let host = host.unwrap_or_else(|| cfg.host_id.clone());
    let log = AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes);
    let local = (host == cfg.host_id && log.files().active.exists()).then(|| log.files().clone());
    let work = Scratch(std::env::temp_dir().join(format!(
        "cloudnx-audit-verify-{}",
        &crate::util::new_id()[..12]
    )));
    if let Err(e) = crate::fsx::ensure_private_dir(&work.0) {
        eprintln!("cloudnx-agent: audit verify: a scratch directory: {e:#}");
        return EXIT_FAILED;
    }
    let r = match offhost::verify_offhost(&target, &host, local.as_ref(), &work.0).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cloudnx-agent: audit verify: {e:#}");
            return EXIT_FAILED;
        }
    };
    println!(
        "off-host copy on {name} ({}) of host {host}: {} segment(s), {} record(s), {} checkpoint(s), keys {:?}",
        target.store.location(),
        r.segments,
        r.copy.records,
        r.copy.checkpoints,
        r.keys
    );
    match &r.offhost_head {
        Some(h) => println!("off-host head: seq {} hash {}", h.seq, h.hash),
        None => println!("off-host head: none (nothing shipped yet)"),
    }
    match (&local, &r.local_head) {
        (None, _) => println!("local log: not compared (another host, or no local log)"),
        (Some(_), Some(h)) => println!("local head: seq {} hash {}", h.seq, h.hash),
        (Some(_), None) => println!("local head: none"),
    }
    match &r.problem {
        None => {
            println!("OK");
            EXIT_OK
        }
        Some(p) => {
            eprintln!(
                "cloudnx-agent: audit verify FAILED at seq {}: {}",
                p.seq, p.what
            );
            EXIT_FAILED
        }
    }
}

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
    let keys = match verify::Keys::local(log.files(), key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cloudnx-agent: audit verify: {e:#}");
            return EXIT_FAILED;
        }
    };
    let cps = log.files().checkpoints();
    if keys.is_empty() && std::fs::metadata(&cps).is_ok_and(|m| m.len() > 0) {
        eprintln!(
            "cloudnx-agent: audit verify: {} holds checkpoints but the signing key {} does not exist, \
             so their signatures cannot be checked; point `[audit] signing_key_file` at the key that signed them",
            cps.display(),
            key_path.display()
        );
        return EXIT_USAGE;
    }
    let started = std::time::Instant::now();
    let report = match verify::verify(log.files(), &cfg.host_id, &keys) {
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

/// `audit public-key`: print the checkpoint public key (SPKI PEM): read from
/// the token with `signing_key_pkcs11`, else from the key file (created 0600
/// if it does not exist yet).
pub fn public_key(config: Option<PathBuf>) -> u8 {
    let (_, cfg) = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cfg
        .audit
        .key_source()
        .open()
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

/// `audit rotate-key`: seal with the old key, record and seal the rotation,
/// sign on with a new key (SPEC §11).
pub async fn rotate_key(config: Option<PathBuf>) -> u8 {
    let cfg = match load_as_owner(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.audit.signing_key_pkcs11.is_some() {
        eprintln!(
            "cloudnx-agent: audit rotate-key rotates signing_key_file; the checkpoints are signed on a PKCS#11 token \
             (signing_key_pkcs11), whose keys are made and retired on the token"
        );
        return EXIT_USAGE;
    }
    let log = AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes);
    let actor = format!("cli:{}", crate::util::unix_user());
    let (k, h) = (cfg.audit.signing_key_file.clone(), cfg.host_id.clone());
    match tokio::task::spawn_blocking(move || {
        crate::audit::checkpoint::rotate_key(&log, &k, &h, &actor)
    })
    .await
    {
        Ok(Ok(r)) => {
            println!(
                "audit key rotated: {} -> {} (audit.key_rotated at seq {}, sealed by the old key)",
                r.old_kid, r.new_kid, r.seq
            );
            EXIT_OK
        }
        Ok(Err(e)) => {
            eprintln!("cloudnx-agent: audit rotate-key: {e:#}");
            EXIT_FAILED
        }
        Err(e) => {
            eprintln!("cloudnx-agent: audit rotate-key: {e}");
            EXIT_FAILED
        }
    }
}
