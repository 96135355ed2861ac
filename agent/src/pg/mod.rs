//! PostgreSQL helpers shared by the backup and the restore drill: connecting
//! from a libpq conninfo, the server version, which `pg_dump` matches it, an
//! exported snapshot, and the two descriptions of a database that a restore
//! must reproduce exactly (the schema fingerprint and exact row counts).
//!
//! Must never: put a password on a child's command line (children get the
//! connection through `PG*` environment variables), or run anything that
//! writes to the source database (every session here is read-only).

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

/// A parsed libpq conninfo (`host=/var/run/postgresql user=postgres`).
#[derive(Clone)]
pub struct ConnInfo {
    cfg: tokio_postgres::Config,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "ConnInfo({})", self.describe())
    }
}

impl ConnInfo {
    /// Parse a libpq key=value conninfo (or a postgresql:// URL).
    pub fn parse(conninfo: &str) -> anyhow::Result<Self> {
        // Keep the cause: it names the keyword or option at fault (never a value).
        let mut cfg =
            tokio_postgres::Config::from_str(conninfo).context("parsing the connection string")?;
        if cfg.get_hosts().is_empty() {
            cfg.host_path("/var/run/postgresql");
        }
        if cfg.get_user().is_none() {
            cfg.user("postgres");
        }
        cfg.connect_timeout(Duration::from_secs(10));
        Ok(ConnInfo { cfg })
    }

    /// Whether the conninfo carries a password.
    pub fn has_password(&self) -> bool {
        self.cfg.get_password().is_some()
    }

    /// Where this points, without secrets (for messages).
    pub fn describe(&self) -> String {
        let host = match self.cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "?".into(),
        };
        let port = self.cfg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "host={host} port={port} user={}",
            self.cfg.get_user().unwrap_or("?")
        )
    }

    /// Connect to `dbname` (the conninfo's own database when None).
    pub async fn connect(&self, dbname: Option<&str>) -> anyhow::Result<Client> {
        let mut cfg = self.cfg.clone();
        if let Some(d) = dbname {
            cfg.dbname(d);
        }
        let (client, conn) = cfg.connect(NoTls).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {} database {:?}",
                self.describe(),
                dbname.or(cfg.get_dbname()).unwrap_or("postgres")
            )
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// `PG*` variables that point a libpq program (pg_dump, pg_dumpall) at the
    /// same server, so nothing secret goes on a command line.
    pub fn libpq_env(&self, dbname: Option<&str>) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        match self.cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
            Some(Host::Unix(p)) => env.push(("PGHOST", p.display().to_string())),
            None => {}
        }
        if let Some(p) = self.cfg.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = self.cfg.get_user() {
            env.push(("PGUSER", u.to_owned()));
        }
        if let Some(pw) = self.cfg.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        if let Some(d) = dbname.or(self.cfg.get_dbname()) {
            env.push(("PGDATABASE", d.to_owned()));
        }
        env.push(("PGCONNECT_TIMEOUT", "10".into()));
        env
    }
}

/// The server's version: full text (`15.8`) and major number (15).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerVersion {
    /// As `SHOW server_version` says, without the distributor suffix.
    pub text: String,
    /// Major version (15 for 15.8).
    pub major: u32,
}

/// Ask the server for its version.
pub async fn server_version(client: &Client) -> anyhow::Result<ServerVersion> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .context("reading the server version")?;
    let text: String = row.get(0);
    let num: i32 = row.get(1);
    Ok(ServerVersion {
        text: text.split_whitespace().next().unwrap_or("").to_owned(),
        major: u32::try_from(num / 10000).unwrap_or(0),
    })
}

/// Every database a backup of "all" covers: connectable, not a template.
pub async fn list_databases(client: &Client) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname COLLATE \"C\"",
            &[],
        )
        .await
        .context("listing databases")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The directory holding the client programs for a server major version:
/// the configured one, else `/usr/lib/postgresql/{major}/bin`, else PATH (None).
pub fn bin_dir(configured: Option<&Path>, major: u32) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_owned());
    }
    let p = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    p.join("pg_dump").is_file().then_some(p)
}

/// A program from `bin_dir` (or bare, found on PATH).
pub fn program(bin_dir: Option<&Path>, name: &str) -> PathBuf {
    bin_dir.map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

/// The version a client program reports (`pg_dump (PostgreSQL) 15.8 (Debian …)` → `15.8`).
pub async fn program_version(program: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", program.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", program.display(), out.status);
    }
    parse_program_version(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the version of {}", program.display()))
}

/// `pg_dump (PostgreSQL) 15.8 (Debian 15.8-1)` → `15.8`.
pub fn parse_program_version(s: &str) -> anyhow::Result<String> {
    s.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .with_context(|| format!("unexpected version output {:?}", s.trim()))
}

