//! `backups list`: the complete backups (manifest present) on the
//! destinations, newest first — what `restore --backup STAMP` can take.
//! Read-only; exit 1 when a destination could not be listed (the others are
//! still printed).

use super::{load_or_report, EXIT_FAILED, EXIT_OK};
use crate::jobs::backup::manifest;
use crate::jobs::{catalog, retrieve};
use serde::Serialize;
use std::path::PathBuf;

/// One listed backup (`--json` prints an array of these).
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Real database name (`_globals` for the globals).
    pub database: String,
    /// `database`, or `globals` (the cluster's roles and tablespaces).
    pub content: crate::jobs::backup::manifest::Content,
    /// Destination name.
    pub destination: String,
    /// Host whose backup it is (its prefix on the destination).
    pub host_id: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub stamp: String,
    /// The object's key on the destination.
    pub key: String,
    /// Encrypted size.
    pub size_bytes: u64,
    /// SHA-256 of the object.
    pub sha256: String,
    /// When the backup finished (RFC 3339).
    pub finished_at: String,
    /// Object Lock retention end (RFC 3339), when the store says.
    pub locked_until: Option<String>,
}

/// `backups list`.
pub async fn list(
    flag: Option<PathBuf>,
    databases: &[String],
    destination: Option<&str>,
    host: Option<&str>,
    json: bool,
) -> u8 {
    let (_, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(dests) = chosen(&cfg, destination) else {
        return super::EXIT_USAGE;
    };
    let mut all = Vec::new();
    let mut failed = false;
    for d in dests {
        let prefix = host.map_or_else(|| d.prefix.clone(), str::to_owned);
        match on(d, &prefix, databases).await {
            Ok(found) => all.extend(found),
            Err(e) => {
                failed = true;
                eprintln!("cloudnx-agent: listing {}: {e:#}", d.name);
            }
        }
    }
    all.sort_by(|a, b| {
        (&b.stamp, &a.database, &a.destination).cmp(&(&a.stamp, &b.database, &b.destination))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else if all.is_empty() {
        println!("no complete backups");
    } else {
        println!(
            "{:<20} {:<18} {:<12} {:>12}  {:<20} HOST",
            "DATABASE", "STAMP", "DESTINATION", "SIZE", "LOCKED UNTIL"
        );
        for b in &all {
            println!(
                "{:<20} {:<18} {:<12} {:>12}  {:<20} {}",
                b.database,
                b.stamp,
                b.destination,
                b.size_bytes,
                b.locked_until.as_deref().unwrap_or("-"),
                b.host_id
            );
        }
    }
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// The destinations `--destination` names (all by default); None, said on
/// stderr, when it names none.
pub(super) fn chosen<'a>(
    cfg: &'a crate::config::Config,
    destination: Option<&str>,
) -> Option<Vec<&'a crate::config::Destination>> {
    let dests: Vec<_> = cfg
        .destinations
        .iter()
        .filter(|d| destination.is_none_or(|n| n == d.name))
        .collect();
    if dests.is_empty() {
        eprintln!(
            "cloudnx-agent: no destination {:?} in [[destinations]] ({:?})",
            destination.unwrap_or(""),
            cfg.destinations
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
        );
        return None;
    }
    Some(dests)
}

/// The complete backups of one destination.
async fn on(
    d: &crate::config::Destination,
    prefix: &str,
    only: &[String],
) -> anyhow::Result<Vec<Listed>> {
    let dest = d.open(1, &tokio_util::sync::CancellationToken::new())?;
    let dir = manifest::postgres_dir(prefix);
    let keys: Vec<String> = dest.list(&dir).await?.into_iter().map(|o| o.key).collect();
    let mut out = Vec::new();
    for c in catalog::complete(&dir, &keys) {
        if !only.is_empty() && !only.contains(&c.database) {
            continue;
        }
        let m = retrieve::read_manifest(dest.as_ref(), &c.manifest_key(prefix)).await?;
        let key = manifest::object_key(prefix, &c.segment, &c.stamp);
        out.push(Listed {
            database: c.database,
            content: c.content,
            destination: d.name.clone(),
            host_id: m.host_id,
            stamp: c.stamp,
            locked_until: dest.locked_until(&key).await?,
            key,
            size_bytes: m.size_bytes,
            sha256: m.sha256,
            finished_at: m.finished_at,
        });
    }
    Ok(out)
}
