//! The `luks-check` duty: prove every configured volume meets the LUKS policy,
//! re-open a closed volume that has a keyfile, back up changed headers, and
//! report drift.
//!
//! Per volume: [`inspect`] the header (libcryptsetup, one thread; through the
//! privileged [`helper`] when the agent is not root) → back up
//! the header if this version is new ([`headers`]) → read the mapping and
//! mount from sysfs/mountinfo ([`live`]) → [`repair`] a closed keyed volume →
//! [`policy`] names every failed check → [`drift`] decides what is new. Then
//! every disk filesystem under `data_paths` must be on an encrypting mapping.
//! The job fails when anything is non-compliant or a step errs.

pub mod drift;
pub mod headers;
pub mod helper;
pub mod inspect;
pub mod live;
pub mod ondisk;
pub mod policy;
pub mod repair;

use super::{JobContext, Outcome};
use crate::config::{LuksConfig, LuksVolume};
use crate::control::outbox::Severity;
use crate::metrics::MetricsUpdate;
use inspect::HeaderState;
use live::{Mapping, Roots, Snapshot, UnencryptedMount, VolumeLive};
use policy::Failure;
use repair::Attempt;
use serde::Serialize;

/// Whether this duty is implemented in this build.
pub const BUILT: bool = true;

/// Metric families this duty fully re-describes on every run.
const FAMILIES: [&str; 5] = [
    "cloudnx_luks_volume_compliant",
    "cloudnx_luks_volume_open",
    "cloudnx_luks_check_failed",
    "cloudnx_luks_header_backup_timestamp_seconds",
    "cloudnx_luks_unencrypted_mount",
];

/// One volume's findings (the `result.volumes[]` of the job).
#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    /// Configured name (dm mapping name).
    pub name: String,
    /// Configured device.
    pub device: String,
    /// No failed check.
    pub compliant: bool,
    /// Its own dm-crypt mapping is open.
    pub open: bool,
    /// Names of the failed checks, sorted.
    pub failed_checks: Vec<&'static str>,
    /// Each failed check with its detail.
    pub failures: Vec<Failure>,
    /// The inspected header, when there is one.
    pub header: Option<inspect::Inspection>,
    /// Mapping and mount.
    pub live: Option<VolumeLive>,
    /// Header backup.
    pub header_backup: Option<headers::BackupReport>,
    /// Re-open attempt.
    pub repair: Attempt,
    /// What drifted since the last run.
    pub drift: drift::Drift,
}

/// Run the duty against this machine.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let Some(cfg) = ctx.config.luks.clone() else {
        anyhow::bail!("the [luks] section is not configured");
    };
    run_with(ctx, &cfg, &Roots::system()).await
}

async fn snapshot(roots: &Roots) -> anyhow::Result<Snapshot> {
    let r = roots.clone();
    tokio::task::spawn_blocking(move || Snapshot::read(&r)).await?
}

