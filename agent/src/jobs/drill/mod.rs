//! The `restore-drill` duty (SPEC §1, issue 4): per database, the newest
//! complete backup on the configured destination is downloaded (ciphertext
//! SHA-256 checked while streaming), decrypted to a spool file (MDC and
//! plaintext SHA-256 checked), restored into a fresh throwaway PostgreSQL of
//! the dump's major version (globals first, then `pg_restore --jobs
//! --exit-on-error`), and checked by name: schema fingerprint, exact row
//! counts, `pg_amcheck`, operator SQL probes. RTO = first byte downloaded →
//! checks done, with per-phase times.
//!
//! Must never: touch the source cluster, leave the throwaway cluster running
//! or its temp dir behind (the [`cluster::Cluster`] guard removes both on every
//! exit path), or report success when any check did not run green.

pub mod cluster;

use crate::config::DrillConfig;
use crate::jobs::backup::manifest::{self, Manifest};
use crate::jobs::context::{JobContext, Outcome};
use crate::jobs::{catalog, retrieve};
use crate::metrics::{Family, MetricsUpdate};
use crate::store::Destination;
use anyhow::{bail, Context};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Phase names (metric label `phase`).
/// `cluster_start` (initdb + start of the throwaway cluster) runs while the
/// download and decryption do, so it is not part of the sum.
const PHASES: [&str; 5] = ["download", "decrypt", "cluster_start", "restore", "checks"];

/// One named check and its result.
#[derive(Debug, Clone, serde::Serialize)]
struct Check {
    database: String,
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    phases: BTreeMap<&'static str, f64>,
    checks: Vec<Check>,
    backups: Vec<serde_json::Value>,
    phase: &'static str,
}

impl Report {
    fn add(&mut self, phase: &'static str, t: Instant) {
        self.add_time(phase, t.elapsed());
    }

    fn add_time(&mut self, phase: &'static str, d: std::time::Duration) {
        *self.phases.entry(phase).or_default() += d.as_secs_f64();
    }
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let cfg = ctx
        .config
        .restore_drill
        .as_ref()
        .context("the [restore_drill] section is absent")?;
    let dest_name = ctx
        .params
        .destination
        .clone()
        .unwrap_or_else(|| cfg.destination.clone());
    let dest_cfg = ctx
        .config
        .destination(&dest_name)
        .with_context(|| format!("destination {dest_name:?} is not defined in [[destinations]]"))?;
    let dest = dest_cfg
        .open(1, &ctx.cancel)
        .with_context(|| format!("opening destination {dest_name}"))?;
    let prefix = cfg
        .source_host_id
        .clone()
        .unwrap_or_else(|| dest_cfg.prefix.clone());

