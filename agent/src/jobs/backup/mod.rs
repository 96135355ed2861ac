//! The `backup` duty (SPEC §1, §4): per database, one `pg_dump --format=custom`
//! inside an exported snapshot, streamed once through encryption to every
//! destination at once, confirmed by size, then the manifest, then retention.
//! The cluster's globals are a backup object of their own ([`manifest::GLOBALS`]).
//!
//! Owns: the order of a backup (snapshot → fingerprint and counts → dump →
//! confirm → manifest → retention) and what the outcome says per database and
//! destination. Must never: write a manifest for an object whose size was not
//! confirmed, let one destination's failure stop the others, delete anything
//! retention did not decide, or write metrics/audit/events except through the
//! outcome and `ctx.audit`.

pub mod manifest;
pub mod retention;
pub mod stream;

use crate::config::BackupConfig;
use crate::crypto::Recipients;
use crate::jobs::context::{JobContext, Outcome};
use crate::metrics::{Family, MetricsUpdate};
use crate::pg::{self, ConnInfo, ServerVersion};
use crate::store::{Cause, Deleted, Destination, Reservation};
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use manifest::{Content, Manifest};
use retention::{Found, Verdict};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The result of one database on one destination.
struct DestResult {
    name: String,
    key: String,
    error: Option<String>,
}

/// The result of one database.
struct DbResult {
    database: String,
    /// Its directory segment on every destination.
    segment: String,
    stamp: String,
    seconds: f64,
    manifest: Option<Manifest>,
    dests: Vec<DestResult>,
    error: Option<String>,
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let cfg = ctx
        .config
        .backup
        .as_ref()
        .context("the [backup] section is absent")?;
    let conn = ConnInfo::parse(&cfg.connection).context("[backup] connection")?;
    let recipients = load_recipients(&cfg.encrypt_to).await?;
    let (dests, prefixes) =
        open_destinations(ctx, &cfg.destinations, cfg.max_in_flight_parts as usize)?;

    let admin = conn.connect(None).await?;
    let version = pg::server_version(&admin).await?;
    // The server's databases, listed on every run: a database is retired only
    // on a listing that succeeded (an unreachable server stops here).
    let listed = pg::list_databases(&admin).await?;
    let databases = select_databases(ctx, cfg, &listed);
    drop(admin);
    let bin_dir = pg::bin_dir(cfg.pg_bin_dir.as_deref(), version.major);
    let pg_dump = pg::program(bin_dir.as_deref(), "pg_dump");
    let dump_version = pg::program_version(&pg_dump).await?;
    if pg::major_of(&dump_version).unwrap_or(0) < version.major {
        bail!(
            "{} is version {dump_version}, older than the server ({}); install postgresql-client-{} or set [backup] pg_bin_dir",
            pg_dump.display(),
            version.text,
            version.major
        );
    }

