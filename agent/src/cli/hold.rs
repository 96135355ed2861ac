//! `hold set --reason TEXT`, `hold release`, `hold status [--json]`: the
//! legal hold (SPEC §10). The hold itself is the `hold` leaf's file; here it
//! is set and released, audited with its reason, and `cloudnx_legal_hold`
//! updated. A release also turns OFF the Object Lock legal holds the agent
//! set (whatever fails is retried by the next backup run, before it prunes).

use super::{act_as_state_owner, load_or_report, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::audit::{AuditEntry, AuditLog};
use crate::config::Config;
use crate::hold::{self, Hold};
use crate::metrics::{Family, MetricsStore, MetricsUpdate};
use serde_json::json;
use std::path::PathBuf;

fn actor() -> String {
    format!("cli:{}", crate::util::unix_user())
}

fn audit(cfg: &Config, action: &str, detail: serde_json::Value) -> anyhow::Result<u64> {
    AuditLog::new(&cfg.audit.path, cfg.audit.rotate_bytes).append(AuditEntry {
        actor: actor(),
        request_id: Some(crate::util::new_id()),
        action: action.into(),
        detail,
        ..Default::default()
    })
}

fn metric(cfg: &Config, held: bool) {
    let mut m = MetricsUpdate::default();
    m.set(Family::LegalHold, &[], if held { 1.0 } else { 0.0 });
    if let Err(e) = MetricsStore::new(&cfg.state_dir, &cfg.textfile_dir, &cfg.host_id).apply(&m) {
        eprintln!("cloudnx-agent: updating cloudnx_legal_hold: {e:#}");
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, u8> {
    let (_, cfg) = load_or_report(config)?;
    act_as_state_owner(&cfg).map_err(|e| {
        eprintln!("cloudnx-agent: {e}");
        EXIT_FAILED
    })?;
    Ok(cfg)
}

/// `hold set --reason TEXT`: from now on retention deletes nothing, and the
/// backups on S3 destinations with Object Lock get legal holds.
pub async fn set(config: Option<PathBuf>, reason: &str) -> u8 {
    let reason = reason.trim();
    if reason.is_empty() {
        eprintln!("cloudnx-agent: hold set: --reason must say why (a case or ticket reference)");
        return EXIT_USAGE;
    }
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let h = Hold {
        reason: reason.to_owned(),
        since: crate::util::now_rfc3339(),
        by: actor(),
    };
    let previous = hold::current(&cfg.state_dir).ok().flatten();
    // The hold first: it only stops deletions, so it may stand unaudited a
    // moment; the record follows, and its failure fails the verb.
    if let Err(e) = hold::set(&cfg.state_dir, &h) {
        eprintln!("cloudnx-agent: hold set: {e:#}");
        return EXIT_FAILED;
    }
    metric(&cfg, true);
    if let Err(e) = audit(
        &cfg,
        "hold.set",
        json!({"reason": h.reason, "since": h.since, "replaces": previous}),
    ) {
        eprintln!("cloudnx-agent: hold set: the hold is in force, but recording it in the audit log failed: {e:#}");
        return EXIT_FAILED;
    }
    println!(
        "legal hold set ({}): retention deletes nothing until `cloudnx-agent hold release`",
        h.reason
    );
    // At once, not at the next backup run: every backup already on an S3
    // destination with Object Lock gets its legal hold ON.
    let mut code = EXIT_OK;
    let cancel = tokio_util::sync::CancellationToken::new();
    for d in &cfg.destinations {
        if !matches!(&d.kind, crate::config::DestinationKind::S3(s) if s.object_lock_days > 0) {
            continue;
        }
        let held = match d.open(1, &cancel) {
            Ok(dest) => {
                crate::jobs::object_holds::hold_backups(dest.as_ref(), &d.prefix, &cfg.state_dir)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        match held {
            Ok(keys) => {
                println!(
                    "{}: Object Lock legal hold ON for {} object(s)",
                    d.name,
                    keys.len()
                );
                if !keys.is_empty() {
                    let detail = json!({"destination": d.name, "keys": keys, "reason": h.reason});
                    if let Err(e) = audit(&cfg, "backup.legal_hold.on", detail) {
                        eprintln!("cloudnx-agent: recording legal holds set: {e:#}");
                        code = EXIT_FAILED;
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "cloudnx-agent: {}: {e:#}; the hold is in force (nothing is deleted), and the next backup run sets the Object Lock holds",
                    d.name
                );
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// `hold release`: retention may delete again; the agent's Object Lock
/// legal holds come off.
pub async fn release(config: Option<PathBuf>, reason: Option<&str>) -> u8 {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let current = hold::current(&cfg.state_dir);
    if matches!(current, Ok(None)) {
        println!("no legal hold is set");
        return EXIT_OK;
    }
    let was = match &current {
        Ok(h) => json!(h),
        Err(e) => json!({"damaged": format!("{e:#}")}),
    };
    // Audited before it happens: a release that cannot be recorded does not happen.
    if let Err(e) = audit(&cfg, "hold.release", json!({"hold": was, "reason": reason})) {
        eprintln!("cloudnx-agent: hold release: recording it in the audit log failed, the hold stays: {e:#}");
        return EXIT_FAILED;
    }
    if let Err(e) = hold::release(&cfg.state_dir) {
        eprintln!("cloudnx-agent: hold release: {e:#}");
        return EXIT_FAILED;
    }
    metric(&cfg, false);
    println!("legal hold released");
    let mut code = EXIT_OK;
    let cancel = tokio_util::sync::CancellationToken::new();
    for d in &cfg.destinations {
        if crate::jobs::object_holds::held_keys(&cfg.state_dir, &d.name).is_empty() {
            continue;
        }
        let lifted = match d.open(1, &cancel) {
            Ok(dest) => crate::jobs::object_holds::lift(dest.as_ref(), &cfg.state_dir).await,
            Err(e) => Err(e.into()),
        };
        match lifted {
            Ok(keys) => {
                println!(
                    "{}: Object Lock legal hold OFF for {} object(s)",
                    d.name,
                    keys.len()
                );
                let detail =
                    json!({"destination": d.name, "keys": keys, "reason": "legal hold released"});
                if let Err(e) = audit(&cfg, "backup.legal_hold.off", detail) {
                    eprintln!("cloudnx-agent: recording lifted legal holds: {e:#}");
                    code = EXIT_FAILED;
                }
            }
            Err(e) => {
                eprintln!(
                    "cloudnx-agent: {}: {e:#}; the next backup run turns the rest OFF before it prunes",
                    d.name
                );
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// `hold status [--json]`: 0 either way; the text or JSON says which.
pub fn status(config: Option<PathBuf>, as_json: bool) -> u8 {
    let (_, cfg) = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let objects: serde_json::Map<String, serde_json::Value> = cfg
        .destinations
        .iter()
        .map(|d| {
            let n = crate::jobs::object_holds::held_keys(&cfg.state_dir, &d.name).len();
            (d.name.clone(), json!(n))
        })
        .collect();
    let (held, value) = match hold::current(&cfg.state_dir) {
        Ok(None) => (false, json!({"held": false, "object_holds": objects})),
        Ok(Some(h)) => (
            true,
            json!({"held": true, "reason": h.reason, "since": h.since, "by": h.by, "object_holds": objects}),
        ),
        Err(e) => (
            true,
            json!({"held": true, "damaged": format!("{e:#}"), "object_holds": objects}),
        ),
    };
    if as_json {
        println!("{value}");
    } else if !held {
        println!("no legal hold: retention deletes as configured");
    } else if let Some(r) = value["reason"].as_str() {
        println!(
            "legal hold since {} by {}: {r}; retention deletes nothing",
            value["since"].as_str().unwrap_or(""),
            value["by"].as_str().unwrap_or("")
        );
    } else {
        println!(
            "legal hold (the hold file is damaged: {}); retention deletes nothing until it is fixed or released",
            value["damaged"].as_str().unwrap_or("")
        );
    }
    EXIT_OK
}