    let mut report = Report::default();
    let started = Instant::now();
    let timeout = std::time::Duration::from_secs(u64::from(cfg.timeout_minutes) * 60);
    let r = tokio::select! {
        r = tokio::time::timeout(timeout, drill(cfg, dest.clone(), &prefix, &mut report, &ctx.progress)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out after {} minutes", cfg.timeout_minutes)),
        },
        () = ctx.cancel.cancelled() => Err(anyhow::anyhow!("cancelled (the agent is shutting down)")),
    };
    let rto = started.elapsed().as_secs_f64();
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    let error = match (&r, failed.is_empty()) {
        (Err(e), _) => Some(format!("{} phase: {e:#}", report.phase)),
        (Ok(()), false) => Some(format!(
            "checks failed: {}",
            failed
                .iter()
                .map(|c| format!("{} {}: {}", c.database, c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        (Ok(()), true) => None,
    };
    let mut metrics = MetricsUpdate::default();
    for p in PHASES {
        metrics.set(
            Family::DrillLastPhase,
            &[("phase", p)],
            report.phases.get(p).copied().unwrap_or(0.0),
        );
    }
    let result = json!({
        "destination": dest_name,
        "prefix": prefix,
        "rto_seconds": rto,
        "phases": report.phases,
        "backups": report.backups,
        "checks": report.checks,
    });
    let mut outcome = match &error {
        None => {
            metrics.set(Family::DrillLastRto, &[], rto);
            metrics.set(Family::DrillLastSuccess, &[], crate::util::unix_now());
            Outcome::success(
                format!(
                    "restored {} backup(s) from {dest_name}, {} checks green, RTO {rto:.1} s",
                    report.backups.len(),
                    report.checks.len()
                ),
                result,
            )
        }
        Some(e) => {
            let mut o = Outcome::failure(e.clone(), result);
            o.page = Some(crate::alert::Page {
                alertname: "CloudnxRestoreDrillFailed",
                summary: format!("restore drill failed on {}", ctx.config.host_id),
                description: e.clone(),
            });
            o
        }
    };
    outcome.changed = false;
    outcome.metrics = metrics;
    Ok(outcome)
}

async fn drill(
    cfg: &DrillConfig,
    dest: Arc<dyn Destination>,
    prefix: &str,
    report: &mut Report,
    progress: &Arc<crate::progress::Progress>,
) -> anyhow::Result<()> {
    report.phase = "select";
    let dir = manifest::postgres_dir(prefix);
    let keys: Vec<String> = dest.list(&dir).await?.into_iter().map(|o| o.key).collect();
    let chosen = catalog::newest(&catalog::complete(&dir, &keys), &cfg.databases);
    if chosen
        .iter()
        .all(|c| c.content == manifest::Content::Globals)
    {
        bail!("no complete backup under {dir} on {}", dest.name());
    }
    let mut manifests: Vec<(catalog::Complete, Manifest)> = Vec::new();
    for c in chosen {
        let mkey = c.manifest_key(prefix);
        let mut m = retrieve::read_manifest(dest.as_ref(), &mkey).await?;
        // Row counts and table names travel encrypted (SPEC §10): a key that
        // cannot open them fails the decrypt phase, as the dump would.
        if let Err(e) =
            retrieve::read_details(dest.as_ref(), &mkey, &cfg.decryption_key, &mut m).await
        {
            report.phase = "decrypt";
            return Err(e);
        }
        manifests.push((c, m));
    }
    // The throwaway cluster runs the dumps' major version.
    let major = manifests
        .iter()
        .filter_map(|(_, m)| crate::pg::major_of(&m.server_version))
        .max()
        .context("no server_version in the manifests")?;
    let bin = cfg
        .pg_bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    // Not under state_dir (0700): the cluster's owner must reach its data dir.
    let parent = cfg
        .spool_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    if !cfg.allow_unencrypted_spool {
        check_spool(&parent)?;
    }
    let mut cluster = cluster::Cluster::prepare(&parent, &bin, &cfg.run_as)?;

    // Download and decrypt every object while the throwaway cluster is made
    // and started (initdb and startup take seconds the restore need not wait
    // for). The RTO clock starts before the first byte is downloaded.
    let spool = cluster.spool();
    let start_cluster = async {
        let t = Instant::now();
        cluster
            .start()
            .await
            .context("cluster_start phase (overlapping the download)")?;
        Ok::<_, anyhow::Error>(t.elapsed())
    };
    let fetch = async {
        let mut dumps: Vec<(Manifest, PathBuf)> = Vec::new();
        for (c, m) in &manifests {
            report.phase = "download";
            let key = manifest::object_key(prefix, &c.segment, &c.stamp);
            let plain = spool.join(format!("{}.dump", dumps.len()));
            // Decrypted customer data: readable by the agent only, never
            // written through a planted name.
            let out = crate::fsx::create_new(&plain, 0o600)?;
            progress.phase(
                format!("download and decrypt {}", m.database),
                Some(m.size_bytes),
            );
            let fetched = retrieve::fetch_decrypt(
                dest.as_ref(),
                &key,
                &cfg.decryption_key,
                out,
                &retrieve::Expected::from(m),
                progress,
            )
            .await;
            if let Ok(f) = &fetched {
                report.add_time("download", f.download);
                report.add_time("decrypt", f.decrypt);
            }
            if let Err(
                e @ (retrieve::FetchError::Decrypt { .. }
                | retrieve::FetchError::PlaintextMismatch { .. }),
            ) = &fetched
            {
                report.phase = "decrypt";
                bail!("{e}");
            }
            fetched?;
            crate::fault_point!("drill::after_decrypt");
            let stamp = &c.stamp;
            report.backups.push(json!({"database": m.database, "stamp": stamp, "size_bytes": m.size_bytes, "server_version": m.server_version}));
            dumps.push((m.clone(), plain));
        }
        Ok(dumps)
    };
    let (cluster_t, dumps) = tokio::try_join!(start_cluster, fetch)?;
    report.add_time("cluster_start", cluster_t);

    report.phase = "restore";
    let t = Instant::now();
    let conn = crate::pg::ConnInfo::parse(&cluster.conninfo())?;
    let env = conn.libpq_env(None);
    let has_globals = dumps
        .iter()
        .any(|(m, _)| m.content == manifest::Content::Globals);
    for (m, file) in dumps
        .iter()
        .filter(|(m, _)| m.content == manifest::Content::Globals)
    {
        // Roles that exist already (postgres) fail harmlessly; psql goes on.
        let mut c = tokio::process::Command::new(bin.join("psql"));
        c.args(["-X", "-q", "-d", "postgres", "-f"])
            .arg(file)
            .envs(env.iter().cloned());
        crate::pg::run(c, &format!("restoring the globals of {}", m.host_id)).await?;
    }
    for (m, file) in dumps
        .iter()
        .filter(|(m, _)| m.content == manifest::Content::Database)
    {
        let admin = conn.connect(Some("postgres")).await?;
        if m.database != "postgres" {
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {} TEMPLATE template0",
                    crate::pg::quote_ident(&m.database)
                ))
                .await
                .with_context(|| format!("creating database {}", m.database))?;
        }
        let mut c = tokio::process::Command::new(bin.join("pg_restore"));
        c.arg(format!("--jobs={}", cfg.jobs)).args([
            "--exit-on-error",
            "--no-password",
            "-d",
            &m.database,
        ]);
        if !has_globals {
            c.args(["--no-owner", "--no-acl"]);
        }
        c.arg(file).envs(env.iter().cloned());
        crate::pg::run(c, &format!("pg_restore of {}", m.database)).await?;
    }
    report.add("restore", t);
    crate::fault_point!("drill::after_restore");

    report.phase = "checks";
    let t = Instant::now();
    for (m, _) in dumps
        .iter()
        .filter(|(m, _)| m.content == manifest::Content::Database)
    {
        check_database(cfg, &conn, &bin, m, report).await?;
    }
    report.add("checks", t);
    drop(cluster);
    report.phase = "teardown";
    Ok(())
}

async fn check_database(
    cfg: &DrillConfig,
    conn: &crate::pg::ConnInfo,
    bin: &Path,
    m: &Manifest,
    report: &mut Report,
) -> anyhow::Result<()> {
    let db = &m.database;
    let mut push = |name: &str, ok: bool, detail: String| {
        report.checks.push(Check {
            database: db.clone(),
            name: name.to_owned(),
            ok,
            detail,
        });
    };
    let client = conn.connect(Some(db)).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    if let Some(want) = &m.schema_sha256 {
        let got = crate::pg::schema_sha256(&client).await?;
        push(
            "schema_fingerprint",
            &got == want,
            format!("restored {got}, manifest {want}"),
        );
    }
    // Row counts (inside the snapshot) and pg_amcheck both read every table:
    // run them at the same time. The fingerprint above was taken before
    // pg_amcheck installs its extension.
    let counts = async {
        if m.row_counts.is_none() {
            return Ok(None);
        }
        let got = crate::pg::row_counts(&client).await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, anyhow::Error>(Some(got))
    };
    let amcheck = async {
        let mut c = tokio::process::Command::new(bin.join("pg_amcheck"));
        c.args(["--no-password", "--install-missing", "--database", db])
            .arg(format!("--jobs={}", cfg.jobs.max(1)));
        if cfg.heapallindexed {
            c.arg("--heapallindexed");
        }
        c.envs(conn.libpq_env(Some(db)));
        c.kill_on_drop(true);
        c.output().await.context("running pg_amcheck")
    };
    let (counted, out) = tokio::try_join!(counts, amcheck)?;
    match (&m.row_counts, counted) {
        (Some(want), Some(got)) => {
            let diffs = retrieve::count_differences(want, &got);
            let detail = if diffs.is_empty() {
                format!("{} tables match", want.len())
            } else {
                diffs.join(", ")
            };
            push("row_counts", diffs.is_empty(), detail);
        }
        _ => {
            client.batch_execute("COMMIT").await?;
            push(
                "row_counts",
                true,
                "not counted at backup time (skipped)".into(),
            );
        }
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned()
        + String::from_utf8_lossy(&out.stderr).trim();
    push(
        "pg_amcheck",
        out.status.success(),
        if out.status.success() {
            format!(
                "no corruption found (heap and B-tree structure{})",
                if cfg.heapallindexed {
                    ", every heap tuple indexed"
                } else {
                    "; heapallindexed off"
                }
            )
        } else {
            format!(
                "{}: {}",
                out.status,
                text.chars().take(500).collect::<String>()
            )
        },
    );
    for (i, probe) in cfg.probes.iter().enumerate() {
        let (target, sql) = match probe.split_once(": ") {
            Some((d, sql)) if !d.contains(' ') => (Some(d), sql),
            _ => (None, probe.as_str()),
        };
        if target.is_some_and(|t| t != db) {
            continue;
        }
        let r = client.query_one(sql, &[]).await;
        let (ok, detail) = match r.map(|row| row.try_get::<_, bool>(0)) {
            Ok(Ok(true)) => (true, format!("{sql}: true")),
            Ok(Ok(false)) => (false, format!("{sql}: false")),
            Ok(Err(e)) | Err(e) => (false, format!("{sql}: {e}")),
        };
        push(&format!("probe_{}", i + 1), ok, detail);
    }
    Ok(())
}

/// The spool holds the decrypted dump and the restored database: it must be
/// on dm-crypt or in memory (SPEC §10), unless the operator allowed otherwise.
fn check_spool(parent: &Path) -> anyhow::Result<()> {
    let path = std::fs::canonicalize(parent)
        .with_context(|| format!("resolving the drill's spool directory {}", parent.display()))?;
    let live = crate::jobs::luks::live::Snapshot::read(&crate::jobs::luks::live::Roots::system())
        .context("reading the mounts to check the drill's spool")?;
    match live.storage_of(&path) {
        Some((_, true)) => Ok(()),
        Some((m, false)) => bail!(
            "the drill's spool {} is on {} ({}, mounted at {}), which is neither dm-crypt nor tmpfs: \
             the decrypted dump and the restored database would land on an unencrypted disk; \
             set [restore_drill] spool_dir to a directory on an encrypted volume or a tmpfs, \
             or allow it with [restore_drill] allow_unencrypted_spool = true",
            path.display(),
            if m.source.is_empty() { "an unnamed device" } else { &m.source },
            m.fstype,
            m.mountpoint.display()
        ),
        None => bail!(
            "the drill's spool {}: no mount holds it in /proc/self/mountinfo, so its encryption cannot be shown; \
             set [restore_drill] spool_dir elsewhere or allow it with [restore_drill] allow_unencrypted_spool = true",
            path.display()
        ),
    }
}
