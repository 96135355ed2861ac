//! The `vm-backup` duty (SPEC §12): per guest, one vzdump through the
//! Proxmox API into `dump_storage`, the archive located through the storage
//! content API and streamed once through the same encrypt-and-fan-out
//! pipeline as database backups ([`crate::jobs::backup::stream`], a file
//! source) to every destination, `manifest.json` last, the local archive
//! deleted unless `keep_local`, then retention (keep floor, Object Lock,
//! legal hold, retired guests).
//!
//! One guest at a time: vzdump is heavy, and its node-wide lock serialises
//! backups anyway. A guest locked by another task is retried inside the
//! run-wide `lock_retry_seconds` window exactly as snapshots are
//! ([`snapshot::plan::classify`], [`snapshot::plan::lock_retry`]); a task
//! ending `WARNINGS: n` is degraded (its archive is kept and shipped), an
//! error fails the guest and nothing is written for it.
//!
//! Must never: write a manifest for an object whose size was not confirmed,
//! delete the local archive before every destination has the backup, let one
//! destination stop the others, delete anything while a legal hold is set.

pub mod manifest;
pub mod retention;

use crate::config::VmBackupConfig;
use crate::crypto::Recipients;
use crate::jobs::backup::stream::{self, Source};
use crate::jobs::backup::{self as dbbackup, retention as stamps};
use crate::jobs::context::{JobContext, Outcome};
use crate::jobs::snapshot::plan::{self, GuestResult, Target, TaskVerdict};
use crate::metrics::{Family, MetricsUpdate};
use crate::pve::{ClusterGuest, GuestType, PveClient, PveError, Upid};
use crate::store::{Destination, Reservation};
use anyhow::{bail, Context};
use bytes::Bytes;
use manifest::VmManifest;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines of a task's log quoted in the result.
const LOG_TAIL: usize = 8;
/// Initial multipart part size (grows, as for database backups).
const PART_SIZE: u64 = 8 << 20;
/// Parts in flight per destination.
const IN_FLIGHT: usize = 2;

/// One destination's part of a guest's backup.
#[derive(Debug, Clone, Serialize)]
pub struct DestReport {
    /// Destination name.
    pub destination: String,
    /// The object's key.
    pub key: String,
    /// Whether object and manifest are there.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One guest's story this run.
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    /// Guest id.
    pub vmid: u32,
    /// `qemu` / `lxc`.
    #[serde(rename = "type")]
    pub guest_type: Option<GuestType>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ok | degraded | failed | locked.
    pub result: GuestResult,
    /// vzdump attempts (more than one when the guest was locked).
    pub attempts: u32,
    /// The last vzdump task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upid: Option<String>,
    /// Its exit status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    /// Why it is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tail of the task log for failed/degraded tasks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The stamp of this backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// The archive's volume id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volid: Option<String>,
    /// Encrypted size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Per destination.
    pub destinations: Vec<DestReport>,
    /// Whether the local archive was deleted (false: kept, or deletion failed).
    pub local_deleted: bool,
    /// Seconds this guest took.
    pub duration_seconds: f64,
    /// Of those, the vzdump task's (started to finished, retries included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vzdump_seconds: Option<f64>,
    /// Of those, streaming the archive encrypted to the destinations (read,
    /// encrypt, upload; the manifests not included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_seconds: Option<f64>,
}

