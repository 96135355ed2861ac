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
pub mod select;

use super::backup::manifest::{self, Manifest};
use super::{JobContext, Outcome};
use crate::config::DrillConfig;
use crate::metrics::MetricsUpdate;
use crate::store::{self, Destination};
use anyhow::{bail, Context};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Whether this duty is implemented in this build.
pub const BUILT: bool = true;

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
    let dest = store::open(dest_cfg, 1, &ctx.cancel)
        .with_context(|| format!("opening destination {dest_name}"))?;
    let prefix = cfg
        .source_host_id
        .clone()
        .unwrap_or_else(|| dest_cfg.prefix.clone());

    let mut report = Report::default();
    let started = Instant::now();
    let timeout = std::time::Duration::from_secs(u64::from(cfg.timeout_minutes) * 60);
    let r = tokio::select! {
        r = tokio::time::timeout(timeout, drill(cfg, dest.clone(), &prefix, &mut report)) => match r {
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
            "cloudnx_restore_drill_last_phase_seconds",
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
            metrics.set("cloudnx_restore_drill_last_rto_seconds", &[], rto);
            metrics.set(
                "cloudnx_restore_drill_last_success_timestamp_seconds",
                &[],
                crate::util::unix_now(),
            );
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
            if let Some(url) = &cfg.alertmanager_url {
                if let Err(ae) = page_alertmanager(url, &ctx.config.host_id, e).await {
                    tracing::error!("paging Alertmanager at {url}: {ae:#}");
                }
            }
            Outcome::failure(e.clone(), result)
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
) -> anyhow::Result<()> {
    report.phase = "select";
    let dir = format!(
        "{}postgres/",
        if prefix.trim_matches('/').is_empty() {
            String::new()
        } else {
            format!("{}/", prefix.trim_matches('/'))
        }
    );
    let keys: Vec<String> = dest.list(&dir).await?.into_iter().map(|o| o.key).collect();
    let chosen = select::newest_complete(&dir, &keys, &cfg.databases);
    if chosen.keys().all(|d| d == manifest::GLOBALS) {
        bail!("no complete backup under {dir} on {}", dest.name());
    }
    let mut manifests: Vec<(String, Manifest)> = Vec::new();
    for (db, stamp) in &chosen {
        let mkey = manifest::manifest_key(prefix, db, stamp);
        let m: Manifest = serde_json::from_slice(&dest.get(&mkey, store::MANIFEST_LIMIT).await?)
            .with_context(|| format!("parsing {mkey}"))?;
        manifests.push((stamp.clone(), m));
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
        for (stamp, m) in &manifests {
            // Download and decryption run at once, joined by a pipe: the
            // ciphertext never lands on disk and an offsite download overlaps
            // the decryption. The decrypting side always reads to the end, so
            // the download's size and SHA-256 are checked first and a damaged
            // object is named as such rather than as a decryption error.
            report.phase = "download";
            let t = Instant::now();
            let key = manifest::object_key(prefix, &m.database, stamp);
            let plain = spool.join(format!("{}.dump", dumps.len()));
            let (rx, tx) = pipe().context("creating the download pipe")?;
            let fetch = async {
                let r = dest.fetch(&key, tx).await;
                (r, t.elapsed())
            };
            let ((fetched, download), decrypted) =
                tokio::join!(fetch, decrypt_stream(&cfg.decryption_key, rx, &plain));
            report.add_time("download", download);
            let (size, sha) = fetched?;
            if size != m.size_bytes || sha != m.sha256 {
                bail!("{key}: downloaded {size} bytes with SHA-256 {sha}, the manifest says {} bytes, {}: the object is damaged or was replaced", m.size_bytes, m.sha256);
            }
            report.phase = "decrypt";
            let (n, psha) = decrypted.with_context(|| format!("decrypting {key}"))?;
            // What decryption took beyond the download it overlapped.
            report.add_time("decrypt", t.elapsed().saturating_sub(download));
            crate::fault_point!("drill::after_decrypt");
            if n != m.plaintext_size_bytes || psha != m.plaintext_sha256 {
                bail!(
                    "{key}: decrypted {n} bytes with SHA-256 {psha}, the manifest says {} bytes, {}",
                    m.plaintext_size_bytes,
                    m.plaintext_sha256
                );
            }
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
        run_child(c, &format!("restoring the globals of {}", m.host_id)).await?;
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
        run_child(c, &format!("pg_restore of {}", m.database)).await?;
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
            let diffs = diff_counts(want, &got);
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

/// Differences between the manifest's row counts and the restored ones.
fn diff_counts(want: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>) -> Vec<String> {
    let mut out = Vec::new();
    for (t, n) in want {
        match got.get(t) {
            Some(g) if g == n => {}
            Some(g) => out.push(format!("{t}: restored {g}, manifest {n}")),
            None => out.push(format!("{t}: missing after restore (manifest {n})")),
        }
    }
    for t in got.keys().filter(|t| !want.contains_key(*t)) {
        out.push(format!("{t}: present after restore, not in the manifest"));
    }
    out
}

/// A pipe whose ends are plain files (read end, write end), 1 MiB deep when
/// the kernel allows it. Close-on-exec: a child started meanwhile (initdb,
/// the postmaster) must not inherit the write end, or the reader never sees
/// the end of the download.
fn pipe() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// Decrypt the message arriving on `input` into `to`; (plaintext size,
/// plaintext SHA-256). Reads `input` to its end whatever happens, so the
/// writer always finishes.
async fn decrypt_stream(
    key: &Path,
    input: std::fs::File,
    to: &Path,
) -> anyhow::Result<(u64, String)> {
    let (key, to) = (key.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        struct HashW<W> {
            w: W,
            h: sha2::Sha256,
        }
        impl<W: std::io::Write> std::io::Write for HashW<W> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.w.write(b)?;
                self.h.update(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.w.flush()
            }
        }
        let mut input = std::io::BufReader::with_capacity(1 << 20, input);
        let r = (|| {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&to)?);
            let mut w = HashW {
                w: out,
                h: sha2::Sha256::new(),
            };
            let n = crate::crypto::decrypt(&key, &mut input, &mut w)?;
            std::io::Write::flush(&mut w)?;
            Ok((n, hex::encode(w.h.finalize())))
        })();
        let _ = std::io::copy(&mut input, &mut std::io::sink());
        r
    })
    .await?
}

