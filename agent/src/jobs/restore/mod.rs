//! The `restore` duty (SPEC §9): get one backup back on command — into a live
//! PostgreSQL server or as a file — through the drill's own path
//! ([`crate::jobs::retrieve`]: streamed download, streaming decryption, both
//! SHA-256s checked against the manifest).
//!
//! Order, so that nothing reaches the target or the output file unless the
//! backup is intact: check the target (reachable; the database absent, empty,
//! or `--clean`) → pick the backup → read its manifest → download + decrypt
//! into a private spool (or a hidden temp file beside `--output`) → verify →
//! roles the dump needs exist on the target → create the database → `pg_restore
//! --jobs` → row counts compared with the manifest. `--output` appears only
//! once complete and verified (linked into place, never over an existing file).
//!
//! Must never: touch a non-empty database without `--clean`, write a byte to
//! the target or the output before verification, leave a database it created
//! half-restored (a failed `pg_restore` drops it), or run without a person on
//! the host asking (never scheduled, refused through the API).

pub mod roles;

use crate::config::Config;
use crate::jobs::backup::manifest::{self, Content, Manifest};
use crate::jobs::context::{JobContext, Outcome};
use crate::jobs::kind::RestoreParams;
use crate::jobs::{catalog, retrieve, workdir::Workdir};
use crate::pg::{self, ConnInfo};
use crate::store::Destination;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the backup goes.
enum Target {
    /// A file (the decrypted dump, or the globals' SQL).
    File(PathBuf),
    /// A database on a live server.
    Server {
        conn: Box<ConnInfo>,
        database: String,
        clean: bool,
        jobs: u32,
    },
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let p = ctx
        .params
        .restore
        .clone()
        .context("restore: no parameters (run `cloudnx-agent restore --help`)")?;
    let cfg = &ctx.config;
    let dest_name = destination_name(cfg, ctx.params.destination.as_deref())?;
    let dest_cfg = cfg
        .destination(&dest_name)
        .with_context(|| format!("destination {dest_name:?} is not defined in [[destinations]]"))?;
    let prefix = match &p.host {
        Some(h) => {
            anyhow::ensure!(
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && h != "."
                    && h != "..",
                "--host {h:?} is not a host id (letters, digits, '-', '_', '.')"
            );
            h.clone()
        }
        None => dest_cfg.prefix.clone(),
    };
    let key = secret_key(cfg, p.key.as_deref())?;
    let target = target(cfg, &p)?;
    let started = Instant::now();

    // The target first: a refusal must not cost a download.
    if let Target::Server {
        conn,
        database,
        clean,
        ..
    } = &target
    {
        ctx.progress.phase("checking the target", None);
        check_target(conn, database, *clean).await?;
    }

    ctx.progress.phase(format!("listing {dest_name}"), None);
    let dest = dest_cfg
        .open(1, &ctx.cancel)
        .with_context(|| format!("opening destination {dest_name}"))?;
    let chosen = choose(dest.as_ref(), &prefix, &p).await?;
    let mut m = retrieve::read_manifest(dest.as_ref(), &chosen.manifest_key(&prefix)).await?;
    retrieve::read_details(dest.as_ref(), &chosen.manifest_key(&prefix), &key, &mut m).await?;
    anyhow::ensure!(
        m.format == manifest::FORMAT && m.database == chosen.database && m.content == chosen.content,
        "{}: the manifest does not describe this backup (format {:?}, database {:?}); not restoring it",
        chosen.manifest_key(&prefix),
        m.format,
        m.database
    );
    let object = manifest::object_key(&prefix, &chosen.segment, &chosen.stamp);
    let mut detail = json!({
        "database": m.database, "stamp": chosen.stamp, "destination": dest_name,
        "prefix": prefix, "object": object, "sha256": m.sha256, "size_bytes": m.size_bytes,
    });
    match &target {
        Target::File(f) => detail["output"] = json!(f),
        Target::Server {
            conn,
            database,
            clean,
            ..
        } => {
            detail["target"] = json!(conn.describe());
            detail["target_database"] = json!(database);
            detail["clean"] = json!(clean);
        }
    }
    // What is about to be restored, where: on the record before anything is written.
    ctx.audit("restore.begin", detail.clone())
        .await
        .context("auditing the restore")?;

