//! The `posture` duty (read-only, hourly): does this host keep the patching
//! and reboot promises (SPEC §13)? Updates pending by origin, how long the
//! security ones have waited, whether a reboot is required and since when,
//! when unattended-upgrades last ran, and where the maintenance window stands.
//!
//! The decisions are pure and table-tested: [`simulate`] (apt's simulation
//! lines and `Release` files), [`origins`] (security or not; pending or held
//! back), [`pending`] (clocks remembered across runs), [`kernel`] with
//! [`debver`] (running vs newest installed kernel), and [`crate::window`]
//! (the window in the configured zone). [`apt`] and [`host`] are the I/O.
//!
//! Each fact is read on its own. One that cannot be read fails the job,
//! naming it; the others are still exported, and its own series keep their
//! last values (`CloudnxPostureCheckFailing` fires when that lasts). The job
//! changes nothing on the host.

pub mod apt;
pub mod debver;
pub mod host;
pub mod kernel;
pub mod origins;
pub mod pending;
pub mod simulate;

use crate::config::PostureConfig;
use crate::jobs::context::{JobContext, Outcome};
use crate::metrics::{Family, MetricsUpdate};
use anyhow::Context;
use host::{Host, RebootFlag, UnattendedUpgrades};
use kernel::KernelVerdict;
use origins::Updates;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Run the duty against this machine.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let Some(cfg) = ctx.config.posture.clone() else {
        anyhow::bail!("the [posture] section is not configured");
    };
    run_with(ctx, &cfg, &Host::system()).await
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// Seconds as a short human duration for the summary line.
fn human(secs: i64) -> String {
    match secs.max(0) {
        s @ 0..=5399 => format!("{} min", s / 60),
        s @ 5400..=172_799 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

async fn read_updates(cfg: &PostureConfig, cancel: &CancellationToken) -> anyhow::Result<Updates> {
    let lists = apt::lists_dir(cancel).await?;
    let known = tokio::task::spawn_blocking(move || apt::releases(&lists)).await??;
    let safe = apt::simulate(apt::Upgrade::Safe, cancel).await?;
    let full = apt::simulate(apt::Upgrade::Full, cancel).await?;
    Ok(origins::classify(safe, full, &known, &cfg.security_origins))
}

/// The kernel verdict and, when it asks for a reboot, since when the
/// evidence exists (the image's installation).
async fn read_kernel(
    host: &Host,
    cancel: &CancellationToken,
) -> anyhow::Result<(KernelVerdict, Option<i64>)> {
    let h = host.clone();
    let installed = tokio::task::spawn_blocking(move || h.installed_kernels())
        .await?
        .with_context(|| format!("listing kernels in {}", host.boot_dir.display()))?;
    let (running, version) = host::running_kernel();
    let versions = apt::installed_versions(&kernel::image_packages(&running), cancel)
        .await
        .context("reading the running kernel's package version")?;
    let releases: Vec<String> = installed.iter().map(|k| k.release.clone()).collect();
    let verdict = kernel::judge(&running, &version, &releases, &versions);
    let installed_at = |r: &str| {
        installed
            .iter()
            .find(|k| k.release == r)
            .map(|k| k.installed_at)
    };
    let evidence = if verdict.newer_installed {
        verdict.newest_installed.as_deref().and_then(installed_at)
    } else if verdict.outdated_build.is_some() {
        installed_at(&verdict.running)
    } else {
        None
    };
    Ok((verdict, evidence))
}

/// What a run gathers, fact by fact.
#[derive(Default)]
struct Report {
    metrics: MetricsUpdate,
    summary: Vec<String>,
    result: serde_json::Map<String, Value>,
    errors: Vec<String>,
}

#[allow(clippy::cast_precision_loss)]
fn float(x: i64) -> f64 {
    x as f64
}

impl Report {
    /// Pending and held-back updates; the security clocks move on.
    fn updates(&mut self, u: &Updates, memory: &mut pending::Memory, now: i64) {
        memory.security_since =
            pending::track_security(&memory.security_since, &u.security_packages(), now);
        let oldest = pending::oldest_age(&memory.security_since, now);
        let (sec, other) = Updates::counts(&u.pending);
        let (held_sec, held_other) = Updates::counts(&u.held_back);
        for (origin, count, held) in [("security", sec, held_sec), ("other", other, held_other)] {
            #[allow(clippy::cast_precision_loss)]
            let (count, held) = (count as f64, held as f64);
            self.metrics
                .set(Family::HostUpdatesPending, &[("origin", origin)], count);
            self.metrics
                .set(Family::HostUpdatesHeldBack, &[("origin", origin)], held);
        }
        self.metrics
            .set(Family::HostSecurityOldestPending, &[], float(oldest));
        let security: Vec<Value> = u
            .pending
            .iter()
            .map(|c| (c, false))
            .chain(u.held_back.iter().map(|c| (c, true)))
            .filter(|(c, _)| c.security)
            .map(|(c, held_back)| {
                json!({
                    "package": c.inst.package,
                    "current": c.inst.current,
                    "candidate": c.inst.candidate,
                    "releases": c.inst.releases,
                    "held_back": held_back,
                    "pending_since": memory.security_since.get(&c.inst.package).map(|t| rfc3339(*t)),
                })
            })
            .collect();
        let mut line = format!("{sec} security and {other} other updates pending");
        if held_sec + held_other > 0 {
            line += &format!(
                " ({} held back, {held_sec} of them security)",
                held_sec + held_other
            );
        }
        if oldest >= 60 {
            line += &format!("; oldest security update waiting {}", human(oldest));
        }
        self.summary.push(line);
        self.result.insert(
            "updates".into(),
            json!({
                "pending": {"security": sec, "other": other},
                "held_back": {"security": held_sec, "other": held_other},
                "security_oldest_pending_seconds": oldest,
                "security": security,
            }),
        );
    }

    /// The kernel's info series and the reboot verdict with its clock.
    fn reboot(
        &mut self,
        flag: Option<Option<&RebootFlag>>,
        kernel: Option<&(KernelVerdict, Option<i64>)>,
        memory: &mut pending::Memory,
        now: i64,
    ) -> anyhow::Result<()> {
        if let Some((k, _)) = kernel {
            self.metrics.clear.push(Family::HostKernelInfo);
            let newest = k.newest_installed.as_deref().unwrap_or("none");
            self.metrics.set(
                Family::HostKernelInfo,
                &[
                    ("newest_installed", newest),
                    ("running", k.running.as_str()),
                ],
                1.0,
            );
            self.result
                .insert("kernel".into(), serde_json::to_value(k)?);
        }
        let Some((required, evidence, reasons)) = kernel::reboot(flag, kernel) else {
            return Ok(());
        };
        memory.reboot_required_since =
            pending::track_reboot(memory.reboot_required_since, required, evidence, now);
        self.metrics.set(
            Family::HostRebootRequired,
            &[],
            if required { 1.0 } else { 0.0 },
        );
        self.metrics.clear.push(Family::HostRebootRequiredSince);
        match memory.reboot_required_since {
            Some(since) => {
                self.metrics
                    .set(Family::HostRebootRequiredSince, &[], float(since));
                self.summary.push(format!(
                    "reboot required for {} ({})",
                    human(now - since),
                    reasons.join("; ")
                ));
            }
            None => self.summary.push("no reboot required".into()),
        }
        self.result.insert(
            "reboot".into(),
            json!({
                "required": required,
                "since": memory.reboot_required_since.map(rfc3339),
                "reasons": reasons,
            }),
        );
        Ok(())
    }

    /// unattended-upgrades' last run (0: never, so its alert fires).
    fn unattended_upgrades(&mut self, uu: &UnattendedUpgrades, now: i64) {
        let last = uu.last_run.as_ref().map(|(t, _)| *t);
        self.metrics.set(
            Family::HostUnattendedUpgradesLastRun,
            &[],
            float(last.unwrap_or(0)),
        );
        let note = match (uu.installed, last) {
            (false, None) => {
                "unattended-upgrades is not installed (exported as never run)".to_owned()
            }
            (true, None) => "unattended-upgrades has never run (exported as 0)".to_owned(),
            (_, Some(t)) => format!("unattended-upgrades last ran {} ago", human(now - t)),
        };
        self.summary.push(note.clone());
        self.result.insert(
            "unattended_upgrades".into(),
            json!({
                "installed": uu.installed,
                "last_run": last.map(rfc3339),
                "from": uu.last_run.as_ref().map(|(_, p)| p.display().to_string()),
                "note": note,
            }),
        );
    }

    /// Where the maintenance window stands, as instants.
    fn window(
        &mut self,
        cfg: &PostureConfig,
        tz: chrono_tz::Tz,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let w = cfg.maintenance_window.state(now, tz);
        self.metrics.set(
            Family::HostInMaintenanceWindow,
            &[],
            if w.in_window { 1.0 } else { 0.0 },
        );
        self.metrics.set(
            Family::HostMaintenanceWindowLastEnd,
            &[],
            float(w.last_end.timestamp()),
        );
        self.metrics.set(
            Family::HostMaintenanceWindowNextStart,
            &[],
            float(w.next_start.timestamp()),
        );
        self.summary.push(if w.in_window {
            format!(
                "in the maintenance window ({} {tz})",
                cfg.maintenance_window
            )
        } else {
            format!(
                "next maintenance window {} ({} {tz})",
                w.next_start.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"),
                cfg.maintenance_window
            )
        });
        self.result.insert(
            "maintenance_window".into(),
            json!({
                "window": cfg.maintenance_window.as_str(),
                "timezone": tz.name(),
                "in_window": w.in_window,
                "last_end": rfc3339(w.last_end.timestamp()),
                "next_start": rfc3339(w.next_start.timestamp()),
            }),
        );
    }
}

/// Run the duty with the host facts read from `host`.
pub async fn run_with(
    ctx: &JobContext,
    cfg: &PostureConfig,
    host: &Host,
) -> anyhow::Result<Outcome> {
    let now_utc = chrono::Utc::now();
    let now = now_utc.timestamp();
    let mut r = Report::default();
    let file = pending::file(&ctx.config.state_dir);
    let before = {
        let f = file.clone();
        tokio::task::spawn_blocking(move || crate::fsx::read_json_or_default::<pending::Memory>(&f))
            .await?
    };
    let mut memory = before.clone();

    // The update clocks use the run's start: the simulations reflect the lists
    // as they were then (a run that started later saw anything published later).
    match read_updates(cfg, &ctx.cancel).await {
        Ok(u) => r.updates(&u, &mut memory, now),
        Err(e) => r.errors.push(format!("reading pending updates: {e:#}")),
    }

    let h = host.clone();
    let flag = match tokio::task::spawn_blocking(move || h.reboot_flag()).await? {
        Ok(f) => Some(f),
        Err(e) => {
            r.errors
                .push(format!("reading {}: {e}", host.reboot_flag.display()));
            None
        }
    };
    let kernel = match read_kernel(host, &ctx.cancel).await {
        Ok(k) => Some(k),
        Err(e) => {
            r.errors.push(format!("reading the kernel state: {e:#}"));
            None
        }
    };
    // A clock starts when its fact was seen, not when the run began: the
    // simulations before can take a while, and the flag may be written meanwhile.
    let seen = chrono::Utc::now().timestamp();
    r.reboot(
        flag.as_ref().map(Option::as_ref),
        kernel.as_ref(),
        &mut memory,
        seen,
    )?;

    let h = host.clone();
    let uu = tokio::task::spawn_blocking(move || h.unattended_upgrades()).await?;
    r.unattended_upgrades(&uu, now);

    r.window(cfg, ctx.config.timezone, now_utc);

    if memory != before {
        let saved =
            tokio::task::spawn_blocking(move || crate::fsx::write_json_private(&file, &memory));
        if let Err(e) = saved.await? {
            r.errors
                .push(format!("remembering the pending-since clocks: {e:#}"));
        }
    }
    r.result.insert("errors".into(), json!(r.errors));
    let result = Value::Object(r.result);
    let mut outcome = if r.errors.is_empty() {
        Outcome::success(r.summary.join("; "), result)
    } else {
        Outcome::failure(r.errors.join("; "), result)
    };
    outcome.changed = false;
    outcome.metrics = r.metrics;
    Ok(outcome)
}