    let writer = writer_id(&ctx.config.state_dir)?;
    let env = Env {
        ctx,
        cfg,
        conn: &conn,
        recipients: &recipients,
        dests: &dests,
        prefixes: &prefixes,
        version: &version,
        bin_dir: bin_dir.as_deref(),
        dump_version: &dump_version,
        writer: &writer,
        foreign: std::sync::Mutex::default(),
        holding: false,
    };
    let mut results = Vec::new();
    if cfg.globals && ctx.params.databases.is_empty() {
        results.push(env.backup_one(manifest::GLOBALS, Content::Globals).await);
    }
    // `parallel` databases at once, each through its own stream; results stay
    // in the order of the databases, so manifests, retention, metrics and
    // audit records come out in the same order whatever finished first.
    let parallel = cfg.parallel();
    ctx.progress.phase(
        format!(
            "dumping {} database(s), {parallel} at a time",
            databases.len()
        ),
        None,
    );
    let env_ref = &env;
    let dumped: Vec<Option<DbResult>> = futures_util::stream::iter(databases.iter().cloned())
        .map(move |db: String| async move {
            // Not started once the job is cancelled: nothing to clean up.
            if env_ref.ctx.cancel.is_cancelled() {
                None
            } else {
                Some(env_ref.backup_one(&db, Content::Database).await)
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    results.extend(dumped.into_iter().flatten());

    crate::fault_point!("backup::before_retention");
    // Retention and clean-up, per database and destination.
    let mut metrics = MetricsUpdate::default();
    key_metrics(&recipients, &mut metrics);
    let mut retention_log = Vec::new();
    let mut failures = Vec::new();
    // Destinations whose retention failed this run: not asked again below.
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let now = chrono::Utc::now();
    // A legal hold (or a hold file that cannot be read) stops every deletion;
    // the decisions are still made and reported as held.
    let hold = crate::hold::current(&ctx.config.state_dir);
    let holding = !matches!(hold, Ok(None));
    metrics.set(Family::LegalHold, &[], if holding { 1.0 } else { 0.0 });
    if !holding {
        // Released: the Object Lock legal holds the agent set come off first,
        // so what retention decides below can be deleted.
        for dest in &dests {
            match crate::jobs::object_holds::lift(dest.as_ref(), &ctx.config.state_dir).await {
                Ok(keys) if keys.is_empty() => {}
                Ok(keys) => {
                    let detail = json!({"destination": dest.name(), "keys": keys, "reason": "legal hold released"});
                    ctx.audit("backup.legal_hold.off", detail.clone())
                        .await
                        .context("auditing lifted legal holds")?;
                    retention_log.push(detail);
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    let env = Env { holding, ..env };
    for r in &results {
        for d in &r.dests {
            let Some(dest) = dests.iter().find(|x| x.name() == d.name) else {
                continue;
            };
            let succeeded = d.error.is_none() && r.error.is_none();
            if succeeded {
                metrics.set(
                    Family::BackupLastSuccess,
                    &[("database", &r.database), ("destination", &d.name)],
                    crate::util::unix_now(),
                );
            }
            match env.prune(dest.as_ref(), r, succeeded, now).await {
                Ok((retained, log)) => {
                    metrics.set(
                        Family::BackupRetained,
                        &[("database", &r.database), ("destination", &d.name)],
                        retained as f64,
                    );
                    retention_log.extend(log);
                }
                Err(e) => {
                    broken.insert(d.name.clone());
                    failures.push(format!("retention of {} on {}: {e:#}", r.database, d.name))
                }
            }
        }
        if let Some(m) = &r.manifest {
            if r.dests.iter().any(|d| d.error.is_none()) {
                metrics.set(
                    Family::BackupLastSize,
                    &[("database", &r.database)],
                    m.size_bytes as f64,
                );
            }
        }
        metrics.set(
            Family::BackupLastDuration,
            &[("database", &r.database)],
            r.seconds,
        );
    }

    // Retired databases: backups under this host's prefix of a database the
    // server's listing no longer selects. Judged only on a full run (a run
    // for named databases selects nothing else).
    if ctx.params.databases.is_empty() && !ctx.cancel.is_cancelled() {
        let live: BTreeSet<String> = databases
            .iter()
            .cloned()
            .chain(cfg.globals.then(|| manifest::GLOBALS.to_owned()))
            .collect();
        metrics.clear.push(Family::BackupRetired);
        for f in [
            Family::BackupLastSuccess,
            Family::BackupLastSize,
            Family::BackupRetained,
            Family::BackupLastDuration,
        ] {
            metrics.keep_only(f, "database", live.clone());
        }
        for dest in dests.iter().filter(|d| !broken.contains(d.name())) {
            match env.retire(dest.as_ref(), &live, now).await {
                Ok((kept, log)) => {
                    for (db, n) in kept.iter().filter(|(_, n)| **n > 0) {
                        metrics.set(
                            Family::BackupRetired,
                            &[("database", db), ("destination", dest.name())],
                            *n as f64,
                        );
                    }
                    retention_log.extend(log);
                }
                Err(e) => failures.push(format!("retired databases on {}: {e:#}", dest.name())),
            }
        }
    }

    // A second agent under this host's prefix (a copied configuration, a
    // cloned VM): both keep working, but the operator must know.
    let foreign = env
        .foreign
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for d in &cfg.destinations {
        metrics.set(
            Family::BackupSharedPrefix,
            &[("destination", d)],
            if foreign.contains_key(d) { 1.0 } else { 0.0 },
        );
    }
    if !foreign.is_empty() {
        let data = json!({"writer": env.writer, "other_writers": foreign});
        tracing::warn!("another agent writes backups under this host's prefix: {foreign:?}");
        if let Err(e) = ctx
            .event(
                "backup.shared_prefix",
                crate::outbox::Severity::Warning,
                data,
            )
            .await
        {
            tracing::error!("queueing the backup.shared_prefix event: {e:#}");
        }
    }
    let mut errors: Vec<String> = Vec::new();
    for r in &results {
        if let Some(e) = &r.error {
            errors.push(format!("{}: {e}", r.database));
        }
        for d in &r.dests {
            if let Some(e) = &d.error {
                errors.push(format!("{} to {}: {e}", r.database, d.name));
            }
        }
    }
    errors.extend(failures);
    if ctx.cancel.is_cancelled() {
        errors.push("cancelled before every database was backed up".into());
    }
    let held = retention_log
        .iter()
        .filter(|d| d["result"] == "held")
        .count();
    let result = json!({
        "databases": results.iter().map(|r| json!({
            "database": r.database,
            "stamp": r.stamp,
            "duration_seconds": r.seconds,
            "error": r.error,
            "size_bytes": r.manifest.as_ref().map(|m| m.size_bytes),
            "plaintext_size_bytes": r.manifest.as_ref().map(|m| m.plaintext_size_bytes),
            "sha256": r.manifest.as_ref().map(|m| m.sha256.clone()),
            "destinations": r.dests.iter().map(|d| json!({
                "destination": d.name,
                "key": d.key,
                "ok": d.error.is_none() && r.error.is_none(),
                "error": d.error,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "legal_hold": match &hold {
            Ok(h) => json!(h),
            Err(e) => json!({"reason": format!("the hold file cannot be read, so retention holds: {e:#}")}),
        },
        "retention": retention_log,
        "writer": env.writer,
        "other_writers": foreign,
    });
    let ok_count = results
        .iter()
        .filter(|r| r.error.is_none() && r.dests.iter().all(|d| d.error.is_none()))
        .count();
    let mut outcome = if errors.is_empty() {
        Outcome::success(
            format!(
                "backed up {} object(s) to {}{}",
                results.len(),
                cfg.destinations.join(", "),
                if holding {
                    format!("; legal hold: {held} retention deletion(s) held")
                } else {
                    String::new()
                }
            ),
            result,
        )
    } else {
        let mut o = Outcome::failure(errors.join("; "), result);
        o.changed = ok_count > 0 || results.iter().any(|r| r.manifest.is_some());
        o
    };
    outcome.metrics = metrics;
    Ok(outcome)
}

/// The public keys every backup is encrypted to (read off the async runtime).
pub async fn load_recipients(keys: &[std::path::PathBuf]) -> anyhow::Result<Arc<Recipients>> {
    let keys = keys.to_vec();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || Recipients::load(&keys)).await??,
    ))
}

/// Destination name → its key prefix.
pub type Prefixes = BTreeMap<String, String>;

/// The named destinations, opened for this job, and their prefixes by name.
pub fn open_destinations(
    ctx: &JobContext,
    names: &[String],
    in_flight: usize,
) -> anyhow::Result<(Vec<Arc<dyn Destination>>, Prefixes)> {
    let mut dests = Vec::new();
    let mut prefixes = BTreeMap::new();
    for name in names {
        let d = ctx
            .config
            .destination(name)
            .with_context(|| format!("destination {name:?} is not defined"))?;
        dests.push(
            d.open(in_flight, &ctx.cancel)
                .with_context(|| format!("opening destination {name}"))?,
        );
        prefixes.insert(name.clone(), d.prefix.clone());
    }
    Ok((dests, prefixes))
}

/// When each recipient key was made and when it expires (SPEC §10), written
/// by every backup run, which reads the keys anyway; a key no longer
/// configured loses its series. The audit key's (`audit:<kid>`) are not ours.
fn key_metrics(recipients: &Recipients, metrics: &mut MetricsUpdate) {
    let (mut made, mut expiring) = (BTreeSet::new(), BTreeSet::new());
    for d in recipients.dates() {
        let key = format!("openpgp:{}", d.fingerprint);
        metrics.set(Family::KeyCreated, &[("key", &key)], d.created as f64);
        if let Some(e) = d.expires {
            metrics.set(Family::KeyExpiry, &[("key", &key)], e as f64);
            expiring.insert(key.clone());
        }
        made.insert(key);
    }
    metrics.keep_scoped(Family::KeyCreated, "key", "openpgp:", made);
    metrics.keep_scoped(Family::KeyExpiry, "key", "openpgp:", expiring);
}

fn select_databases(ctx: &JobContext, cfg: &BackupConfig, listed: &[String]) -> Vec<String> {
    // Any name PostgreSQL accepts is stored under its encoded segment.
    if !ctx.params.databases.is_empty() {
        ctx.params.databases.clone()
    } else if !cfg.databases.is_empty() {
        cfg.databases.clone()
    } else {
        listed
            .iter()
            .filter(|d| !cfg.exclude_databases.contains(*d))
            .cloned()
            .collect()
    }
}

struct Env<'a> {
    ctx: &'a JobContext,
    cfg: &'a BackupConfig,
    conn: &'a ConnInfo,
    recipients: &'a Arc<Recipients>,
    dests: &'a [Arc<dyn Destination>],
    prefixes: &'a BTreeMap<String, String>,
    version: &'a ServerVersion,
    bin_dir: Option<&'a Path>,
    dump_version: &'a str,
    /// This agent instance's id (see [`writer_id`]).
    writer: &'a str,
    /// Other writers met under this host's prefix, per destination.
    foreign: std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// A legal hold is in force: retention decides but deletes nothing.
    holding: bool,
}

/// This agent instance's id, created once in `state_dir/writer-id`: it marks
/// every stamp the agent reserves and every manifest it writes, so another
/// agent writing under the same prefix (a copied configuration) is noticed.
pub fn writer_id(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("writer-id");
    match crate::fsx::open_read(&path) {
        Ok(f) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 64), &mut s)
                .with_context(|| format!("reading {}", path.display()))?;
            let id = s.trim().to_owned();
            anyhow::ensure!(
                !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{} does not hold a writer id; remove it to have a new one made",
                path.display()
            );
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::fsx::ensure_private_dir(state_dir)?;
            let id = crate::util::new_id()[..16].to_owned();
            // Two processes starting at once: one creates it, both read it.
            match crate::fsx::create_new(&path, 0o600) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, id.as_bytes())
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    Ok(id)
                }
                Err(_) => writer_id(state_dir),
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `{prefix}/postgres/{segment}/{stamp}/`.
fn stamp_dir(prefix: &str, segment: &str, stamp: &str) -> String {
    format!("{}{stamp}/", manifest::database_dir(prefix, segment))
}

/// The writer id in a stamp's marker (`{id} {job}`).
fn writer_of(marker: &str) -> &str {
    marker.split_whitespace().next().unwrap_or("")
}

/// Give back a stamp reserved for nothing (its marker, its empty
/// directory) — only when its object is known to be absent: a failed HEAD
/// (often the very fault that failed the run) may hide a complete object,
/// which must stay marked as ours so the next run cleans it. Shared by
/// database and VM backups.
pub async fn release_unwritten(d: &dyn Destination, dir: &str, key: &str) {
    if matches!(d.size(key).await, Ok(None)) {
        if let Err(e) = d.release(dir).await {
            tracing::warn!(destination = d.name(), "releasing {dir}: {e}");
        }
    }
}

/// How long an incomplete backup of another writer (or of no known writer)
/// is left alone: it may be an upload in flight.
const FOREIGN_GRACE_HOURS: i64 = 24;

impl Env<'_> {
    fn note_foreign(&self, dest: &str, writer: &str) {
        if writer_of(writer) != self.writer && !writer.is_empty() {
            self.foreign
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(dest.to_owned())
                .or_default()
                .insert(writer_of(writer).to_owned());
        }
    }
    fn prefix(&self, dest: &str) -> &str {
        self.prefixes.get(dest).map_or("", String::as_str)
    }

    async fn backup_one(&self, database: &str, content: Content) -> DbResult {
        let clock = std::time::Instant::now();
        let segment = manifest::segment(database, content);
        let (started, stamp, unreserved, reserved) = self.reserve_stamp(&segment).await;
        let dests: Vec<DestResult> = self
            .dests
            .iter()
            .map(|d| DestResult {
                name: d.name().to_owned(),
                key: manifest::object_key(self.prefix(d.name()), &segment, &stamp),
                // Not written where the stamp could not be reserved: an
                // object without our marker would look like another
                // writer's upload and outlive its failure by a day.
                error: unreserved.get(d.name()).cloned(),
            })
            .collect();
        let mut r = DbResult {
            database: database.to_owned(),
            segment,
            stamp,
            seconds: 0.0,
            manifest: None,
            dests,
            error: None,
        };
        let dumped = match reserved {
            Ok(()) => self.dump(&mut r, content, started).await,
            Err(e) => Err(e),
        };
        if let Err(e) = dumped {
            r.error = Some(format!("{e:#}"));
        }
        // A stamp reserved for nothing goes again wherever no backup was
        // written (an empty directory left by a failed or cancelled run
        // looked like a backup in progress).
        for (d, res) in self.dests.iter().zip(&r.dests) {
            if r.error.is_none() && res.error.is_none() {
                continue;
            }
            let dir = stamp_dir(self.prefix(d.name()), &r.segment, &r.stamp);
            release_unwritten(d.as_ref(), &dir, &res.key).await;
        }
        r.seconds = clock.elapsed().as_secs_f64();
        match &r.error {
            None => tracing::info!(database, "backed up"),
            Some(e) => tracing::error!(database, "backup failed: {e}"),
        }
        r
    }

    /// A start time whose stamp this run has reserved on every destination
    /// for `segment` ([`Destination::reserve`]: atomic, so two runs — two
    /// agents on one prefix — never write into one stamp, and a clock set
    /// back onto an old stamp never writes under an existing backup's
    /// manifest). A taken stamp waits for the next second; another agent's
    /// marker is noted. A destination where reserving failed is returned
    /// with its error: nothing is written there this run.
    async fn reserve_stamp(
        &self,
        segment: &str,
    ) -> (
        chrono::DateTime<chrono::Utc>,
        String,
        BTreeMap<String, String>,
        anyhow::Result<()>,
    ) {
        let marker = format!("{} {}", self.writer, self.ctx.id);
        let mut tries = 0;
        loop {
            let started = chrono::Utc::now();
            let stamp = retention::stamp(started);
            let mut ours: Vec<&Arc<dyn Destination>> = Vec::new();
            let mut taken = None;
            let mut failed = BTreeMap::new();
            for d in self.dests {
                let dir = stamp_dir(self.prefix(d.name()), segment, &stamp);
                match d.reserve(&dir, &marker).await {
                    Ok(Reservation::Ours) => ours.push(d),
                    Ok(Reservation::Taken { writer }) => {
                        if let Some(w) = &writer {
                            self.note_foreign(d.name(), w);
                        }
                        taken = Some((d.name().to_owned(), writer));
                        break;
                    }
                    Err(e) if e.is_cancelled() => {
                        return (started, stamp, failed, Err(anyhow::anyhow!("{e}")));
                    }
                    Err(e) => {
                        tracing::warn!(destination = d.name(), "{e}");
                        failed.insert(d.name().to_owned(), format!("reserving stamp {dir}: {e}"));
                    }
                }
            }
            let Some((dest, writer)) = taken else {
                return (started, stamp, failed, Ok(()));
            };
            for d in ours {
                let _ = d
                    .release(&stamp_dir(self.prefix(d.name()), segment, &stamp))
                    .await;
            }
            tries += 1;
            if tries >= 120 {
                let e = anyhow::anyhow!(
                    "no free stamp for {segment} on {dest} in {tries} seconds (the last, {stamp}, is held by {})",
                    writer.as_deref().unwrap_or("another run")
                );
                return (started, stamp, failed, Err(e));
            }
            let ms = 1000 - u64::from(chrono::Utc::now().timestamp_subsec_millis().min(999));
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    async fn dump(
        &self,
        r: &mut DbResult,
        content: Content,
        started: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let db = r.database.clone();
        let count_rows = self.cfg.row_counts && !self.cfg.skip_row_counts.contains(&db);
        let (snapshot, cmd, pg_dump_version) = match content {
            Content::Database => {
                let client = self.conn.connect(Some(&db)).await?;
                let snap = pg::Snapshot::export(client).await?;
                let mut cmd = std::process::Command::new(pg::program(self.bin_dir, "pg_dump"));
                cmd.arg("--format=custom")
                    .arg(format!("--compress={}", self.cfg.compression_level))
                    .arg(format!("--snapshot={}", snap.id))
                    .arg("--no-password");
                cmd.envs(self.conn.libpq_env(Some(&db)));
                (Some(snap), cmd, self.dump_version.to_owned())
            }
            Content::Globals => {
                let prog = pg::program(self.bin_dir, "pg_dumpall");
                let v = pg::program_version(&prog).await?;
                let mut cmd = std::process::Command::new(prog);
                cmd.arg("--globals-only").arg("--no-password");
                cmd.envs(self.conn.libpq_env(None));
                (None, cmd, v)
            }
        };
        // The schema fingerprint and the row counts are taken beside the
        // dump, in the session that exported its snapshot (so exactly what
        // pg_dump sees, rows written since included in neither), on a core
        // the dump's compression leaves free. A failed count fails the
        // database (no manifest) once the dump has ended: a server restart
        // fails both, and then pg_dump's own words say why.
        let facts = async {
            let Some(snap) = &snapshot else {
                return Ok((None, None));
            };
            async {
                let schema = pg::schema_sha256(snap.client()).await?;
                // Fault tests make the counting fail here (FAILPOINTS=backup::row_counts=return).
                #[cfg(feature = "failpoints")]
                crate::util::fault_point_reached("backup::row_counts");
                fail::fail_point!("backup::row_counts", |_| Err(anyhow::anyhow!(
                    "fail point backup::row_counts"
                )));
                let counts = if count_rows {
                    // One process counts: parallel workers would take the
                    // cores pg_dump compresses on, and the counts only need
                    // to be done by the time the dump is.
                    snap.client()
                        .batch_execute("SET LOCAL max_parallel_workers_per_gather = 0")
                        .await
                        .context("counting rows without parallel workers")?;
                    Some(pg::row_counts(snap.client()).await?)
                } else {
                    None
                };
                Ok::<_, anyhow::Error>((Some(schema), counts))
            }
            .await
        };

        // Only where the stamp is ours (see `reserve_stamp`).
        let live: Vec<usize> = (0..r.dests.len())
            .filter(|&i| r.dests[i].error.is_none())
            .collect();
        anyhow::ensure!(
            !live.is_empty(),
            "no destination could reserve stamp {}: {}",
            r.stamp,
            r.dests
                .iter()
                .filter_map(|d| d.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let targets: Vec<(Arc<dyn Destination>, String)> = live
            .iter()
            .map(|&i| (self.dests[i].clone(), r.dests[i].key.clone()))
            .collect();
        let base = u64::from(self.cfg.part_size_mib) << 20;
        let what = format!("database {db}");
        let (fanned, facts) = tokio::join!(
            stream::fan_out(
                stream::Source::Program(cmd),
                &what,
                self.recipients.clone(),
                &targets,
                base,
                &self.ctx.cancel,
                &self.ctx.progress,
            ),
            facts
        );
        if let Some(s) = snapshot {
            if let Err(e) = s.finish().await {
                tracing::warn!(database = %db, "{e:#}");
            }
        }
        for (&i, e) in live.iter().zip(fanned.upload_errors()) {
            if e.is_some() {
                r.dests[i].error = e;
            }
        }
        let stream::FannedOut { streamed, uploaded } = fanned;
        let facts = facts.with_context(|| {
            format!("taking the schema fingerprint and row counts of {db} in the dump's snapshot; no manifest written")
        });
        let streamed = streamed?;
        let (schema_sha256, row_counts) = facts?;
        crate::fault_point!("backup::before_manifest");
        let audit_head = self.ctx.audit_head().await?;
        let finished = chrono::Utc::now();
        // Table names and row counts go off the host only encrypted, to the
        // dump's recipients, beside the manifest (SPEC §10).
        let details = match &row_counts {
            Some(_) => {
                let plain = serde_json::to_vec(&manifest::Details {
                    row_counts: row_counts.clone(),
                })?;
                let recipients = self.recipients.clone();
                let sealed = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    recipients.encrypt(&mut &plain[..], &mut out).map(|()| out)
                })
                .await?
                .context("encrypting the manifest details")?;
                Some(Bytes::from(sealed))
            }
            None => None,
        };
        let m = Manifest {
            format: manifest::FORMAT.into(),
            host_id: self.ctx.config.host_id.clone(),
            database: db.clone(),
            content,
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            server_version: self.version.text.clone(),
            pg_dump_version,
            object: manifest::object_name(&r.segment),
            size_bytes: streamed.size,
            sha256: streamed.sha256,
            plaintext_size_bytes: streamed.plaintext_size,
            plaintext_sha256: streamed.plaintext_sha256,
            recipients: self.recipients.fingerprints(),
            schema_sha256,
            row_counts: None,
            details_sha256: details.as_ref().map(|d| {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(d))
            }),
            row_counts_skipped: content == Content::Database && !count_rows,
            compression_level: (content == Content::Database).then_some(self.cfg.compression_level),
            writer: Some(self.writer.to_owned()),
            audit_head,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&m)?);
        for (&i, up) in live.iter().zip(uploaded) {
            let (d, res) = (&self.dests[i], &mut r.dests[i]);
            let confirmed = async {
                let n = up?;
                let seen = d
                    .size(&res.key)
                    .await
                    .context("confirming the object size")?;
                if seen != Some(m.size_bytes) || n != m.size_bytes {
                    bail!(
                        "the stored object has {seen:?} bytes, {} were written; not writing the manifest",
                        m.size_bytes
                    );
                }
                let mkey = manifest::manifest_key(self.prefix(d.name()), &r.segment, &r.stamp);
                // The stamp must still be ours (a server that ignored the
                // conditional write may have let another run take it), and a
                // manifest is never written over another run's.
                let dir = stamp_dir(self.prefix(d.name()), &r.segment, &r.stamp);
                let marker = d.writer(&dir).await.context("reading the stamp's writer")?;
                if marker.as_deref().map(writer_of) != Some(self.writer) {
                    bail!(
                        "another writer ({}) holds stamp {} now; not writing the manifest",
                        marker.unwrap_or_default(),
                        r.stamp
                    );
                }
                if let Some(details) = &details {
                    let dkey = manifest::details_key(self.prefix(d.name()), &r.segment, &r.stamp);
                    d.put(&dkey, details.clone())
                        .await
                        .context("writing the encrypted manifest details")?;
                }
                d.put_new(&mkey, body.clone())
                    .await
                    .context("writing the manifest")
            }
            .await;
            if let Err(e) = confirmed {
                res.error = Some(format!("{e:#}"));
            }
        }
        r.manifest = Some(m);
        Ok(())
    }

    /// Clean incomplete leftovers and (when this run's backup succeeded there)
    /// prune expired backups; returns how many complete backups remain.
    async fn prune(
        &self,
        dest: &dyn Destination,
        r: &DbResult,
        succeeded: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<(usize, Vec<serde_json::Value>)> {
        let (database, current) = (r.database.as_str(), r.stamp.as_str());
        let dir = manifest::database_dir(self.prefix(dest.name()), &r.segment);
        let mut log = Vec::new();
        let objects = dest.list(&dir).await?;
        let mut stamps: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
        for o in objects {
            let Some(rest) = o.key.strip_prefix(&dir) else {
                continue;
            };
            let Some((stamp, file)) = rest.split_once('/') else {
                continue;
            };
            let e = stamps.entry(stamp.to_owned()).or_default();
            if file == manifest::MANIFEST {
                e.0 = true;
            }
            e.1.push(o.key.clone());
        }
        // Whose is each incomplete backup? Ours (a killed or failed run of
        // this agent: clean it now), or another writer's — an upload in
        // flight of a second agent on this prefix, or of an older version:
        // left alone for a day.
        let grace = now - chrono::Duration::hours(FOREIGN_GRACE_HOURS);
        let mut ours: BTreeSet<String> = BTreeSet::new();
        for (stamp, (complete, _)) in &stamps {
            if *complete || stamp == current {
                continue;
            }
            if let Ok(Some(w)) = dest.writer(&format!("{dir}{stamp}/")).await {
                if writer_of(&w) == self.writer {
                    ours.insert(stamp.clone());
                } else {
                    self.note_foreign(dest.name(), &w);
                }
            }
        }
        let old = |stamp: &str| retention::parse_stamp(stamp).is_some_and(|t| t < grace);
        let stamp_of = |key: &str| {
            key.strip_prefix(&dir)
                .and_then(|r| r.split_once('/'))
                .map(|(s, _)| s.to_owned())
                .unwrap_or_default()
        };
        // Multipart uploads a killed run left open cost storage and are
        // invisible to listing: abort them (this run's own are finished),
        // never another writer's live one.
        let may_abort = |key: &str| {
            let s = stamp_of(key);
            s != current && (ours.contains(&s) || old(&s))
        };
        let stale = match dest.abort_stale_uploads(&dir, &may_abort).await {
            // Under a legal hold nothing is deleted, unfinished uploads included.
            _ if self.holding => Vec::new(),
            Ok(keys) => keys,
            // Some S3-compatible servers do not implement ListMultipartUploads
            // (501). The clean-up is housekeeping: it must not fail a backup
            // that succeeded. Say so, so the operator can set a bucket
            // lifecycle rule (AbortIncompleteMultipartUpload) instead.
            Err(e) if matches!(e.cause(), Cause::Unsupported { .. }) => {
                tracing::warn!(
                    destination = dest.name(),
                    "this S3 server does not list unfinished multipart uploads ({e}); uploads a killed run left open are not aborted here: add a lifecycle rule AbortIncompleteMultipartUpload to the bucket"
                );
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for key in stale {
            let detail = json!({
                "destination": dest.name(), "database": database, "key": key,
                "reason": "unfinished upload", "result": "aborted",
            });
            self.ctx
                .audit("backup.upload.abort", detail.clone())
                .await
                .context("auditing an aborted upload")?;
            log.push(detail);
        }
        let found: Vec<Found> = stamps
            .iter()
            .map(|(s, (complete, _))| Found {
                stamp: s.clone(),
                complete: *complete,
            })
            .collect();
        // The current backup counts as complete only if it is; a failed one is
        // cleaned on the next run, not now (it might still be inspected).
        let verdicts = retention::plan(
            &found,
            now,
            self.cfg.retention_days,
            self.cfg.keep_min,
            Some(current),
        );
        let mut retained: BTreeSet<String> = stamps
            .iter()
            .filter(|(_, (c, _))| *c)
            .map(|(s, _)| s.clone())
            .collect();
        for (f, v) in found.iter().zip(verdicts) {
            let expired = v == Verdict::DeleteExpired;
            let clean = v == Verdict::CleanIncomplete && (ours.contains(&f.stamp) || old(&f.stamp));
            if !(clean || (expired && succeeded)) {
                continue;
            }
            if self.holding {
                log.push(json!({
                    "destination": dest.name(), "database": database, "stamp": f.stamp,
                    "reason": if expired { "expired" } else { "incomplete" }, "result": "held",
                }));
                continue;
            }
            let keys = &stamps[&f.stamp].1;
            // Manifest first (the mirror of writing it last): a run killed
            // between two deletes leaves an incomplete leftover, never a
            // manifest without its object. A locked manifest stops the rest;
            // its object, locked no later than the manifest, is refused too.
            let ordered = retention::deletion_order(keys, manifest::MANIFEST);
            let mut locked = false;
            for key in ordered {
                if locked {
                    break;
                }
                crate::fault_point!("backup::retention_delete");
                let r = dest.delete(key).await?;
                let reason = if expired { "expired" } else { "incomplete" };
                let detail = json!({
                    "destination": dest.name(), "database": database, "stamp": f.stamp,
                    "key": key, "reason": reason, "result": format!("{r:?}").to_lowercase(),
                });
                if r == Deleted::Locked {
                    locked = true;
                    tracing::info!(destination = dest.name(), key, "kept: under object lock");
                } else if r == Deleted::Deleted {
                    self.ctx
                        .audit("backup.retention.delete", detail.clone())
                        .await
                        .context("auditing a retention deletion")?;
                }
                log.push(detail);
            }
            if !locked {
                retained.remove(&f.stamp);
            }
        }
        if self.holding {
            // Every complete backup kept, this run's included.
            let keys: Vec<String> = retained
                .iter()
                .flat_map(|s| stamps[s].1.iter().cloned())
                .collect();
            log.extend(self.hold_objects(dest, database, &keys).await?);
        }
        Ok((retained.len(), log))
    }

    /// Retired databases on one destination: every database directory under
    /// this host's prefix whose database is not `live`. Its backups are kept
    /// `retention_days` after its newest one, then all deleted (no keep
    /// floor), manifest first, each audited. Returns the complete backups
    /// still kept per retired database.
    async fn retire(
        &self,
        dest: &dyn Destination,
        live: &BTreeSet<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<(BTreeMap<String, usize>, Vec<serde_json::Value>)> {
        let root = manifest::postgres_dir(self.prefix(dest.name()));
        // segment → stamp → (complete, keys)
        let mut found: BTreeMap<String, BTreeMap<String, (bool, Vec<String>)>> = BTreeMap::new();
        for o in dest.list(&root).await? {
            let Some(rest) = o.key.strip_prefix(&root) else {
                continue;
            };
            let mut parts = rest.splitn(3, '/');
            let (Some(seg), Some(stamp), Some(file)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let e = found
                .entry(seg.to_owned())
                .or_default()
                .entry(stamp.to_owned())
                .or_default();
            e.0 |= file == manifest::MANIFEST;
            e.1.push(o.key.clone());
        }
        let mut kept = BTreeMap::new();
        let mut log = Vec::new();
        let days = i64::from(self.cfg.retention_days);
        for (seg, stamps) in found {
            let Some((database, Content::Database)) = manifest::parse_segment(&seg) else {
                continue;
            };
            if live.contains(&database) {
                continue;
            }
            let newest = stamps
                .iter()
                .filter(|(_, (complete, _))| *complete)
                .filter_map(|(s, _)| retention::parse_stamp(s))
                .max();
            let complete = stamps.values().filter(|(c, _)| *c).count();
            // Written by another agent under this prefix (a shared prefix is
            // reported, never acted on): its databases are not ours to retire.
            if let Some(t) = newest {
                let dir = stamp_dir(self.prefix(dest.name()), &seg, &retention::stamp(t));
                if let Ok(Some(w)) = dest.writer(&dir).await {
                    if writer_of(&w) != self.writer {
                        self.note_foreign(dest.name(), &w);
                        continue;
                    }
                }
            }
            let expired = newest.is_some_and(|t| t + chrono::Duration::days(days) < now);
            if !expired {
                kept.insert(database, complete);
                continue;
            }
            if self.holding {
                log.push(json!({"destination": dest.name(), "database": database,
                                "reason": "retired", "result": "held", "backups": complete}));
                kept.insert(database, complete);
                continue;
            }
            let mut left = 0;
            for (stamp, (complete, keys)) in &stamps {
                if retention::parse_stamp(stamp).is_none() {
                    continue;
                }
                let mut ordered: Vec<&String> = keys
                    .iter()
                    .filter(|k| k.ends_with(manifest::MANIFEST))
                    .collect();
                ordered.extend(keys.iter().filter(|k| !k.ends_with(manifest::MANIFEST)));
                let mut locked = false;
                for key in ordered {
                    crate::fault_point!("backup::retention_delete");
                    let r = dest.delete(key).await?;
                    let detail = json!({
                        "destination": dest.name(), "database": database, "stamp": stamp,
                        "key": key, "reason": "retired", "result": format!("{r:?}").to_lowercase(),
                    });
                    if r == Deleted::Locked {
                        locked = true;
                        log.push(detail);
                        break;
                    }
                    if r == Deleted::Deleted {
                        self.ctx
                            .audit("backup.retention.delete", detail.clone())
                            .await
                            .context("auditing a retention deletion")?;
                    }
                    log.push(detail);
                }
                if locked && *complete {
                    left += 1;
                }
            }
            kept.insert(database, left);
        }
        Ok((kept, log))
    }

    /// Under a legal hold: an Object Lock legal hold ON for every kept object
    /// (where the destination has Object Lock), recorded and audited.
    async fn hold_objects(
        &self,
        dest: &dyn Destination,
        database: &str,
        keys: &[String],
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let newly = crate::jobs::object_holds::hold(dest, keys, &self.ctx.config.state_dir).await?;
        if newly.is_empty() {
            return Ok(None);
        }
        let reason = crate::hold::current(&self.ctx.config.state_dir)
            .ok()
            .flatten()
            .map_or_else(|| "legal hold".to_owned(), |h| h.reason);
        let detail = json!({"destination": dest.name(), "database": database, "keys": newly,
                            "reason": reason, "result": "legal hold on"});
        self.ctx
            .audit("backup.legal_hold.on", detail.clone())
            .await
            .context("auditing legal holds set")?;
        Ok(Some(detail))
    }
}
