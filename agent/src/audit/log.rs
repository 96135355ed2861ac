//! Appending: one writer at a time across processes (an exclusive `flock` of
//! `{path}.lock`, so the daemon and one-shot CLI runs serialise), the chain
//! read back from the tail of the newest file, fsync per record, rotation by
//! size, and the repair of a torn tail (set aside to a side file, truncated,
//! and audited — never silently).

use super::files::{read_tail, LogFiles, Tail};
use super::record::{sha256_hex, AuditEntry, Head, Record};
use anyhow::{bail, Context};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Mode of the log files (the agent's group may read them for audits).
const LOG_MODE: u32 = 0o640;

/// The audit log at one path.
#[derive(Debug, Clone)]
pub struct AuditLog {
    files: LogFiles,
    rotate_bytes: u64,
}

/// A write interrupted by a crash, found at the end of a file and set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The file it was found in.
    pub file: PathBuf,
    /// Where its bytes were moved.
    pub set_aside_to: PathBuf,
    /// How many bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of those bytes.
    pub sha256: String,
    /// The last whole record before it (0: none).
    pub after_seq: u64,
}

impl AuditLog {
    /// The log whose active file is `path`, rotated past `rotate_bytes`.
    pub fn new(path: &Path, rotate_bytes: u64) -> Self {
        AuditLog {
            files: LogFiles::new(path),
            rotate_bytes: rotate_bytes.max(1),
        }
    }

    /// The files of this log.
    pub fn files(&self) -> &LogFiles {
        &self.files
    }

    /// Append from async code: the write and its fsync run on the blocking pool.
    pub async fn append_async(&self, entry: AuditEntry) -> anyhow::Result<u64> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append(entry)).await?
    }

    /// Append one record (blocking: from async code use [`AuditLog::append_async`]).
    /// Returns its `seq`.
    pub fn append(&self, entry: AuditEntry) -> anyhow::Result<u64> {
        self.lock()?.append(entry)
    }

    /// The newest record (repairing a torn tail first, as an append would).
    pub fn head(&self) -> anyhow::Result<Option<Head>> {
        Ok(self.lock()?.head.clone())
    }

    /// Take the log for writing: lock, open the active file, find the head,
    /// and set aside a torn tail (auditing that) before anything else is written.
    pub(crate) fn lock(&self) -> anyhow::Result<Locked<'_>> {
        let active = &self.files.active;
        if let Some(dir) = active.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = crate::fsx::lock_file(&self.files.lock(), true).map_err(anyhow::Error::from)?;
        let mut file = open_append(active)?;
        let tail = read_tail(&mut file).with_context(|| format!("reading {}", active.display()))?;
        let head = match &tail.last_line {
            Some(line) => Some(head_of(line, active)?),
            None => self.head_of_rotated()?,
        };
        let mut w = Locked {
            log: self,
            _lock: lock,
            file,
            len: tail.whole_len,
            head,
        };
        if tail.torn_bytes() > 0 {
            let after_seq = w.head.as_ref().map_or(0, |h| h.seq);
            let torn = set_aside_torn_tail(&self.files, &mut w.file, active, &tail, after_seq)?;
            tracing::warn!(
                file = %torn.file.display(),
                "audit log: a torn write of {} bytes (sha256 {}) after seq {} was set aside to {}; the chain continues from seq {}",
                torn.bytes, torn.sha256, torn.after_seq, torn.set_aside_to.display(), torn.after_seq
            );
            w.append(AuditEntry {
                actor: "agent".into(),
                action: "audit.torn_tail".into(),
                detail: serde_json::json!({
                    "file": torn.file,
                    "torn_bytes": torn.bytes,
                    "sha256": torn.sha256,
                    "set_aside_to": torn.set_aside_to,
                    "after_seq": torn.after_seq,
                }),
                ..Default::default()
            })?;
        }
        Ok(w)
    }

    /// The head when the active file is empty: the last line of the newest rotated file.
    fn head_of_rotated(&self) -> anyhow::Result<Option<Head>> {
        let Some(n) = self.files.rotated_numbers()?.last().copied() else {
            return Ok(None);
        };
        let path = self.files.rotated(n);
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let tail = read_tail(&mut f).with_context(|| format!("reading {}", path.display()))?;
        match &tail.last_line {
            Some(line) => Ok(Some(head_of(line, &path)?)),
            None => bail!(
                "the rotated audit file {} holds no whole record; run `cloudnx-agent audit verify`",
                path.display()
            ),
        }
    }
}

