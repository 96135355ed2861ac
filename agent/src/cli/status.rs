//! `status`: what this host's duties last did and whether anything needs
//! attention, from local state only (the metrics state file, the outbox, the
//! audit log) — no daemon, no network. Exit 0 when nothing is failing or past
//! its alert threshold, else 1, so scripts and humans get the same verdict as
//! the shipped alert rules (the thresholds below mirror
//! packaging/prometheus/cloudnx-agent.rules.yml).

use super::{load_or_report, EXIT_FAILED, EXIT_OK};
use crate::config::Config;
use crate::jobs::JobKind;
use crate::metrics::{Family, MetricsStore};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// CloudnxBackupTooOld, CloudnxSnapshotTooOld.
const DAILY_MAX_AGE: f64 = 26.0 * 3600.0;
/// CloudnxRestoreDrillTooOld.
const DRILL_MAX_AGE: f64 = 8.0 * 86400.0;
/// CloudnxCertificateExpiringSoon.
const CERT_MIN_LEFT: f64 = 14.0 * 86400.0;
/// CloudnxReportOutboxBacklog.
const OUTBOX_MAX: usize = 100;
/// CloudnxSecurityUpdatePending.
const SECURITY_MAX_WAIT: f64 = 48.0 * 3600.0;
/// CloudnxUnattendedUpgradesNotRun.
const UNATTENDED_MAX_AGE: f64 = 26.0 * 3600.0;

