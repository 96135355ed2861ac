//! The `snapshot` duty: a `vmstate=0` snapshot of every selected VM and
//! container this node owns, then pruning of the agent's own old snapshots.
//!
//! The decisions live in [`plan`] (pure, table-tested); this file is the thin
//! I/O shell: ask the API, run the guests with bounded concurrency, retry
//! locked guests inside one run-wide window, audit every create and delete the
//! moment it is confirmed, and describe the run in the [`Outcome`].
//!
//! Exit semantics: the job fails only when a guest truly failed (an error from
//! Proxmox, a task that failed or outlived its deadline, a pruning error, an
//! included guest the token cannot see). A guest still locked when the retry
//! window closes is `locked`, one on storage without snapshots `unsupported`:
//! both are reported (result, metrics) but are conditions to watch, not job
//! failures, so one long backup does not page anyone at 01:00.

pub mod plan;

use crate::config::SnapshotConfig;
use crate::jobs::context::{JobContext, Outcome};
use crate::metrics::{Family, MetricsUpdate};
use crate::pve::{ClusterGuest, GuestType, PveClient, PveError, SnapshotEntry, Upid};
use plan::{GuestResult, Leftover, Skip, Target, TaskVerdict};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Lines of a failed task's log quoted in the result.
const LOG_TAIL: usize = 8;

/// One guest's story this run (part of the job result).
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    /// Guest id.
    pub vmid: u32,
    /// `qemu` / `lxc`; None for an included guest the API does not show.
    #[serde(rename = "type")]
    pub guest_type: Option<GuestType>,
    /// Display name.
    pub name: Option<String>,
    /// ok | degraded | failed | locked | unsupported.
    pub result: GuestResult,
    /// Snapshot name, when taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Create attempts (more than one when the guest was locked).
    pub attempts: u32,
    /// The last create task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upid: Option<String>,
    /// Its exit status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    /// Why it is not `ok`, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tail of the task log for failed/degraded tasks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Our snapshots deleted by retention.
    pub deleted: Vec<String>,
    /// Our snapshots retention wanted to delete but may not (replication, lock).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retention_skipped: Vec<KeptSnapshot>,
    /// Deletions that failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retention_errors: Vec<String>,
    /// Half-done snapshots found (snapstate prepare/delete).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Leftover>,
    /// Snapshots not ours on this guest (never touched).
    pub foreign: usize,
    /// Our snapshots on the guest after this run.
    pub retained: usize,
}

/// A snapshot left in place by retention, and why.
#[derive(Debug, Clone, Serialize)]
pub struct KeptSnapshot {
    /// Snapshot name.
    pub name: String,
    /// Why it was kept.
    pub reason: String,
}

impl GuestReport {
    fn new(t: &Target) -> Self {
        GuestReport {
            vmid: t.vmid,
            guest_type: Some(t.guest_type),
            name: t.name.clone(),
            result: GuestResult::Failed,
            snapshot: None,
            attempts: 0,
            upid: None,
            exitstatus: None,
            message: None,
            log_tail: vec![],
            deleted: vec![],
            retention_skipped: vec![],
            retention_errors: vec![],
            leftovers: vec![],
            foreign: 0,
            retained: 0,
        }
    }

    fn label(&self) -> String {
        plan::guest_label(self.guest_type, self.vmid, self.name.as_deref())
    }

    fn fail(&mut self, msg: String) {
        self.result = GuestResult::Failed;
        self.message = Some(msg);
    }
}

/// What is shared by every guest of one run.
struct Run<'a> {
    ctx: &'a JobContext,
    cfg: &'a SnapshotConfig,
    client: PveClient,
    snapname: String,
    description: String,
    lock_window_ends: Instant,
    slots: Semaphore,
    /// A legal hold is in force: retention decides but deletes nothing.
    holding: bool,
}