impl GuestReport {
    fn new(t: &Target) -> Self {
        GuestReport {
            vmid: t.vmid,
            guest_type: Some(t.guest_type),
            name: t.name.clone(),
            result: GuestResult::Failed,
            attempts: 0,
            upid: None,
            exitstatus: None,
            message: None,
            log_tail: vec![],
            stamp: None,
            volid: None,
            size_bytes: None,
            destinations: vec![],
            local_deleted: false,
            duration_seconds: 0.0,
            vzdump_seconds: None,
            upload_seconds: None,
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

/// What every guest of one run shares.
struct Run<'a> {
    ctx: &'a JobContext,
    cfg: &'a VmBackupConfig,
    client: PveClient,
    recipients: Arc<Recipients>,
    dests: Vec<Arc<dyn Destination>>,
    prefixes: BTreeMap<String, String>,
    writer: String,
    lock_window_ends: Instant,
}

/// The vzdump task's verdict for one guest. vzdump ends a job whose guest
/// failed with `job errors`; the reason is its log line `ERROR: Backup of
/// VM N failed - REASON`, which is read the way a snapshot task's status is.
fn vzdump_verdict(exit: &str, log: &[String], vmid: u32) -> TaskVerdict {
    if exit.trim() != "job errors" {
        return plan::classify(exit);
    }
    let marker = format!("Backup of VM {vmid} failed - ");
    match log.iter().find_map(|l| l.split_once(&marker).map(|x| x.1)) {
        Some(reason) => match plan::classify(reason) {
            TaskVerdict::Ok | TaskVerdict::Warnings(_) => TaskVerdict::Failed(reason.to_owned()),
            v => v,
        },
        None => TaskVerdict::Failed(exit.to_owned()),
    }
}

impl Run<'_> {
    fn explain(&self, e: &PveError) -> String {
        let p = &self.cfg.proxmox;
        e.explain(&p.api_token_id, &p.api_token_secret_file)
    }

    fn prefix(&self, dest: &str) -> &str {
        self.prefixes.get(dest).map_or("", String::as_str)
    }

    async fn log_tail(&self, upid: &Upid, n: usize) -> Vec<String> {
        self.client
            .task_log_tail(upid, n)
            .await
            .unwrap_or_else(|e| vec![format!("(task log unavailable: {e})")])
    }

    /// vzdump (retrying locks inside the window), then ship the archive.
    async fn guest(&self, t: &Target) -> GuestReport {
        let clock = Instant::now();
        let mut r = GuestReport::new(t);
        self.guest_inner(t, &mut r).await;
        r.duration_seconds = clock.elapsed().as_secs_f64();
        match r.result {
            GuestResult::Ok => tracing::info!(vmid = t.vmid, "backed up"),
            res => tracing::warn!(
                vmid = t.vmid,
                result = res.as_str(),
                "{}",
                r.message.clone().unwrap_or_default()
            ),
        }
        r
    }

    async fn guest_inner(&self, t: &Target, r: &mut GuestReport) {
        let node = &self.cfg.proxmox.node;
        let mut attempt = 0u32;
        let clock = Instant::now();
        let (upid, started, exit) = loop {
            if self.ctx.cancel.is_cancelled() {
                r.fail("cancelled before the backup was started".into());
                return;
            }
            attempt += 1;
            r.attempts = attempt;
            let started = chrono::Utc::now();
            let upid = match self
                .client
                .vzdump(
                    node,
                    t.vmid,
                    &self.cfg.dump_storage,
                    &self.cfg.mode,
                    &self.cfg.compress,
                )
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    r.fail(format!(
                        "starting vzdump of {} on {node}: {}",
                        r.label(),
                        self.explain(&e)
                    ));
                    return;
                }
            };
            r.upid = Some(upid.raw.clone());
            let deadline = Duration::from_secs(self.cfg.task_timeout_seconds);
            let st = match self
                .client
                .wait_task(&upid, deadline, &self.ctx.cancel)
                .await
            {
                Ok(st) => st,
                Err(e) => {
                    r.fail(format!(
                        "waiting for vzdump of {} on {node}: {}",
                        r.label(),
                        self.explain(&e)
                    ));
                    return;
                }
            };
            let exit = st.exitstatus.unwrap_or_default();
            r.exitstatus = Some(exit.clone());
            let log = if exit.trim() == "OK" {
                vec![]
            } else {
                self.log_tail(&upid, 200).await
            };
            match vzdump_verdict(&exit, &log, t.vmid) {
                TaskVerdict::Ok => {
                    r.result = GuestResult::Ok;
                    r.message = None;
                }
                TaskVerdict::Warnings(n) => {
                    r.result = GuestResult::Degraded;
                    r.log_tail = tail(&log, LOG_TAIL);
                    r.message = Some(format!("vzdump of {} ended with {n} warning(s) (see log_tail); the archive was shipped", r.label()));
                }
                TaskVerdict::Locked(lock) => {
                    if let Some(wait) = plan::lock_retry(attempt, self.lock_window_ends) {
                        tracing::info!(vmid = t.vmid, lock = %lock, "guest locked; retrying in {} s", wait.as_secs());
                        tokio::select! {
                            () = self.ctx.cancel.cancelled() => {
                                r.fail(format!("cancelled while {} was locked ({lock})", r.label()));
                                return;
                            }
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                    r.result = GuestResult::Locked;
                    r.log_tail = tail(&log, LOG_TAIL);
                    r.message = Some(format!(
                        "{} stayed locked ({lock}) for the whole retry window of {} s ({attempt} attempts); no backup this run",
                        r.label(),
                        self.cfg.lock_retry_seconds
                    ));
                    return;
                }
                TaskVerdict::Unsupported
                | TaskVerdict::NeededByReplication
                | TaskVerdict::Failed(_) => {
                    r.log_tail = tail(&log, LOG_TAIL);
                    r.fail(format!(
                        "vzdump of {} on {node}: task {upid} failed: {exit} (log: {}); nothing was written for it",
                        r.label(),
                        r.log_tail.join(" | ")
                    ));
                    return;
                }
            }
            break (upid, started, exit);
        };
        r.vzdump_seconds = Some(clock.elapsed().as_secs_f64());
        let degraded = r.result == GuestResult::Degraded;
        if let Err(e) = self
            .ship(t, r, &upid, started, degraded.then_some(exit))
            .await
        {
            r.fail(format!("{}: {e:#}", r.label()));
        } else if r.destinations.iter().any(|d| !d.ok) {
            let failed: Vec<String> = r
                .destinations
                .iter()
                .filter(|d| !d.ok)
                .map(|d| format!("{}: {}", d.destination, d.error.clone().unwrap_or_default()))
                .collect();
            r.fail(format!(
                "{} did not reach every destination ({})",
                r.label(),
                failed.join("; ")
            ));
        }
    }

    /// Locate the archive, stream it to every destination, write the
    /// manifests, delete the local archive once every destination has it.
    async fn ship(
        &self,
        t: &Target,
        r: &mut GuestReport,
        upid: &Upid,
        started: chrono::DateTime<chrono::Utc>,
        warnings: Option<String>,
    ) -> anyhow::Result<()> {
        let node = &self.cfg.proxmox.node;
        let storage = &self.cfg.dump_storage;
        // The archive this task wrote: vzdump names it by the task's start
        // (local time, to the second), so it is the newest of this guest's
        // backups and not older than the task.
        let vols = self
            .client
            .backup_volumes(node, storage, t.vmid)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "listing the backups of {} on {storage}: {}",
                    r.label(),
                    self.explain(&e)
                )
            })?;
        let since = started.timestamp() - 2;
        let vol = vols
            .iter()
            .filter(|v| v.vmid.is_none_or(|id| id == t.vmid) && v.ctime >= since)
            .max_by_key(|v| (v.ctime, v.volid.clone()))
            .with_context(|| {
                format!(
                    "vzdump task {upid} succeeded but {storage} lists no new archive of guest {}",
                    t.vmid
                )
            })?;
        r.volid = Some(vol.volid.clone());
        let info = self
            .client
            .volume_info(node, storage, &vol.volid)
            .await
            .map_err(|e| anyhow::anyhow!("locating {}: {}", vol.volid, self.explain(&e)))?;
        let path = std::path::PathBuf::from(&info.path);
        let archive = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .unwrap_or_default();
        let Some(kind) = manifest::archive_name(&archive, t.vmid) else {
            bail!(
                "{} is not a vzdump archive of guest {} ({})",
                info.path,
                t.vmid,
                vol.volid
            );
        };
        if kind != t.guest_type {
            bail!(
                "{} holds a {} archive, but guest {} is a {}",
                info.path,
                kind.as_str(),
                t.vmid,
                t.guest_type.as_str()
            );
        }
        let file = crate::fsx::open_read(&path).with_context(|| {
            format!("opening {} (the agent reads the dump directory through an ACL the package sets: setfacl -m u:cloudnx-agent:rwx,d:u:cloudnx-agent:r on it; see docs/adr/0014)", path.display())
        })?;

        let (stamp, unreserved) = self.reserve(t.vmid, started).await?;
        r.stamp = Some(stamp.clone());
        r.destinations = self
            .dests
            .iter()
            .map(|d| DestReport {
                destination: d.name().to_owned(),
                key: manifest::object_key(self.prefix(d.name()), t.vmid, &stamp, &archive),
                ok: false,
                error: unreserved.get(d.name()).cloned(),
            })
            .collect();
        // Only where the stamp is ours.
        let live: Vec<usize> = (0..r.destinations.len())
            .filter(|&i| r.destinations[i].error.is_none())
            .collect();
        if live.is_empty() {
            bail!(
                "no destination could reserve stamp {stamp}: {}",
                unreserved.into_values().collect::<Vec<_>>().join("; ")
            );
        }
        let targets: Vec<(Arc<dyn Destination>, String)> = live
            .iter()
            .map(|&i| (self.dests[i].clone(), r.destinations[i].key.clone()))
            .collect();
        let what = format!("the archive of {}", r.label());
        self.ctx
            .progress
            .phase(format!("uploading {archive}"), Some(info.size));
        let clock = Instant::now();
        let fanned = stream::fan_out(
            Source::File(file),
            &what,
            self.recipients.clone(),
            &targets,
            PART_SIZE,
            &self.ctx.cancel,
            &self.ctx.progress,
        )
        .await;
        r.upload_seconds = Some(clock.elapsed().as_secs_f64());
        for (&i, e) in live.iter().zip(fanned.upload_errors()) {
            if e.is_some() {
                r.destinations[i].error = e;
            }
        }
        let stream::FannedOut { streamed, uploaded } = fanned;
        let streamed = match streamed {
            Ok(s) => s,
            Err(e) => {
                self.release(t.vmid, &stamp, r).await;
                return Err(e);
            }
        };
        r.size_bytes = Some(streamed.size);
        // The audit log's head, as in database backups' manifests (SPEC §11).
        let head = self.ctx.audit_head().await?;
        let m = VmManifest {
            format: manifest::FORMAT.into(),
            host_id: self.ctx.config.host_id.clone(),
            vmid: t.vmid,
            guest_type: t.guest_type,
            node: node.clone(),
            volid: vol.volid.clone(),
            archive: archive.clone(),
            size_bytes: streamed.size,
            sha256: streamed.sha256.clone(),
            plaintext_size_bytes: streamed.plaintext_size,
            plaintext_sha256: streamed.plaintext_sha256.clone(),
            recipients: self.recipients.fingerprints(),
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            audit_head: head,
            writer: Some(self.writer.clone()),
            warnings,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&m)?);
        for (&i, up) in live.iter().zip(uploaded) {
            let (d, res) = (&self.dests[i], &mut r.destinations[i]);
            if res.error.is_some() {
                continue;
            }
            let confirmed = async {
                let n = up?;
                let seen = d.size(&res.key).await.context("confirming the object size")?;
                if seen != Some(m.size_bytes) || n != m.size_bytes {
                    bail!("the stored object has {seen:?} bytes, {} were written; not writing the manifest", m.size_bytes);
                }
                let dir = manifest::stamp_dir(self.prefix(d.name()), t.vmid, &stamp);
                let marker = d.writer(&dir).await.context("reading the stamp's writer")?;
                if marker.as_deref().and_then(|w| w.split_whitespace().next()) != Some(self.writer.as_str()) {
                    bail!("another writer ({}) holds stamp {stamp} now; not writing the manifest", marker.unwrap_or_default());
                }
                d.put_new(&manifest::manifest_key(self.prefix(d.name()), t.vmid, &stamp), body.clone())
                    .await
                    .context("writing the manifest")
            }
            .await;
            match confirmed {
                Ok(()) => res.ok = true,
                Err(e) => res.error = Some(format!("{e:#}")),
            }
        }
        // The local archive goes only once every destination has the backup.
        if !self.cfg.keep_local && r.destinations.iter().all(|d| d.ok) {
            match self.delete_local(&vol.volid).await {
                Ok(()) => {
                    r.local_deleted = true;
                    self.ctx
                        .audit("vm_backup.local.delete", json!({"node": node, "vmid": t.vmid, "volid": vol.volid, "stamp": stamp}))
                        .await
                        .context("auditing the deletion of the local archive")?;
                }
                Err(e) => tracing::warn!(
                    vmid = t.vmid,
                    "deleting the local archive {}: {e:#}",
                    vol.volid
                ),
            }
        }
        Ok(())
    }

    async fn delete_local(&self, volid: &str) -> anyhow::Result<()> {
        let node = &self.cfg.proxmox.node;
        let upid = self
            .client
            .delete_volume(node, &self.cfg.dump_storage, volid)
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.explain(&e)))?;
        let st = self
            .client
            .wait_task(&upid, Duration::from_secs(600), &self.ctx.cancel)
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.explain(&e)))?;
        match st.exitstatus.as_deref() {
            Some("OK") => Ok(()),
            other => bail!("delete task {upid} ended {other:?}"),
        }
    }

    /// Reserve `{prefix}/vm/{vmid}/{stamp}/` on every destination (the same
    /// atomic reservation as database backups); a taken stamp waits a second.
    async fn reserve(
        &self,
        vmid: u32,
        started: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<(String, BTreeMap<String, String>)> {
        let marker = format!("{} {}", self.writer, self.ctx.id);
        let mut at = started;
        for _ in 0..120 {
            let stamp = stamps::stamp(at);
            let mut ours = Vec::new();
            let mut taken = false;
            let mut failed = BTreeMap::new();
            for d in &self.dests {
                let dir = manifest::stamp_dir(self.prefix(d.name()), vmid, &stamp);
                match d.reserve(&dir, &marker).await {
                    Ok(Reservation::Ours) => ours.push(d),
                    Ok(Reservation::Taken { .. }) => {
                        taken = true;
                        break;
                    }
                    Err(e) if e.is_cancelled() => bail!("{e}"),
                    // Nothing is written where the stamp is not ours: an
                    // object without our marker would look like another
                    // writer's upload and outlive the failure by a day.
                    Err(e) => {
                        tracing::warn!(destination = d.name(), "{e}");
                        failed.insert(d.name().to_owned(), format!("reserving stamp {dir}: {e}"));
                    }
                }
            }
            if !taken {
                return Ok((stamp, failed));
            }
            for d in ours {
                let _ = d
                    .release(&manifest::stamp_dir(self.prefix(d.name()), vmid, &stamp))
                    .await;
            }
            at += chrono::Duration::seconds(1);
        }
        bail!("no free stamp for guest {vmid} in 120 tries")
    }

    /// A failed stream leaves no reserved, empty stamp behind.
    async fn release(&self, vmid: u32, stamp: &str, r: &GuestReport) {
        for (d, res) in self.dests.iter().zip(&r.destinations) {
            let dir = manifest::stamp_dir(self.prefix(d.name()), vmid, stamp);
            crate::jobs::backup::release_unwritten(d.as_ref(), &dir, &res.key).await;
        }
    }
}