/// `status`.
pub async fn run(flag: Option<PathBuf>, json_out: bool) -> u8 {
    let (path, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = match tokio::task::spawn_blocking(move || gather(&cfg)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cloudnx-agent: status: {e}");
            return EXIT_FAILED;
        }
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_human(&report, &path);
    }
    if report["problems"].as_array().is_some_and(|p| p.is_empty()) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn now() -> f64 {
    crate::util::unix_now()
}

fn rfc3339(t: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    chrono::DateTime::from_timestamp(t as i64, 0).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The whole picture, as JSON (what `--json` prints).
pub fn gather(cfg: &Config) -> Value {
    let store = MetricsStore::new(&cfg.state_dir, &cfg.textfile_dir, &cfg.host_id);
    let now = now();
    let mut problems: Vec<String> = Vec::new();
    let one = |f: Family, kind: JobKind| store.read(f, &[("kind", kind.as_str())]);

    let mut jobs = serde_json::Map::new();
    for k in JobKind::ALL {
        let next = k
            .schedule(cfg)
            .and_then(|s| s.next_after(chrono::Utc::now(), cfg.timezone))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let status = one(Family::JobLastStatus, k);
        if status == Some(0.0) && k.startable_by_api() && k.configured(cfg) {
            problems.push(format!("the last {k} run failed (see `journalctl -u cloudnx-agent`, or run `cloudnx-agent {k}`)"));
        }
        jobs.insert(
            k.as_str().into(),
            json!({
                "configured": k.configured(cfg),
                "last_run": one(Family::JobLastRun, k).map(rfc3339),
                "last_status": status.map(|s| if s == 1.0 { "succeeded" } else { "failed" }),
                "last_success": one(Family::JobLastSuccess, k).map(rfc3339),
                "next_run": next,
            }),
        );
    }

    let mut backups = Vec::new();
    for (labels, t) in store.series(Family::BackupLastSuccess) {
        let (db, dest) = (labels["database"].clone(), labels["destination"].clone());
        let age = now - t;
        let ok = age <= DAILY_MAX_AGE;
        if !ok {
            problems.push(format!(
                "the newest backup of {db} on {dest} is {} old (alert at 26 h)",
                human_age(age)
            ));
        }
        backups.push(json!({"database": db, "destination": dest, "last_success": rfc3339(t), "age_seconds": age.round(), "ok": ok}));
    }

    let mut vm_backups = Vec::new();
    for (labels, t) in store.series(Family::VmBackupLastSuccess) {
        let (vmid, dest) = (labels["vmid"].clone(), labels["destination"].clone());
        let age = now - t;
        let ok = age <= DAILY_MAX_AGE;
        if !ok {
            problems.push(format!(
                "the newest VM backup of guest {vmid} on {dest} is {} old (alert at 26 h)",
                human_age(age)
            ));
        }
        vm_backups.push(json!({"vmid": vmid, "destination": dest, "last_success": rfc3339(t), "age_seconds": age.round(), "ok": ok}));
    }

    let drill_ok = store.read(Family::DrillLastSuccess, &[]);
    let drill = json!({
        "last_success": drill_ok.map(rfc3339),
        "last_rto_seconds": store.read(Family::DrillLastRto, &[]),
    });
    if JobKind::RestoreDrill.configured(cfg) {
        match drill_ok {
            Some(t) if now - t > DRILL_MAX_AGE => problems.push(format!(
                "the last successful restore drill is {} old (alert at 8 days)",
                human_age(now - t)
            )),
            None if one(Family::JobLastRun, JobKind::RestoreDrill).is_some() => {
                problems.push("no restore drill has ever succeeded on this host".into());
            }
            _ => {}
        }
    }

    let mut snapshots = Vec::new();
    for (labels, t) in store.series(Family::SnapshotLastSuccess) {
        let age = now - t;
        let ok = age <= DAILY_MAX_AGE;
        let vmid = labels["vmid"].clone();
        if !ok {
            problems.push(format!(
                "the newest snapshot of guest {vmid} is {} old (alert at 26 h)",
                human_age(age)
            ));
        }
        snapshots.push(
            json!({"vmid": vmid, "type": labels["type"], "last_success": rfc3339(t), "ok": ok}),
        );
    }

    let mut luks = Vec::new();
    for (labels, v) in store.series(Family::LuksCompliant) {
        let vol = labels["volume"].clone();
        if v == 0.0 {
            problems.push(format!(
                "LUKS volume {vol} is not compliant (`cloudnx-agent luks-check` says why)"
            ));
        }
        let open = store.read(Family::LuksOpen, &[("volume", vol.as_str())]);
        luks.push(json!({"volume": vol, "compliant": v == 1.0, "open": open.map(|o| o == 1.0)}));
    }

    let mut certs = Vec::new();
    for (labels, t) in store.series(Family::TlsCertExpiry) {
        if t - now < CERT_MIN_LEFT {
            problems.push(format!(
                "the {} certificate expires {}",
                labels["cert"],
                rfc3339(t)
            ));
        }
        certs.push(json!({"cert": labels["cert"], "not_after": rfc3339(t)}));
    }

    let outbox = match crate::outbox::Outbox::new(&cfg.state_dir).pending() {
        Ok(p) => {
            if p.len() > OUTBOX_MAX {
                problems.push(format!(
                    "{} events wait for the control plane (alert above {OUTBOX_MAX})",
                    p.len()
                ));
            }
            json!(p.len())
        }
        Err(e) => json!(format!("unreadable: {e:#}")),
    };

    json!({
        "host_id": cfg.host_id,
        "version": env!("CARGO_PKG_VERSION"),
        "jobs": jobs,
        "backups": backups,
        "vm_backups": vm_backups,
        "restore_drill": drill,
        "snapshots": snapshots,
        "luks": luks,
        "certificates": certs,
        "outbox_events": outbox,
        "audit": audit(cfg),
        "posture": posture(cfg, &store, now, &mut problems),
        "problems": problems,
    })
}

/// Host posture (SPEC §13) as the last `posture` run saw it, judged like
/// the posture alerts (null when the job is off or never ran).
fn posture(cfg: &Config, store: &MetricsStore, now: f64, problems: &mut Vec<String>) -> Value {
    let get = |f: Family| store.read(f, &[]);
    let by_origin = |f: Family, o: &str| store.read(f, &[("origin", o)]);
    let Some(security) = by_origin(Family::HostUpdatesPending, "security") else {
        return Value::Null;
    };
    if !JobKind::Posture.configured(cfg) {
        return Value::Null;
    }
    let oldest = get(Family::HostSecurityOldestPending).unwrap_or(0.0);
    if oldest > SECURITY_MAX_WAIT {
        problems.push(format!(
            "a security update has been pending for {} (alert at 48 h; `cloudnx-agent posture --json` lists them)",
            human_age(oldest)
        ));
    }
    let required = get(Family::HostRebootRequired) == Some(1.0);
    let since = get(Family::HostRebootRequiredSince);
    let last_end = get(Family::HostMaintenanceWindowLastEnd);
    if let (true, Some(since), Some(end)) = (required, since, last_end) {
        if since < end {
            problems.push(format!(
                "a reboot has been required since {}, and the maintenance window that ended {} passed without one",
                rfc3339(since),
                rfc3339(end)
            ));
        }
    }
    let uu = get(Family::HostUnattendedUpgradesLastRun);
    match uu {
        Some(t) if t <= 0.0 => problems
            .push("unattended-upgrades has never run on this host (or is not installed)".into()),
        Some(t) if now - t > UNATTENDED_MAX_AGE => problems.push(format!(
            "unattended-upgrades last ran {} ago (alert at 26 h)",
            human_age(now - t)
        )),
        _ => {}
    }
    let kernel = store.series(Family::HostKernelInfo).into_iter().next();
    json!({
        "updates_pending": {"security": security, "other": by_origin(Family::HostUpdatesPending, "other")},
        "updates_held_back": {"security": by_origin(Family::HostUpdatesHeldBack, "security"), "other": by_origin(Family::HostUpdatesHeldBack, "other")},
        "security_oldest_pending_seconds": oldest,
        "reboot_required": required,
        "reboot_required_since": since.map(rfc3339),
        "kernel_running": kernel.as_ref().map(|(l, _)| l["running"].clone()),
        "kernel_newest_installed": kernel.as_ref().map(|(l, _)| l["newest_installed"].clone()),
        "unattended_upgrades_last_run": uu.filter(|t| *t > 0.0).map(rfc3339),
        "in_maintenance_window": get(Family::HostInMaintenanceWindow) == Some(1.0),
        "maintenance_window_next_start": get(Family::HostMaintenanceWindowNextStart).map(rfc3339),
    })
}

/// The audit head and the last checkpoint, read without the writer's lock.
fn audit(cfg: &Config) -> Value {
    use crate::audit::files::{peek_last_line, LogFiles};
    let files = LogFiles::new(&cfg.audit.path);
    let head = peek_last_line(&files.active)
        .ok()
        .flatten()
        .and_then(|l| crate::audit::Head::of_line(&l).ok());
    let cp: Option<crate::audit::checkpoint::Checkpoint> = peek_last_line(&files.checkpoints())
        .ok()
        .flatten()
        .and_then(|l| serde_json::from_slice(&l).ok());
    json!({
        "head_seq": head.as_ref().map(|h| h.seq),
        "head_hash": head.map(|h| h.hash),
        "last_checkpoint_seq": cp.as_ref().map(|c| c.seq),
        "last_checkpoint_at": cp.map(|c| c.ts),
    })
}

fn human_age(secs: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

fn print_human(r: &Value, path: &std::path::Path) {
    let s = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    println!(
        "{} · cloudnx-agent {} · {}",
        s(&r["host_id"]),
        s(&r["version"]),
        path.display()
    );
    println!("\njobs");
    if let Some(jobs) = r["jobs"].as_object() {
        let order: BTreeMap<usize, (&String, &Value)> = jobs
            .iter()
            .map(|(k, v)| (JobKind::parse(k).map_or(99, |k| k as usize), (k, v)))
            .collect();
        for (k, v) in order.values() {
            if v["configured"] != true {
                println!("  {k:<14} off");
                continue;
            }
            println!(
                "  {k:<14} last {} {}  next {}",
                s(&v["last_run"]),
                s(&v["last_status"]),
                s(&v["next_run"])
            );
        }
    }
    let list = |title: &str, items: &Value, f: &dyn Fn(&Value) -> String| {
        if let Some(a) = items.as_array().filter(|a| !a.is_empty()) {
            println!("\n{title}");
            for i in a {
                println!("  {}", f(i));
            }
        }
    };
    list(
        "backups (newest per database and destination)",
        &r["backups"],
        &|b| {
            format!(
                "{} → {}  {} ({} old){}",
                s(&b["database"]),
                s(&b["destination"]),
                s(&b["last_success"]),
                human_age(b["age_seconds"].as_f64().unwrap_or(0.0)),
                if b["ok"] == true { "" } else { "  TOO OLD" }
            )
        },
    );
    println!(
        "\nrestore drill  last success {}  RTO {}",
        s(&r["restore_drill"]["last_success"]),
        r["restore_drill"]["last_rto_seconds"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1} s"))
    );
    list("snapshots", &r["snapshots"], &|g| {
        format!(
            "{} {}  {}",
            s(&g["type"]),
            s(&g["vmid"]),
            s(&g["last_success"])
        )
    });
    list("LUKS volumes", &r["luks"], &|v| {
        format!(
            "{}  {}{}",
            s(&v["volume"]),
            if v["compliant"] == true {
                "compliant"
            } else {
                "NOT COMPLIANT"
            },
            if v["open"] == false { ", closed" } else { "" }
        )
    });
    list("certificates", &r["certificates"], &|c| {
        format!("{}  expires {}", s(&c["cert"]), s(&c["not_after"]))
    });
    println!(
        "\noutbox  {} event(s) waiting for the control plane",
        r["outbox_events"]
    );
    let a = &r["audit"];
    println!(
        "audit  head seq {} · last checkpoint seq {} at {}",
        a["head_seq"],
        a["last_checkpoint_seq"],
        s(&a["last_checkpoint_at"])
    );
    let p = &r["posture"];
    if p.is_object() {
        let num = |v: &Value| {
            v.as_f64()
                .map_or_else(|| "-".to_owned(), |x| format!("{x}"))
        };
        let held = p["updates_held_back"]["security"].as_f64().unwrap_or(0.0)
            + p["updates_held_back"]["other"].as_f64().unwrap_or(0.0);
        println!(
            "posture  {} security, {} other updates pending{}{}",
            num(&p["updates_pending"]["security"]),
            num(&p["updates_pending"]["other"]),
            if held > 0.0 {
                format!(" ({held} held back)")
            } else {
                String::new()
            },
            match p["security_oldest_pending_seconds"].as_f64() {
                Some(a) if a > 0.0 => format!(" · oldest security update {}", human_age(a)),
                _ => String::new(),
            }
        );
        println!(
            "         {} · kernel {} (newest installed {}) · unattended-upgrades last ran {} · {}",
            if p["reboot_required"] == true {
                format!("REBOOT REQUIRED since {}", s(&p["reboot_required_since"]))
            } else {
                "no reboot required".to_owned()
            },
            s(&p["kernel_running"]),
            s(&p["kernel_newest_installed"]),
            p["unattended_upgrades_last_run"]
                .as_str()
                .unwrap_or("never"),
            if p["in_maintenance_window"] == true {
                "in the maintenance window".to_owned()
            } else {
                format!(
                    "next maintenance window {}",
                    s(&p["maintenance_window_next_start"])
                )
            }
        );
    }
    match r["problems"].as_array() {
        Some(p) if !p.is_empty() => {
            println!("\nNEEDS ATTENTION");
            for x in p {
                println!("  - {}", s(x));
            }
        }
        _ => println!("\nall well"),
    }
}
