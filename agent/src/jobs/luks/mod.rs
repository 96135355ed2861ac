//! The `luks-check` duty: prove every configured volume meets the LUKS policy,
//! re-open a closed volume that has a keyfile, back up changed headers, and
//! report drift.
//!
//! Per volume: [`inspect`] the header (libcryptsetup, one thread; through the
//! privileged helper ([`helper_client`] → [`helper_server`]) when the agent is not root) → back up
//! the header if this version is new ([`headers`]) → read the mapping and
//! mount from sysfs/mountinfo ([`live`]) → [`repair`] a closed keyed volume →
//! [`policy`] names every failed check → [`drift`] decides what is new. Then
//! every disk filesystem under `data_paths` must be on an encrypting mapping.
//! The job fails when anything is non-compliant or a step errs.

pub mod drift;
pub mod headers;
pub mod helper;
pub mod helper_client;
pub mod helper_server;
pub mod inspect;
pub mod live;
pub mod ondisk;
pub mod policy;
pub mod repair;

use crate::config::{LuksConfig, LuksVolume};
use crate::jobs::context::{JobContext, Outcome};
use crate::metrics::{Family, MetricsUpdate};
use crate::outbox::Severity;
use inspect::HeaderState;
use live::{Mapping, Roots, Snapshot, UnencryptedMount, VolumeLive};
use policy::Failure;
use repair::Attempt;
use serde::Serialize;

/// Metric families this duty fully re-describes on every run.
const FAMILIES: [crate::metrics::Family; 5] = [
    Family::LuksCompliant,
    Family::LuksOpen,
    Family::LuksCheckFailed,
    Family::LuksHeaderBackup,
    Family::LuksUnencryptedMount,
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
    let mut pass = Pass {
        ctx,
        cfg,
        roots,
        snap: None,
        errors: Vec::new(),
        changed: false,
    };
    match snapshot(roots).await {
        Ok(s) => pass.snap = Some(s),
        Err(e) => pass.errors.push(format!("reading live state: {e:#}")),
    }
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
        let r = pass.check_volume(vol).await;
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
                pass.errors.push(format!(
                    "queueing the luks.drift event for {}: {e:#}",
                    vol.name
                ));
            }
        }
        reports.push(r);
    }
    let Pass {
        snap,
        mut errors,
        changed,
        ..
    } = pass;

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

/// What one run carries from volume to volume: the live state (re-read
/// after an open), the errors so far, and whether anything changed.
struct Pass<'a> {
    ctx: &'a JobContext,
    cfg: &'a LuksConfig,
    roots: &'a Roots,
    snap: Option<Snapshot>,
    errors: Vec<String>,
    changed: bool,
}

impl Pass<'_> {
    /// Header → header backup → live state → re-open → policy.
    async fn check_volume(&mut self, vol: &LuksVolume) -> VolumeReport {
        let access = helper_client::Access::for_process(
            self.cfg,
            self.ctx
                .config
                .files
                .first()
                .map(std::path::PathBuf::as_path),
        );
        let header = self.read_header(&access, vol).await;
        let backup = self.back_up_header(&access, vol, &header).await;
        let mut live = self.live(vol, &header);
        let repair = match repair::skip_reason(vol, &header, live.as_ref().map(|l| &l.mapping)) {
            Some(why) => Attempt::Skipped(why),
            None => helper_client::open(&access, vol).await,
        };
        if self.record_repair(vol, &header, &repair).await {
            live = self.reread_live(vol, &header).await.or(live);
        }
        let failures = policy::evaluate(&self.cfg.policy, vol, &header, live.as_ref());
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

    async fn read_header(
        &mut self,
        access: &helper_client::Access,
        vol: &LuksVolume,
    ) -> HeaderState {
        match helper_client::inspect(access, vol).await {
            Ok(h) => h,
            Err(e) => {
                // A missing or refusing helper is a setup fault, not the volume's:
                // name it (and its fix) in the job error too.
                if matches!(access, helper_client::Access::Helper(_)) {
                    self.errors.push(format!("{e:#}"));
                }
                HeaderState::Unreadable(format!("{e:#}"))
            }
        }
    }

    async fn back_up_header(
        &mut self,
        access: &helper_client::Access,
        vol: &LuksVolume,
        header: &HeaderState,
    ) -> Option<headers::BackupReport> {
        let HeaderState::Luks(h) = header else {
            return None;
        };
        match headers::ensure_backup(access, &self.cfg.header_backup_dir, vol, h).await {
            Ok(b) => {
                self.changed |= b.written;
                Some(b)
            }
            Err(e) => {
                self.errors.push(format!(
                    "backing up the LUKS header of volume {:?}: {e:#}",
                    vol.name
                ));
                None
            }
        }
    }

    /// The volume's mapping and mount in the live state read so far.
    fn live(&self, vol: &LuksVolume, header: &HeaderState) -> Option<VolumeLive> {
        let HeaderState::Luks(h) = header else {
            return None;
        };
        let s = self.snap.as_ref()?;
        Some(s.volume(
            &vol.name,
            &h.uuid,
            vol.mountpoint.as_deref(),
            block_devno(&vol.device),
        ))
    }

    /// Audit an open attempt; true when a mapping was opened (the live state changed).
    async fn record_repair(
        &mut self,
        vol: &LuksVolume,
        header: &HeaderState,
        repair: &Attempt,
    ) -> bool {
        let err = match repair {
            Attempt::Skipped(_) => return false,
            Attempt::Impossible(e) => {
                self.errors.push(e.clone());
                return false;
            }
            Attempt::Opened => None,
            Attempt::Failed(e) => Some(e.clone()),
        };
        let uuid = match header {
            HeaderState::Luks(h) => h.uuid.clone(),
            _ => String::new(),
        };
        let detail = serde_json::json!({
            "volume": vol.name, "device": vol.device, "uuid": uuid,
            "keyfile": vol.keyfile, "ok": err.is_none(), "error": err,
        });
        if let Err(e) = self.ctx.audit("luks.open", detail).await {
            self.errors
                .push(format!("auditing luks.open of {}: {e:#}", vol.name));
        }
        match err {
            Some(e) => {
                self.errors.push(e);
                false
            }
            None => {
                self.changed = true;
                true
            }
        }
    }

    /// See the mapping as it is now, not as it was before the open.
    async fn reread_live(&mut self, vol: &LuksVolume, header: &HeaderState) -> Option<VolumeLive> {
        match snapshot(self.roots).await {
            Ok(s) => {
                self.snap = Some(s);
                self.live(vol, header)
            }
            Err(e) => {
                self.errors.push(format!(
                    "reading live state after opening {}: {e:#}",
                    vol.name
                ));
                None
            }
        }
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
        m.set(Family::LuksCompliant, &v, b(r.compliant));
        m.set(Family::LuksOpen, &v, b(r.open));
        for c in &r.failed_checks {
            m.set(
                Family::LuksCheckFailed,
                &[("volume", r.name.as_str()), ("check", c)],
                1.0,
            );
        }
        if let Some(h) = &r.header_backup {
            m.set(Family::LuksHeaderBackup, &v, h.timestamp);
        }
    }
    for u in unencrypted {
        let mp = u.mountpoint.display().to_string();
        m.set(
            Family::LuksUnencryptedMount,
            &[("mountpoint", mp.as_str()), ("source", u.source.as_str())],
            1.0,
        );
    }
    m
}