impl Run<'_> {
    fn explain(&self, e: &PveError) -> String {
        e.explain(
            &self.cfg.proxmox.api_token_id,
            &self.cfg.proxmox.api_token_secret_file,
        )
    }

    async fn log_tail(&self, upid: &Upid) -> Vec<String> {
        self.client
            .task_log_tail(upid, LOG_TAIL)
            .await
            .unwrap_or_else(|e| vec![format!("(task log unavailable: {e})")])
    }

    /// Create (retrying locks inside the window), then prune.
    async fn guest(&self, t: Target) -> GuestReport {
        let mut r = GuestReport::new(&t);
        let node = &self.cfg.proxmox.node;
        let mut attempt = 0u32;
        loop {
            let permit = match self.slots.acquire().await {
                Ok(p) => p,
                Err(_) => {
                    r.fail("internal: concurrency limiter closed".into());
                    return r;
                }
            };
            if self.ctx.cancel.is_cancelled() {
                r.fail("cancelled before the snapshot was started".into());
                return r;
            }
            if attempt == 0 {
                if let Ok(list) = self.client.snapshots(node, t.guest_type, t.vmid).await {
                    let p = self.plan(&list);
                    r.leftovers = p.leftovers;
                    r.retained = p.keep.len() + p.delete.len();
                    r.foreign = p.foreign.len();
                }
            }
            attempt += 1;
            r.attempts = attempt;
            let upid = match self
                .client
                .create_snapshot(
                    node,
                    t.guest_type,
                    t.vmid,
                    &self.snapname,
                    self.cfg.vmstate,
                    &self.description,
                )
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    r.fail(format!(
                        "creating snapshot {} of {} on {node}: {}",
                        self.snapname,
                        r.label(),
                        self.explain(&e)
                    ));
                    return r;
                }
            };
            r.upid = Some(upid.raw.clone());
            let deadline = Duration::from_secs(self.cfg.create_timeout_seconds);
            let st = match self
                .client
                .wait_task(&upid, deadline, &self.ctx.cancel)
                .await
            {
                Ok(st) => st,
                Err(e @ PveError::TaskTimeout { .. }) => {
                    r.fail(format!(
                        "snapshot {} of {} on {node}: {e}; it may still finish — see the task log on the node (raise create_timeout_seconds if this storage is slow)",
                        self.snapname, r.label()
                    ));
                    return r;
                }
                Err(e) => {
                    r.fail(format!(
                        "waiting for snapshot task of {} on {node}: {}",
                        r.label(),
                        self.explain(&e)
                    ));
                    return r;
                }
            };
            let exit = st.exitstatus.unwrap_or_default();
            r.exitstatus = Some(exit.clone());
            match plan::classify(&exit) {
                TaskVerdict::Ok => {
                    r.result = GuestResult::Ok;
                    r.message = None;
                }
                TaskVerdict::Warnings(n) => {
                    r.result = GuestResult::Degraded;
                    r.log_tail = self.log_tail(&upid).await;
                    r.message = Some(format!("snapshot taken with {n} warning(s) (see log_tail; often a guest-agent fs-freeze problem)"));
                }
                TaskVerdict::Locked(lock) => {
                    drop(permit);
                    if let Some(wait) = plan::lock_retry(attempt, self.lock_window_ends) {
                        tracing::info!(vmid = t.vmid, lock = %lock, "guest locked; retrying in {} s", wait.as_secs());
                        tokio::select! {
                            () = self.ctx.cancel.cancelled() => {
                                r.fail(format!("cancelled while {} was locked ({lock})", r.label()));
                                return r;
                            }
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                    r.result = GuestResult::Locked;
                    r.message = Some(format!(
                        "{} stayed locked ({lock}) for the whole retry window of {} s ({attempt} attempts); no snapshot this run",
                        r.label(), self.cfg.lock_retry_seconds
                    ));
                    return r;
                }
                TaskVerdict::Unsupported => {
                    r.result = GuestResult::Unsupported;
                    r.message = Some(format!("{exit}: a disk of {} is on storage without snapshots (e.g. raw on directory/NFS, or LVM-thick)", r.label()));
                    return r;
                }
                TaskVerdict::NeededByReplication | TaskVerdict::Failed(_) => {
                    r.log_tail = self.log_tail(&upid).await;
                    r.fail(format!(
                        "snapshot {} of {} on {node}: task {upid} failed: {exit} (log: {})",
                        self.snapname,
                        r.label(),
                        r.log_tail.join(" | ")
                    ));
                    return r;
                }
            }
            r.snapshot = Some(self.snapname.clone());
            let audit = self
                .ctx
                .audit(
                    "snapshot.create",
                    json!({"node": node, "vmid": t.vmid, "type": t.guest_type, "snapshot": self.snapname,
                           "upid": upid.raw, "result": r.result, "exitstatus": exit}),
                )
                .await;
            if let Err(e) = audit {
                r.fail(format!(
                    "recording the creation of {} on {} in the audit log: {e:#}",
                    self.snapname,
                    r.label()
                ));
                return r;
            }
            self.prune(&t, &mut r).await;
            drop(permit);
            return r;
        }
    }

    fn plan(&self, list: &[SnapshotEntry]) -> plan::RetentionPlan {
        plan::retention(
            list,
            &self.cfg.name_prefix,
            chrono::Utc::now().timestamp(),
            self.cfg.retention_days,
            self.cfg.keep_min,
        )
    }

    /// Retention for one guest, only after its snapshot was taken.
    async fn prune(&self, t: &Target, r: &mut GuestReport) {
        let node = &self.cfg.proxmox.node;
        let list = match self.client.snapshots(node, t.guest_type, t.vmid).await {
            Ok(l) => l,
            Err(e) => {
                r.retention_errors.push(format!(
                    "listing snapshots of {}: {}",
                    r.label(),
                    self.explain(&e)
                ));
                return;
            }
        };
        let p = self.plan(&list);
        r.leftovers = p.leftovers;
        r.foreign = p.foreign.len();
        r.retained = p.keep.len() + p.delete.len();
        if self.holding {
            r.retention_skipped
                .extend(p.delete.into_iter().map(|name| KeptSnapshot {
                    name,
                    reason: "legal hold".into(),
                }));
            return;
        }
        for name in p.delete {
            if self.ctx.cancel.is_cancelled() {
                return;
            }
            let upid = match self
                .client
                .delete_snapshot(node, t.guest_type, t.vmid, &name)
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    r.retention_errors.push(format!(
                        "deleting {name} of {}: {}",
                        r.label(),
                        self.explain(&e)
                    ));
                    continue;
                }
            };
            let deadline = Duration::from_secs(self.cfg.delete_timeout_seconds);
            let exit = match self
                .client
                .wait_task(&upid, deadline, &self.ctx.cancel)
                .await
            {
                Ok(st) => st.exitstatus.unwrap_or_default(),
                Err(e) => {
                    r.retention_errors.push(format!(
                        "deleting {name} of {}: {}",
                        r.label(),
                        self.explain(&e)
                    ));
                    continue;
                }
            };
            match plan::classify(&exit) {
                TaskVerdict::Ok | TaskVerdict::Warnings(_) => {
                    r.deleted.push(name.clone());
                    r.retained -= 1;
                    let audit = self
                        .ctx
                        .audit(
                            "snapshot.delete",
                            json!({"node": node, "vmid": t.vmid, "type": t.guest_type, "snapshot": name,
                                   "upid": upid.raw, "reason": format!("older than {} days", self.cfg.retention_days)}),
                        )
                        .await;
                    if let Err(e) = audit {
                        r.retention_errors.push(format!(
                            "recording the deletion of {name} in the audit log: {e:#}"
                        ));
                    }
                }
                TaskVerdict::NeededByReplication => r
                    .retention_skipped
                    .push(KeptSnapshot { name, reason: exit }),
                TaskVerdict::Locked(l) => r.retention_skipped.push(KeptSnapshot {
                    name,
                    reason: format!("{} is locked ({l}); retried next run", t.guest_type.noun()),
                }),
                TaskVerdict::Unsupported | TaskVerdict::Failed(_) => {
                    let tail = self.log_tail(&upid).await;
                    r.retention_errors.push(format!(
                        "deleting {name} of {}: task {upid} failed: {exit} (log: {})",
                        r.label(),
                        tail.join(" | ")
                    ));
                }
            }
        }
    }
}