/// Run the duty with sysfs and mountinfo read from `roots`.
pub async fn run_with(
    ctx: &JobContext,
    cfg: &LuksConfig,
    roots: &Roots,
) -> anyhow::Result<Outcome> {
    let mut errors: Vec<String> = Vec::new();
    let mut changed = false;
    let mut snap = match snapshot(roots).await {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(format!("reading live state: {e:#}"));
            None
        }
    };
    let before = {
        let d = ctx.config.state_dir.clone();
        tokio::task::spawn_blocking(move || drift::load(&d)).await?
    };
    let mut memory = drift::Memory::default();
    let mut reports = Vec::new();
    for vol in &cfg.volumes {
        if ctx.cancel.is_cancelled() {
            anyhow::bail!(
                "cancelled before checking volume {:?}; nothing was changed for it",
                vol.name
            );
        }
        let r = check_volume(ctx, cfg, vol, roots, &mut snap, &mut errors, &mut changed).await;
        let mem = drift::VolumeMemory {
            failed: r.failed_checks.iter().map(|s| (*s).to_owned()).collect(),
            uuid: r.header.as_ref().map(|h| h.uuid.clone()),
            header_id: r.header.as_ref().map(|h| h.header_id.clone()),
        };
        let mut r = r;
        r.drift = drift::diff(before.volumes.get(&vol.name), &mem);
        memory.volumes.insert(vol.name.clone(), mem);
        if !r.drift.is_empty() {
            let data = serde_json::json!({
                "volume": r.name, "device": r.device, "drift": r.drift,
                "failed_checks": r.failed_checks, "failures": r.failures,
                "header_backup": r.header_backup.as_ref().map(|b| &b.path),
            });
            if let Err(e) = ctx.event("luks.drift", Severity::Warning, data).await {
                errors.push(format!(
                    "queueing the luks.drift event for {}: {e:#}",
                    vol.name
                ));
            }
        }
        reports.push(r);
    }

    let unencrypted: Vec<UnencryptedMount> = snap
        .as_ref()
        .map(|s| s.unencrypted_under(&cfg.data_paths))
        .unwrap_or_default();
    memory.unencrypted = unencrypted.iter().map(|u| u.mountpoint.clone()).collect();
    let new_unencrypted: Vec<&UnencryptedMount> = unencrypted
        .iter()
        .filter(|u| !before.unencrypted.contains(&u.mountpoint))
        .collect();
    if !new_unencrypted.is_empty() {
        let data = serde_json::json!({ "unencrypted_mounts": new_unencrypted });
        if let Err(e) = ctx.event("luks.drift", Severity::Warning, data).await {
            errors.push(format!(
                "queueing the luks.drift event for unencrypted mounts: {e:#}"
            ));
        }
    }
    {
        let (d, m) = (ctx.config.state_dir.clone(), memory);
        if let Err(e) = tokio::task::spawn_blocking(move || drift::save(&d, &m)).await? {
            errors.push(format!("saving the drift memory: {e:#}"));
        }
    }

    let metrics = metrics(&reports, &unencrypted);
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| !r.compliant)
        .map(|r| format!("{} ({})", r.name, r.failed_checks.join(", ")))
        .collect();
    let result = serde_json::json!({
        "volumes": reports,
        "unencrypted_mounts": unencrypted,
        "errors": errors,
    });
    let n = reports.len();
    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!(
            "{} of {n} volumes non-compliant: {}",
            bad.len(),
            bad.join("; ")
        ));
    }
    if !unencrypted.is_empty() {
        let list: Vec<String> = unencrypted
            .iter()
            .map(|u| {
                format!(
                    "{} ({} on {:?}, under {})",
                    u.mountpoint.display(),
                    u.fstype,
                    u.source,
                    u.data_path.display()
                )
            })
            .collect();
        problems.push(format!(
            "unencrypted filesystems under data paths: {}",
            list.join("; ")
        ));
    }
    problems.extend(errors.iter().cloned());
    let mut outcome = if problems.is_empty() {
        Outcome::success(format!("{n} LUKS volumes compliant"), result)
    } else {
        Outcome::failure(problems.join("; "), result)
    };
    outcome.metrics = metrics;
    outcome.changed = changed;
    Ok(outcome)
}