async fn run_child(mut c: tokio::process::Command, what: &str) -> anyhow::Result<()> {
    c.kill_on_drop(true);
    let out = c
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{what} failed ({}): {}",
            out.status,
            err.trim().chars().take(1000).collect::<String>()
        );
    }
    Ok(())
}

async fn page_alertmanager(url: &str, host_id: &str, error: &str) -> anyhow::Result<()> {
    let body = json!([{
        "labels": {"alertname": "CloudnxRestoreDrillFailed", "severity": "page", "host_id": host_id},
        "annotations": {"summary": format!("restore drill failed on {host_id}"), "description": error},
    }]);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", url.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("HTTP {}", r.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_differences_are_named() {
        let m = |v: &[(&str, i64)]| {
            v.iter()
                .map(|(k, n)| ((*k).to_owned(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(diff_counts(&m(&[("a", 1)]), &m(&[("a", 1)])).is_empty());
        assert_eq!(
            diff_counts(&m(&[("a", 1)]), &m(&[("a", 2)])),
            vec!["a: restored 2, manifest 1"]
        );
        assert_eq!(
            diff_counts(&m(&[("a", 1)]), &m(&[])),
            vec!["a: missing after restore (manifest 1)"]
        );
        assert_eq!(
            diff_counts(&m(&[]), &m(&[("b", 0)])),
            vec!["b: present after restore, not in the manifest"]
        );
    }
}