fn setup_failure(step: &str, e: String) -> Outcome {
    Outcome::failure(format!("{step}: {e}"), json!({"step": step}))
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let Some(cfg) = ctx.config.snapshots.as_ref() else {
        anyhow::bail!("the snapshot job has no [snapshots] section");
    };
    let started = chrono::Utc::now();
    let client = match PveClient::new(
        &cfg.proxmox.api_url,
        &cfg.proxmox.api_token_id,
        &cfg.proxmox.api_token_secret_file,
        &cfg.proxmox.ca_file,
        Duration::from_secs(60),
        ctx.config.policy.min_tls_version,
    ) {
        Ok(c) => c,
        Err(e) => {
            return Ok(setup_failure(
                "setting up the Proxmox API client",
                e.to_string(),
            ))
        }
    };
    let hint = |e: &PveError| {
        e.explain(
            &cfg.proxmox.api_token_id,
            &cfg.proxmox.api_token_secret_file,
        )
    };
    let nodes = match client.nodes().await {
        Ok(n) => n,
        Err(e) => {
            return Ok(setup_failure(
                &format!("listing the cluster nodes at {}", cfg.proxmox.api_url),
                hint(&e),
            ))
        }
    };
    if !nodes.iter().any(|n| n.node == cfg.proxmox.node) {
        let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        return Ok(setup_failure(
            "finding this node in the cluster",
            format!("node {:?} is not one of {names:?}: set [snapshots] node to this host's Proxmox node name", cfg.proxmox.node),
        ));
    }
    let guests: Vec<ClusterGuest> = match client.cluster_guests().await {
        Ok(g) => g,
        Err(e) => {
            return Ok(setup_failure(
                &format!(
                    "listing guests at {}/cluster/resources",
                    cfg.proxmox.api_url
                ),
                hint(&e),
            ))
        }
    };
    let sel = plan::select(&guests, &cfg.proxmox.node, &cfg.include, &cfg.exclude);
    let snapname = plan::snapshot_name(&cfg.name_prefix, started);
    if !plan::valid_snapshot_name(&snapname) {
        return Ok(setup_failure(
            "naming the snapshot",
            format!("{snapname:?} is not a valid Proxmox snapshot name"),
        ));
    }
    let run = Run {
        ctx,
        cfg,
        client,
        description: plan::description(&ctx.config.host_id, &ctx.id, cfg.retention_days),
        snapname: snapname.clone(),
        lock_window_ends: Instant::now() + Duration::from_secs(cfg.lock_retry_seconds),
        slots: Semaphore::new(cfg.concurrency.max(1) as usize),
        holding: crate::hold::holding(&ctx.config.state_dir),
    };
    let mut reports: Vec<GuestReport> =
        futures_util::future::join_all(sel.targets.iter().cloned().map(|t| run.guest(t))).await;
    // An included guest the API does not show: missing VM.Audit, or gone.
    for vmid in &sel.not_visible {
        let mut r = GuestReport::new(&Target {
            vmid: *vmid,
            guest_type: GuestType::Qemu,
            name: None,
        });
        r.guest_type = None;
        r.fail(format!(
            "guest {vmid} is in [snapshots] include but {} does not show it: grant VM.Audit (and VM.Snapshot) on /vms/{vmid} to the token, or remove it from include",
            cfg.proxmox.api_token_id
        ));
        reports.push(r);
    }
    let mut o = outcome(
        cfg,
        &snapname,
        &sel.skipped,
        &reports,
        ctx.cancel.is_cancelled(),
    );
    // A guest no longer on this node (migrated, destroyed, excluded) loses
    // its series, judged from the listing that just succeeded.
    let live = reports.iter().map(|r| r.vmid.to_string()).collect();
    o.metrics
        .keep_only(Family::SnapshotLastSuccess, "vmid", live);
    o.metrics
        .set(Family::LegalHold, &[], if run.holding { 1.0 } else { 0.0 });
    Ok(o)
}