fn tail(log: &[String], n: usize) -> Vec<String> {
    log[log.len().saturating_sub(n)..].to_vec()
}

fn setup_failure(step: &str, e: String) -> Outcome {
    Outcome::failure(format!("{step}: {e}"), json!({"step": step}))
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let Some(cfg) = ctx.config.vm_backup.as_ref() else {
        bail!("the vm-backup job has no [vm_backup] section");
    };
    let p = &cfg.proxmox;
    let client = match PveClient::new(
        &p.api_url,
        &p.api_token_id,
        &p.api_token_secret_file,
        &p.ca_file,
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
    let recipients = dbbackup::load_recipients(&cfg.encrypt_to).await?;
    let (dests, prefixes) = dbbackup::open_destinations(ctx, &cfg.destinations, IN_FLIGHT)?;
    let guests: Vec<ClusterGuest> = match client.cluster_guests().await {
        Ok(g) => g,
        Err(e) => {
            let h = e.explain(&p.api_token_id, &p.api_token_secret_file);
            return Ok(setup_failure(
                &format!("listing guests at {}/cluster/resources", p.api_url),
                h,
            ));
        }
    };
    // vzdump backs templates up too.
    let all: Vec<ClusterGuest> = guests
        .iter()
        .cloned()
        .map(|mut g| {
            g.template = false;
            g
        })
        .collect();
    let include: Vec<u32> = if ctx.params.vmids.is_empty() {
        cfg.include.clone()
    } else {
        ctx.params.vmids.clone()
    };
    let sel = plan::select(&all, &p.node, &include, &cfg.exclude);
    let run = Run {
        ctx,
        cfg,
        client,
        recipients,
        dests,
        prefixes,
        writer: dbbackup::writer_id(&ctx.config.state_dir)?,
        lock_window_ends: Instant::now() + Duration::from_secs(cfg.lock_retry_seconds),
    };
    let mut reports = Vec::new();
    for t in &sel.targets {
        if ctx.cancel.is_cancelled() {
            break;
        }
        ctx.progress
            .phase(format!("backing up guest {}", t.vmid), None);
        reports.push(run.guest(t).await);
    }
    for vmid in &sel.not_visible {
        let mut r = GuestReport::new(&Target {
            vmid: *vmid,
            guest_type: GuestType::Qemu,
            name: None,
        });
        r.guest_type = None;
        r.fail(format!(
            "guest {vmid} is not on this cluster or {} may not see it: grant VM.Audit and VM.Backup on /vms/{vmid}, or remove it",
            p.api_token_id
        ));
        reports.push(r);
    }
    // Retention: every guest backed up now, and (on a full run) the guests
    // that left this node.
    // A guest named in `include` is never retired: hidden from the token
    // is not gone (it is reported above as not visible).
    let on_node: Vec<u32> = guests
        .iter()
        .filter(|g| g.node == p.node)
        .map(|g| g.vmid)
        .chain(cfg.include.iter().copied())
        .collect();
    let full_run = ctx.params.vmids.is_empty();
    let this_run: Vec<retention::ThisRun<'_>> = reports
        .iter()
        .map(|r| retention::ThisRun {
            vmid: r.vmid,
            stamp: r.stamp.as_deref(),
            reached: r
                .destinations
                .iter()
                .filter(|d| d.ok)
                .map(|d| d.destination.as_str())
                .collect(),
        })
        .collect();
    let env = retention::Env {
        ctx,
        dests: &run.dests,
        prefixes: &run.prefixes,
        writer: &run.writer,
        retention_days: cfg.retention_days,
        keep_min: cfg.keep_min,
    };
    let kept = retention::apply(&env, &this_run, full_run.then_some(on_node.as_slice())).await;
    Ok(outcome(
        cfg,
        &sel.skipped,
        &reports,
        &kept,
        ctx.cancel.is_cancelled(),
    ))
}

fn outcome(
    cfg: &VmBackupConfig,
    skipped: &[plan::Skip],
    reports: &[GuestReport],
    kept: &retention::Summary,
    cancelled: bool,
) -> Outcome {
    let now = crate::util::unix_now();
    let mut m = MetricsUpdate::default();
    let mut failures: Vec<String> = Vec::new();
    for r in reports {
        let vmid = r.vmid.to_string();
        for d in &r.destinations {
            if d.ok {
                m.set(
                    Family::VmBackupLastSuccess,
                    &[("vmid", &vmid), ("destination", &d.destination)],
                    now,
                );
            }
        }
        if r.destinations.iter().any(|d| d.ok) {
            if let Some(n) = r.size_bytes {
                m.set(Family::VmBackupLastSize, &[("vmid", &vmid)], n as f64);
            }
        }
        if r.result.fails_job() {
            failures.push(
                r.message
                    .clone()
                    .unwrap_or_else(|| format!("{} failed", r.label())),
            );
        }
    }
    for ((vmid, dest), n) in &kept.retained {
        m.set(
            Family::VmBackupRetained,
            &[("vmid", &vmid.to_string()), ("destination", dest)],
            *n as f64,
        );
    }
    for vmid in &kept.retired {
        m.forget
            .push((Family::VmBackupRetained, "vmid", vmid.to_string()));
        m.forget
            .push((Family::VmBackupLastSuccess, "vmid", vmid.to_string()));
        m.forget
            .push((Family::VmBackupLastSize, "vmid", vmid.to_string()));
    }
    failures.extend(kept.errors.iter().cloned());
    let count = |res: GuestResult| reports.iter().filter(|r| r.result == res).count();
    let attention: Vec<String> = [
        GuestResult::Degraded,
        GuestResult::Locked,
        GuestResult::Failed,
    ]
    .iter()
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
        "vm-backup on {} to {}: {} ok, {} degraded, {} locked, {} failed{}; {} old backup(s) deleted{}; {} guest(s) skipped",
        cfg.proxmox.node,
        cfg.destinations.join(", "),
        count(GuestResult::Ok),
        count(GuestResult::Degraded),
        count(GuestResult::Locked),
        count(GuestResult::Failed),
        if attention.is_empty() { String::new() } else { format!(" ({})", attention.join("; ")) },
        kept.deleted.len(),
        if kept.held.is_empty() { String::new() } else { format!(", {} held by the legal hold", kept.held.len()) },
        skipped.len(),
    );
    let result = json!({
        "node": cfg.proxmox.node,
        "guests": reports,
        "skipped": skipped,
        "retention": {"deleted": kept.deleted, "held": kept.held, "retired": kept.retired},
    });
    let changed =
        reports.iter().any(|r| r.destinations.iter().any(|d| d.ok)) || !kept.deleted.is_empty();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_backup_vzdump_job_errors_are_read_from_the_guest_line() {
        let log = |l: &str| vec!["INFO: starting new backup job".to_owned(), l.to_owned()];
        assert_eq!(
            vzdump_verdict(
                "job errors",
                &log("ERROR: Backup of VM 105 failed - VM is locked (backup)"),
                105
            ),
            TaskVerdict::Locked("backup".into())
        );
        assert!(matches!(
            vzdump_verdict(
                "job errors",
                &log(
                    "ERROR: Backup of VM 104 failed - job failed with err -5 - Input/output error"
                ),
                104
            ),
            TaskVerdict::Failed(_)
        ));
        assert_eq!(
            vzdump_verdict("WARNINGS: 1", &[], 1),
            TaskVerdict::Warnings(1)
        );
        assert_eq!(vzdump_verdict("OK", &[], 1), TaskVerdict::Ok);
        assert!(matches!(
            vzdump_verdict("job errors", &[], 1),
            TaskVerdict::Failed(_)
        ));
    }
}
