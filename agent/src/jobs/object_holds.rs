//! Object Lock legal holds the agent sets while a legal hold is in force
//! (SPEC §10), and lifts when it is released.
//!
//! Owns: the ledger of the objects whose legal hold the agent turned ON
//! (`state_dir/legal-hold-objects.json`, per destination), so a release turns
//! OFF exactly those — never a hold someone else set on the bucket. Must
//! never: delete anything, or forget a key whose hold could not be lifted.

use crate::store::{Cause, Destination};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Ledger = BTreeMap<String, BTreeSet<String>>;

fn ledger_path(state_dir: &Path) -> PathBuf {
    state_dir.join("legal-hold-objects.json")
}

/// Apply a change to the ledger under its lock (the CLI's `hold release` and
/// a backup run may both write it).
fn update(state_dir: &Path, f: impl FnOnce(&mut Ledger)) -> anyhow::Result<()> {
    crate::fsx::ensure_private_dir(state_dir)?;
    let _lock = crate::fsx::lock_file(&state_dir.join("legal-hold-objects.lock"), true)
        .map_err(anyhow::Error::from)?;
    let path = ledger_path(state_dir);
    let mut ledger: Ledger = crate::fsx::read_json_or_default(&path);
    f(&mut ledger);
    ledger.retain(|_, keys| !keys.is_empty());
    crate::fsx::write_json_private(&path, &ledger)
}

/// The keys of `destination` whose hold the agent set.
pub fn held_keys(state_dir: &Path, destination: &str) -> BTreeSet<String> {
    let ledger: Ledger = crate::fsx::read_json_or_default(&ledger_path(state_dir));
    ledger.get(destination).cloned().unwrap_or_default()
}

/// Turn the legal hold ON for `keys` not yet held by the agent. Returns the
/// keys newly held; empty where the store has no legal holds (a filesystem,
/// a bucket without Object Lock).
pub async fn hold(
    dest: &dyn Destination,
    keys: &[String],
    state_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let already = held_keys(state_dir, dest.name());
    let mut newly = Vec::new();
    let mut failed = None;
    for key in keys.iter().filter(|k| !already.contains(*k)) {
        match dest.set_legal_hold(key, true).await {
            Ok(true) => newly.push(key.clone()),
            Ok(false) => break,
            // Gone since the listing (another writer's clean-up): nothing to hold.
            Err(e) if matches!(e.cause(), Cause::NotFound { .. }) => {}
            Err(e) => {
                failed = Some(anyhow::Error::from(e).context(format!(
                    "turning the Object Lock legal hold ON for {key} on {}",
                    dest.name()
                )));
                break;
            }
        }
    }
    if !newly.is_empty() {
        update(state_dir, |l| {
            l.entry(dest.name().to_owned())
                .or_default()
                .extend(newly.iter().cloned());
        })?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(newly),
    }
}

/// Turn the legal hold ON for every object of every complete database
/// backup under `prefix` (what `hold set` protects at once, before any
/// backup run). Returns the keys newly held.
pub async fn hold_backups(
    dest: &dyn Destination,
    prefix: &str,
    state_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let root = crate::jobs::backup::manifest::postgres_dir(prefix);
    let keys: Vec<String> = dest.list(&root).await?.into_iter().map(|o| o.key).collect();
    let dirs: BTreeSet<String> = crate::jobs::catalog::complete(&root, &keys)
        .iter()
        .map(|c| format!("{root}{}/{}/", c.segment, c.stamp))
        .collect();
    let wanted: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            k.rsplit_once('/')
                .is_some_and(|(d, _)| dirs.contains(&format!("{d}/")))
        })
        .collect();
    hold(dest, &wanted, state_dir).await
}

/// Turn OFF every hold the agent set on `dest`. Returns the keys lifted; a
/// key whose hold could not be lifted stays in the ledger (retried next time)
/// and the error says which.
pub async fn lift(dest: &dyn Destination, state_dir: &Path) -> anyhow::Result<Vec<String>> {
    let keys = held_keys(state_dir, dest.name());
    let mut done = Vec::new();
    let mut failed = None;
    for key in &keys {
        match dest.set_legal_hold(key, false).await {
            Ok(_) => done.push(key.clone()),
            Err(e) if matches!(e.cause(), Cause::NotFound { .. }) => done.push(key.clone()),
            Err(e) => {
                failed = Some(anyhow::Error::from(e).context(format!(
                    "turning the Object Lock legal hold OFF for {key} on {}",
                    dest.name()
                )));
                break;
            }
        }
    }
    if !done.is_empty() {
        update(state_dir, |l| {
            if let Some(k) = l.get_mut(dest.name()) {
                for d in &done {
                    k.remove(d);
                }
            }
        })?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(done),
    }
}