fn outcome(
    cfg: &SnapshotConfig,
    snapname: &str,
    skipped: &[Skip],
    reports: &[GuestReport],
    cancelled: bool,
) -> Outcome {
    let now = crate::util::unix_now();
    let mut m = MetricsUpdate {
        // Re-described in full by every run that got this far.
        clear: vec![Family::SnapshotLastResult, Family::SnapshotRetained],
        ..Default::default()
    };
    let count = |res: GuestResult| reports.iter().filter(|r| r.result == res).count();
    let mut failures: Vec<String> = Vec::new();
    for r in reports {
        let vmid = r.vmid.to_string();
        for res in GuestResult::ALL {
            m.set(
                Family::SnapshotLastResult,
                &[("vmid", &vmid), ("result", res.as_str())],
                if res == r.result { 1.0 } else { 0.0 },
            );
        }
        if r.result.taken() {
            m.set(
                Family::SnapshotLastSuccess,
                &[
                    ("vmid", &vmid),
                    ("type", r.guest_type.map_or("unknown", GuestType::as_str)),
                ],
                now,
            );
        }
        m.set(
            Family::SnapshotRetained,
            &[("vmid", &vmid)],
            r.retained as f64,
        );
        if r.result.fails_job() {
            failures.push(
                r.message
                    .clone()
                    .unwrap_or_else(|| format!("{} failed", r.label())),
            );
        }
        failures.extend(r.retention_errors.iter().map(|e| format!("pruning: {e}")));
    }
    let deleted: usize = reports.iter().map(|r| r.deleted.len()).sum();
    let kept: usize = reports.iter().map(|r| r.retention_skipped.len()).sum();
    let leftovers: usize = reports.iter().map(|r| r.leftovers.len()).sum();
    // Name the guests that need a look, so the one-line summary is actionable.
    let attention: Vec<String> = GuestResult::ALL
        .iter()
        .filter(|res| !matches!(res, GuestResult::Ok))
        .filter_map(|res| {
            let ids: Vec<String> = reports
                .iter()
                .filter(|r| r.result == *res)
                .map(|r| r.vmid.to_string())
                .collect();
            (!ids.is_empty()).then(|| format!("{} {}", res.as_str(), ids.join(",")))
        })
        .collect();
    let summary = format!(
        "{snapname} on {}: {} ok, {} degraded, {} locked, {} unsupported, {} failed{}; {deleted} old snapshot(s) deleted{}{}; {} guest(s) skipped",
        cfg.proxmox.node,
        count(GuestResult::Ok),
        count(GuestResult::Degraded),
        count(GuestResult::Locked),
        count(GuestResult::Unsupported),
        count(GuestResult::Failed),
        if attention.is_empty() { String::new() } else { format!(" ({})", attention.join("; ")) },
        if kept > 0 { format!(", {kept} kept (replication/lock/legal hold)") } else { String::new() },
        if leftovers > 0 { format!(", {leftovers} half-done snapshot(s) need a look") } else { String::new() },
        skipped.len(),
    );
    let result = json!({
        "node": cfg.proxmox.node,
        "snapshot": snapname,
        "counts": GuestResult::ALL.iter().map(|r| (r.as_str(), count(*r))).collect::<std::collections::BTreeMap<_, _>>(),
        "deleted": deleted,
        "guests": reports,
        "skipped": skipped,
    });
    let changed = reports
        .iter()
        .any(|r| r.result.taken() || !r.deleted.is_empty());
    let mut o = if cancelled {
        Outcome::failure(format!("cancelled: {summary}"), result)
    } else if failures.is_empty() {
        Outcome::success(summary, result)
    } else {
        let more = if failures.len() > 3 {
            format!(" (and {} more)", failures.len() - 3)
        } else {
            String::new()
        };
        let mut o = Outcome::failure(
            format!("{}{more}", failures[..failures.len().min(3)].join("; ")),
            result,
        );
        o.summary = summary;
        o
    };
    o.metrics = m;
    o.changed = changed;
    o
}
