//! Header backups: `{header_backup_dir}/{uuid}-{header_id}.img`, mode 0400 in a
//! 0700 directory, written on first sight of a header and whenever its
//! sequence id changes. A backup is a secret (an old header plus an old
//! passphrase still opens the volume), so it is never group/other readable,
//! and it only gets its final name once complete and synced.

use super::helper_client::{self, Access};
use super::inspect::Inspection;
use crate::config::LuksVolume;
use anyhow::Context;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What happened to a volume's header backup this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReport {
    /// The backup of the current header.
    pub path: PathBuf,
    /// Written this run.
    pub written: bool,
    /// Earlier backups of this UUID existed (so a new one means the header changed).
    pub previous: Vec<String>,
    /// mtime of the newest backup, seconds since the epoch.
    pub timestamp: f64,
}

/// The final name of the backup of a header version.
pub fn backup_name(uuid: &str, header_id: &str) -> String {
    format!("{uuid}-{header_id}.img")
}

/// Create the directory 0700, and tighten it if it exists looser.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    crate::fsx::ensure_private_dir(dir)?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to mode 0700", dir.display()))?;
    }
    Ok(())
}

/// Header ids of existing backups of `uuid`, oldest first by mtime.
fn existing(dir: &Path, uuid: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let prefix = format!("{uuid}-");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".img"))
        else {
            continue;
        };
        let mtime = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        out.push((id.to_owned(), mtime));
    }
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(out)
}

/// Back up the header of `vol` unless a backup of this exact header exists
/// (read in-process or through the helper, per `access`; written here).
pub async fn ensure_backup(
    access: &Access,
    dir: &Path,
    vol: &LuksVolume,
    h: &Inspection,
) -> anyhow::Result<BackupReport> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || ensure_dir(&d)).await??;
    let before = {
        let (d, u) = (dir.to_owned(), h.uuid.clone());
        tokio::task::spawn_blocking(move || existing(&d, &u)).await??
    };
    let want = dir.join(backup_name(&h.uuid, &h.header_id));
    if let Some((_, t)) = before.iter().find(|(id, _)| *id == h.header_id) {
        let newest = before.iter().map(|x| x.1).fold(*t, f64::max);
        return Ok(BackupReport {
            path: want,
            written: false,
            previous: before
                .into_iter()
                .map(|x| x.0)
                .filter(|id| *id != h.header_id)
                .collect(),
            timestamp: newest,
        });
    }
    // Write under a name no reader takes for a backup, then rename: a crash
    // leaves a `.partial`, never a truncated `*.img`.
    let tmp = dir.join(format!(".{}-{}.img.partial", h.uuid, h.header_id));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", tmp.display()))
        }
        _ => {}
    }
    let written = helper_client::header_backup(access, vol, tmp.clone()).await?;
    let dir2 = dir.to_owned();
    let uuid = h.uuid.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<BackupReport> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))
            .with_context(|| format!("chmod 0400 {}", tmp.display()))?;
        crate::fsx::open_read(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        // Name it after the header actually written (it may have changed
        // between the inspection and the backup).
        let path = dir2.join(backup_name(&uuid, &written.header_id));
        if path.exists() {
            std::fs::remove_file(&tmp).ok();
        } else {
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        }
        crate::fsx::sync_dir(&dir2)?;
        Ok(BackupReport {
            path,
            written: true,
            previous: before.into_iter().map(|x| x.0).collect(),
            timestamp: crate::util::unix_now(),
        })
    })
    .await?
}