    let mut result = detail;
    let source = Source {
        ctx,
        dest: dest.as_ref(),
        object: &object,
        key: &key,
        m: &m,
    };
    match target {
        Target::File(path) => {
            to_file(&source, &path).await?;
            result["output"] = json!(path);
        }
        Target::Server {
            conn,
            database,
            clean,
            jobs,
        } => {
            result["row_counts"] = to_server(&source, &conn, &database, clean, jobs).await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    result["duration_seconds"] = json!(seconds);
    let where_to = result["output"]
        .as_str()
        .map(|f| format!("into {f}"))
        .unwrap_or_else(|| {
            format!(
                "into database {} at {}",
                result["target_database"].as_str().unwrap_or("?"),
                result["target"].as_str().unwrap_or("?")
            )
        });
    Ok(Outcome::success(
        format!(
            "restored {} {} from {dest_name} {where_to} in {seconds:.1} s (object and dump SHA-256 verified)",
            m.database, chosen.stamp
        ),
        result,
    ))
}

/// `--destination`, else the first of `[backup] destinations`, else the only one.
fn destination_name(cfg: &Config, flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(d) = flag {
        return Ok(d.to_owned());
    }
    if let Some(first) = cfg.backup.as_ref().and_then(|b| b.destinations.first()) {
        return Ok(first.clone());
    }
    match cfg.destinations.as_slice() {
        [only] => Ok(only.name.clone()),
        all => bail!(
            "pass --destination NAME (one of {:?})",
            all.iter().map(|d| d.name.as_str()).collect::<Vec<_>>()
        ),
    }
}

/// `--key`, else `[restore_drill] decryption_key`; refused when others can read it.
pub(crate) fn secret_key(cfg: &Config, flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let key = match (flag, &cfg.restore_drill) {
        (Some(k), _) => k.to_owned(),
        (None, Some(d)) => d.decryption_key.clone(),
        (None, None) => bail!(
            "no OpenPGP secret key: pass --key FILE (an armored secret key of a backup recipient) \
             or set [restore_drill] decryption_key"
        ),
    };
    if let Some((msg, hint)) = crate::fsx::secret_file_problem(
        &key,
        false,
        Some(crate::fsx::Owners::for_state_dir(&cfg.state_dir)),
    ) {
        bail!("the decryption key: {msg}; {hint}");
    }
    Ok(key)
}

fn target(cfg: &Config, p: &RestoreParams) -> anyhow::Result<Target> {
    match (&p.output, &p.target) {
        (Some(f), None) => {
            anyhow::ensure!(
                f.file_name().is_some(),
                "--output {} names no file",
                f.display()
            );
            Ok(Target::File(f.clone()))
        }
        (None, Some(t)) => {
            anyhow::ensure!(
                !p.globals,
                "the globals (roles, tablespaces) are restored by hand: write them with \
                 --output FILE, review them, then `psql -f FILE`"
            );
            let conn = ConnInfo::parse(t).context("--target")?;
            anyhow::ensure!(
                !conn.has_password(),
                "--target carries a password: it would be on the command line and in the audit log; \
                 put it in ~/.pgpass (or PGPASSFILE) of the user the agent runs as, or use peer/cert auth"
            );
            let jobs = p.jobs.unwrap_or_else(|| {
                cfg.restore_drill.as_ref().map_or_else(
                    || {
                        std::thread::available_parallelism()
                            .map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
                    },
                    |d| d.jobs,
                )
            });
            Ok(Target::Server {
                conn: Box::new(conn),
                database: p
                    .target_database
                    .clone()
                    .unwrap_or_else(|| p.database.clone()),
                clean: p.clean,
                jobs: jobs.max(1),
            })
        }
        (Some(_), Some(_)) => bail!("--target and --output exclude each other"),
        (None, None) => bail!("say where to: --target CONNINFO (a live server) or --output FILE"),
    }
}

/// Whether the cluster's globals are asked for: `--globals`, or (SPEC §9)
/// `--database _globals` with `--output` — into a live server `_globals` can
/// only be a database of that name, since globals are never restored there.
fn wants_globals(p: &RestoreParams) -> bool {
    p.globals || (p.database == manifest::GLOBALS && p.output.is_some())
}

/// The backup of `p.database` named by `p.backup` (a stamp, or the newest).
async fn choose(
    dest: &dyn Destination,
    prefix: &str,
    p: &RestoreParams,
) -> anyhow::Result<catalog::Complete> {
    let dir = manifest::postgres_dir(prefix);
    let keys: Vec<String> = dest.list(&dir).await?.into_iter().map(|o| o.key).collect();
    let want_content = if wants_globals(p) {
        Content::Globals
    } else {
        Content::Database
    };
    let of_db: Vec<catalog::Complete> = catalog::complete(&dir, &keys)
        .into_iter()
        .filter(|c| c.database == p.database && c.content == want_content)
        .collect();
    let stamps = || {
        let mut v: Vec<&str> = of_db
            .iter()
            .rev()
            .take(10)
            .map(|c| c.stamp.as_str())
            .collect();
        v.reverse();
        v.join(", ")
    };
    match p.backup.as_deref() {
        None | Some("latest") => of_db.last().cloned().with_context(|| {
            format!(
                "no complete backup of {:?} under {dir} on {}; see `cloudnx-agent backups list`",
                p.database,
                dest.name()
            )
        }),
        Some(stamp) => of_db
            .iter()
            .find(|c| c.stamp == stamp)
            .cloned()
            .with_context(|| {
                format!(
                    "no complete backup {stamp} of {:?} on {}; the newest are: {}",
                    p.database,
                    dest.name(),
                    stamps()
                )
            }),
    }
}

/// Refuse a target that would lose data: unreachable, or a database that
/// holds a user relation while `--clean` was not given. Touches nothing.
async fn check_target(conn: &ConnInfo, database: &str, clean: bool) -> anyhow::Result<()> {
    let admin = conn.connect(Some("postgres")).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .context("looking up the target database")?
        .is_some();
    if !exists || clean {
        return Ok(());
    }
    let client = conn.connect(Some(database)).await?;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname !~ '^pg_(toast|temp_)'",
            &[],
        )
        .await
        .context("counting the target database's relations")?
        .get(0);
    if n > 0 {
        bail!(
            "the target database {database:?} at {} already holds {n} relation(s); nothing was changed. \
             Restore into another database (--target-database NAME), or pass --clean to drop and \
             re-create the backup's objects in it",
            conn.describe()
        );
    }
    Ok(())
}

/// The chosen backup and how to get it back.
struct Source<'a> {
    ctx: &'a JobContext,
    dest: &'a dyn Destination,
    object: &'a str,
    key: &'a Path,
    m: &'a Manifest,
}