async fn check_volume(
    ctx: &JobContext,
    cfg: &LuksConfig,
    vol: &LuksVolume,
    roots: &Roots,
    snap: &mut Option<Snapshot>,
    errors: &mut Vec<String>,
    changed: &mut bool,
) -> VolumeReport {
    let access = helper::Access::for_process(
        cfg,
        ctx.config.files.first().map(std::path::PathBuf::as_path),
    );
    let header = match helper::inspect(&access, vol).await {
        Ok(h) => h,
        Err(e) => {
            // A missing or refusing helper is a setup fault, not the volume's:
            // name it (and its fix) in the job error too.
            if matches!(access, helper::Access::Helper(_)) {
                errors.push(format!("{e:#}"));
            }
            HeaderState::Unreadable(format!("{e:#}"))
        }
    };
    let mut backup = None;
    if let HeaderState::Luks(h) = &header {
        match headers::ensure_backup(&access, &cfg.header_backup_dir, vol, h).await {
            Ok(b) => {
                if b.written {
                    *changed = true;
                }
                backup = Some(b);
            }
            Err(e) => errors.push(format!(
                "backing up the LUKS header of volume {:?}: {e:#}",
                vol.name
            )),
        }
    }
    let backing = block_devno(&vol.device);
    let live_of = |s: &Snapshot| match &header {
        HeaderState::Luks(h) => {
            Some(s.volume(&vol.name, &h.uuid, vol.mountpoint.as_deref(), backing))
        }
        _ => None,
    };
    let mut live = snap.as_ref().and_then(live_of);
    let repair = repair::attempt(&access, vol, &header, live.as_ref().map(|l| &l.mapping)).await;
    match &repair {
        Attempt::Skipped(_) => {}
        Attempt::Impossible(e) => errors.push(e.clone()),
        Attempt::Opened | Attempt::Failed(_) => {
            let (ok, err) = match &repair {
                Attempt::Failed(e) => (false, Some(e.clone())),
                _ => (true, None),
            };
            let uuid = match &header {
                HeaderState::Luks(h) => h.uuid.clone(),
                _ => String::new(),
            };
            let detail = serde_json::json!({
                "volume": vol.name, "device": vol.device, "uuid": uuid,
                "keyfile": vol.keyfile, "ok": ok, "error": err,
            });
            if let Err(e) = ctx.audit("luks.open", detail).await {
                errors.push(format!("auditing luks.open of {}: {e:#}", vol.name));
            }
            if let Some(e) = err {
                errors.push(e);
            } else {
                *changed = true;
                // See the mapping as it is now, not as it was before the open.
                match snapshot(roots).await {
                    Ok(s) => {
                        live = live_of(&s);
                        *snap = Some(s);
                    }
                    Err(e) => errors.push(format!(
                        "reading live state after opening {}: {e:#}",
                        vol.name
                    )),
                }
            }
        }
    }
    let failures = policy::evaluate(&cfg.policy, vol, &header, live.as_ref());
    let open = live
        .as_ref()
        .is_some_and(|l| matches!(l.mapping, Mapping::Open { .. }));
    VolumeReport {
        name: vol.name.clone(),
        device: vol.device.display().to_string(),
        compliant: failures.is_empty()
            && (live.is_some() || !matches!(header, HeaderState::Luks(_))),
        open,
        failed_checks: failures.iter().map(|f| f.check.as_str()).collect(),
        failures,
        header: match header {
            HeaderState::Luks(h) => Some(*h),
            _ => None,
        },
        live,
        header_backup: backup,
        repair,
        drift: drift::Drift::default(),
    }
}

/// `M:m` of `device` when it is a block device (image files have none).
fn block_devno(device: &std::path::Path) -> Option<live::DevNo> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(device).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let rdev = m.rdev();
    Some((
        u32::try_from(nix::sys::stat::major(rdev)).ok()?,
        u32::try_from(nix::sys::stat::minor(rdev)).ok()?,
    ))
}

fn metrics(reports: &[VolumeReport], unencrypted: &[UnencryptedMount]) -> MetricsUpdate {
    let mut m = MetricsUpdate {
        clear: FAMILIES.to_vec(),
        ..Default::default()
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    for r in reports {
        let v = [("volume", r.name.as_str())];
        m.set("cloudnx_luks_volume_compliant", &v, b(r.compliant));
        m.set("cloudnx_luks_volume_open", &v, b(r.open));
        for c in &r.failed_checks {
            m.set(
                "cloudnx_luks_check_failed",
                &[("volume", r.name.as_str()), ("check", c)],
                1.0,
            );
        }
        if let Some(h) = &r.header_backup {
            m.set(
                "cloudnx_luks_header_backup_timestamp_seconds",
                &v,
                h.timestamp,
            );
        }
    }
    for u in unencrypted {
        let mp = u.mountpoint.display().to_string();
        m.set(
            "cloudnx_luks_unencrypted_mount",
            &[("mountpoint", mp.as_str()), ("source", u.source.as_str())],
            1.0,
        );
    }
    m
}