/// The major version of a version string (`15.8` → 15).
pub fn major_of(version: &str) -> Option<u32> {
    version.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// A read-only REPEATABLE READ transaction whose snapshot is exported for pg_dump.
/// Keep it alive until pg_dump has finished: the snapshot dies with it.
pub struct Snapshot {
    client: Client,
    /// The id to pass as `pg_dump --snapshot`.
    pub id: String,
}

impl Snapshot {
    /// Open the transaction and export its snapshot.
    pub async fn export(client: Client) -> anyhow::Result<Snapshot> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .context("opening the snapshot transaction")?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .context("exporting the snapshot")?
            .get(0);
        Ok(Snapshot { client, id })
    }

    /// The session inside the snapshot.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// End the transaction (nothing was written).
    pub async fn finish(self) -> anyhow::Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .context("closing the snapshot transaction")
    }
}

/// The canonical description of a database's schema: one line per object
/// (relations, columns, types, constraints, indexes, views, functions,
/// sequences), by name, never by OID, sorted bytewise. Two databases with the
/// same user-visible schema give the same lines, whatever their OIDs.
const SCHEMA_QUERY: &str = r#"
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace
  WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%'
), lines AS (
  SELECT 'schema ' || nspname AS line FROM ns
  UNION ALL
  SELECT 'relation ' || ns.nspname || '.' || c.relname || ' ' || c.relkind::text
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'column ' || ns.nspname || '.' || c.relname || ' ' || a.attnum || ' ' || a.attname || ' '
         || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL
  SELECT 'type ' || ns.nspname || '.' || t.typname || ' ' || t.typtype::text
         || coalesce(' ' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                               FROM pg_enum e WHERE e.enumtypid = t.oid), '')
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
    WHERE t.typtype IN ('e', 'd', 'c', 'r') AND (t.typrelid = 0 OR
          (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  UNION ALL
  SELECT 'constraint ' || ns.nspname || '.' || coalesce(c.relname, '-') || ' ' || k.conname || ' '
         || k.contype::text || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN ns ON ns.oid = k.connamespace LEFT JOIN pg_class c ON c.oid = k.conrelid
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'view ' || ns.nspname || '.' || c.relname || ' ' || pg_get_viewdef(c.oid, true)
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'function ' || ns.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
         || ') ' || p.prokind::text || ' ' || coalesce(pg_get_function_result(p.oid), '') || ' '
         || l.lanname || ' ' || md5(p.prosrc)
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
)
SELECT line FROM lines ORDER BY line COLLATE "C"
"#;

/// The schema fingerprint: SHA-256 (hex) over [`SCHEMA_QUERY`]'s lines, each ending in `\n`.
pub async fn schema_sha256(client: &Client) -> anyhow::Result<String> {
    // Deparsed view bodies and defaults qualify names relative to search_path:
    // pin it so a backup and a restore deparse identically.
    client
        .batch_execute("SET LOCAL search_path = pg_catalog")
        .await
        .context("pinning search_path for the schema fingerprint")?;
    let rows = client
        .query(SCHEMA_QUERY, &[])
        .await
        .context("reading the schema catalog for the fingerprint")?;
    let mut h = Sha256::new();
    for r in &rows {
        let line: String = r.get(0);
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// Exact row counts of every ordinary table (`schema.table` → rows), plus
/// `pg_catalog.pg_largeobject_metadata` (the number of large objects).
pub async fn row_counts(client: &Client) -> anyhow::Result<BTreeMap<String, i64>> {
    let tables = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
               AND n.nspname NOT LIKE 'pg_temp_%' ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\"",
            &[],
        )
        .await
        .context("listing tables to count")?;
    let mut out = BTreeMap::new();
    for t in tables {
        let (ns, rel): (String, String) = (t.get(0), t.get(1));
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(&ns),
            quote_ident(&rel)
        );
        let n: i64 = client
            .query_one(sql.as_str(), &[])
            .await
            .with_context(|| format!("counting rows of {ns}.{rel}"))?
            .get(0);
        out.insert(format!("{ns}.{rel}"), n);
    }
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .context("counting large objects")?
        .get(0);
    out.insert("pg_catalog.pg_largeobject_metadata".into(), n);
    Ok(out)
}

/// Run a PostgreSQL program to its end (killed if the caller gives up);
/// an error names `what`, the exit status and the end of its stderr.
pub async fn run(mut c: tokio::process::Command, what: &str) -> anyhow::Result<()> {
    c.kill_on_drop(true);
    let out = c
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        // The end is where the reason is.
        let tail: String = err
            .chars()
            .rev()
            .take(1000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        anyhow::bail!("{what} failed ({}): {tail}", out.status);
    }
    Ok(())
}

/// Quote an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_versions_are_read_from_debian_and_upstream_output() {
        for (out, want) in [
            (
                "pg_dump (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n",
                "15.8",
            ),
            ("pg_dump (PostgreSQL) 16.2\n", "16.2"),
            ("pg_dumpall (PostgreSQL) 17beta1\n", "17beta1"),
        ] {
            assert_eq!(parse_program_version(out).unwrap(), want);
        }
        assert!(parse_program_version("garbage").is_err());
        assert_eq!(major_of("15.8"), Some(15));
        assert_eq!(major_of("17beta1"), Some(17));
    }

    #[test]
    fn identifiers_with_quotes_are_escaped() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn conninfo_never_shows_its_password() {
        let c = ConnInfo::parse("host=/tmp user=app password=hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.describe().contains("hunter2"));
    }
}