fn head_of(line: &[u8], file: &Path) -> anyhow::Result<Head> {
    Head::of_line(line).map_err(|e| {
        anyhow::anyhow!(
            "the last whole line of {} is {e}: the log was edited or damaged, so nothing more \
             is appended to it; run `cloudnx-agent audit verify` and move the damaged file aside",
            file.display()
        )
    })
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    let (f, created) = crate::fsx::open_append(path, LOG_MODE)
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    if created {
        sync_dir(path)?;
    }
    Ok(f)
}

/// fsync the directory holding `path` (a created or renamed entry survives a crash).
pub(crate) fn sync_dir(path: &Path) -> anyhow::Result<()> {
    crate::fsx::sync_dir(crate::fsx::parent_of(path))
}

/// Move the bytes after the last newline of `file` to a new side file, then
/// truncate `file` to its whole lines. The side file is durable before the
/// truncation, so the bytes are never lost.
pub(crate) fn set_aside_torn_tail(
    files: &LogFiles,
    file: &mut File,
    path: &Path,
    tail: &Tail,
    after_seq: u64,
) -> anyhow::Result<TornTail> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(tail.whole_len))?;
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading the torn tail of {}", path.display()))?;
    let side = files.torn_side_file(path, after_seq);
    let mut f = crate::fsx::create_new(&side, LOG_MODE)?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", side.display()))?;
    sync_dir(&side)?;
    file.set_len(tail.whole_len)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("truncating the torn tail of {}", path.display()))?;
    Ok(TornTail {
        file: path.to_owned(),
        set_aside_to: side,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        after_seq,
    })
}

/// The log held exclusively by this process.
pub(crate) struct Locked<'a> {
    log: &'a AuditLog,
    _lock: crate::fsx::Locked,
    file: File,
    len: u64,
    /// The newest record (None: the log is empty).
    pub head: Option<Head>,
}

impl Locked<'_> {
    /// Append one record and fsync it.
    pub fn append(&mut self, entry: AuditEntry) -> anyhow::Result<u64> {
        if self.len >= self.log.rotate_bytes {
            self.rotate()?;
        }
        let rec = Record::next(self.head.as_ref(), entry);
        let mut line = rec.to_line();
        let hash = sha256_hex(&line);
        line.push(b'\n');
        let active = &self.log.files.active;
        if let Err(e) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            // A partial write (disk full) must not stay behind as a torn line.
            let _ = self.file.set_len(self.len);
            return Err(e).with_context(|| format!("appending to {}", active.display()));
        }
        self.len += line.len() as u64;
        self.head = Some(Head { seq: rec.seq, hash });
        Ok(rec.seq)
    }

    /// Close the active file as the next numbered file and start a new one.
    /// The next record's `prev_hash` links to the last line of the closed file.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let files = &self.log.files;
        let n = files.rotated_numbers()?.last().copied().unwrap_or(0) + 1;
        let to = files.rotated(n);
        std::fs::rename(&files.active, &to)
            .with_context(|| format!("rotating {} to {}", files.active.display(), to.display()))?;
        sync_dir(&to)?;
        self.file = open_append(&files.active)?;
        self.len = 0;
        tracing::info!("audit log rotated to {}", to.display());
        Ok(())
    }
}