impl Source<'_> {
    /// Download, decrypt into `out`, verify both checksums.
    async fn fetch_into(&self, out: std::fs::File) -> anyhow::Result<()> {
        self.ctx.progress.phase(
            format!("download and decrypt {}", self.m.database),
            Some(self.m.size_bytes),
        );
        retrieve::fetch_decrypt(
            self.dest,
            self.object,
            self.key,
            out,
            &retrieve::Expected::from(self.m),
            &self.ctx.progress,
        )
        .await?;
        Ok(())
    }
}

/// Decrypt into a hidden temp file beside `path`, verify, then link it into
/// place (never over an existing file).
async fn to_file(src: &Source<'_>, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::fs::symlink_metadata(path).is_err(),
        "{} exists; choose another --output or remove it",
        path.display()
    );
    let mut staged = crate::fsx::Staged::new(path, 0o600)?;
    src.fetch_into(staged.file_handle()?).await?;
    crate::fault_point!("restore::before_output");
    staged.commit_new()
}

/// Restore into a database of a live server; the row counts compared.
async fn to_server(
    src: &Source<'_>,
    conn: &ConnInfo,
    database: &str,
    clean: bool,
    jobs: u32,
) -> anyhow::Result<serde_json::Value> {
    let (ctx, m) = (src.ctx, src.m);
    let parent = ctx
        .config
        .restore_drill
        .as_ref()
        .and_then(|d| d.spool_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = Workdir::create(&parent, "restore", 0o700, |_| {})?;
    let file = work.path().join("dump");
    src.fetch_into(crate::fsx::create_new(&file, 0o600)?)
        .await?;
    crate::fault_point!("restore::after_verify");

    let admin = conn.connect(Some("postgres")).await?;
    let target = pg::server_version(&admin).await?;
    let dump_major = pg::major_of(&m.server_version).unwrap_or(target.major);
    let bin = pg::bin_dir(
        ctx.config
            .backup
            .as_ref()
            .and_then(|b| b.pg_bin_dir.as_deref()),
        target.major.max(dump_major),
    );
    let pg_restore = pg::program(bin.as_deref(), "pg_restore");

    ctx.progress.phase("checking roles", None);
    let needed = roles::needed(&pg_restore, &file).await?;
    let missing = roles::missing(&admin, &needed).await?;
    if !missing.is_empty() {
        bail!(
            "the dump needs role(s) the target lacks: {}; nothing was changed. Create them, or restore \
             the source cluster's roles first: `cloudnx-agent restore --database _globals --output \
             globals.sql`, review it, `psql -f globals.sql`",
            missing.join(", ")
        );
    }

    let created = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await?
        .is_none();
    if created {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                pg::quote_ident(database)
            ))
            .await
            .with_context(|| format!("creating database {database:?}"))?;
    }
    ctx.progress
        .phase(format!("pg_restore into {database}"), None);
    let mut c = tokio::process::Command::new(&pg_restore);
    c.arg(format!("--jobs={jobs}"))
        .args(["--exit-on-error", "--no-password", "-d", database]);
    if clean {
        c.args(["--clean", "--if-exists"]);
    }
    c.arg(&file).envs(conn.libpq_env(Some(database)));
    if let Err(e) = pg::run(c, &format!("pg_restore into {database:?}")).await {
        if created {
            // Never leave a half-restored database that looks like a restore.
            let drop = admin
                .batch_execute(&format!(
                    "DROP DATABASE {} WITH (FORCE)",
                    pg::quote_ident(database)
                ))
                .await;
            return Err(e.context(match drop {
                Ok(()) => {
                    format!("the database {database:?} this restore created was dropped again")
                }
                Err(d) => {
                    format!("dropping the half-restored database {database:?} failed too: {d}")
                }
            }));
        }
        return Err(e.context(format!(
            "the existing database {database:?} is now partly restored (--clean)"
        )));
    }
    // The spool (the whole dump) is removed while the rows are counted.
    let removed = tokio::task::spawn_blocking(move || drop(work));

    ctx.progress.phase("counting rows", None);
    let Some(want) = &m.row_counts else {
        let _ = removed.await;
        return Ok(json!({"checked": false, "why": "not counted at backup time"}));
    };
    let counted = async {
        let client = conn.connect(Some(database)).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let got = pg::row_counts(&client).await?;
        client.batch_execute("COMMIT").await?;
        Ok::<_, anyhow::Error>(got)
    }
    .await;
    let _ = removed.await;
    let got = counted?;
    // Tables the target held besides the backup's (--clean keeps them) are not its business.
    let diffs: Vec<String> = retrieve::count_differences(want, &got)
        .into_iter()
        .filter(|d| !d.ends_with("present after restore, not in the manifest"))
        .collect();
    if !diffs.is_empty() {
        bail!(
            "restored into {database:?}, but the row counts differ from the backup's: {}",
            diffs.join(", ")
        );
    }
    Ok(json!({"checked": true, "tables": want.len()}))
}
