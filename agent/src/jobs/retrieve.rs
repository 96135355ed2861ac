//! Getting one backup back — the one path the drill, `restore` (and the VM
//! restore) share: the manifest (size-capped), then the object streamed from
//! the destination through SHA-256 into streaming OpenPGP decryption, joined
//! by a pipe (the ciphertext never lands on disk, and an offsite download
//! overlaps decryption), the plaintext hashed as it is written. Nothing
//! written here may be used before [`fetch_decrypt`] returned Ok: only then
//! do the object's and the plaintext's sizes and SHA-256s match the manifest
//! (and the OpenPGP MDC was checked at the end of the message).

use crate::jobs::backup::manifest::Manifest;
use crate::progress::{Counting, Progress};
use crate::store::Destination;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The largest manifest read (real ones are a few KiB; a hostile or broken
/// destination must not make the agent buffer gigabytes): the store's cap.
pub const MAX_MANIFEST: u64 = crate::store::MANIFEST_LIMIT;

/// What the object and its plaintext must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Object size.
    pub size: u64,
    /// Object SHA-256 (hex).
    pub sha256: String,
    /// Plaintext size.
    pub plaintext_size: u64,
    /// Plaintext SHA-256 (hex).
    pub plaintext_sha256: String,
}

impl From<&Manifest> for Expected {
    fn from(m: &Manifest) -> Self {
        Expected {
            size: m.size_bytes,
            sha256: m.sha256.clone(),
            plaintext_size: m.plaintext_size_bytes,
            plaintext_sha256: m.plaintext_sha256.clone(),
        }
    }
}

/// How a verified fetch went.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Time to the last byte downloaded.
    pub download: Duration,
    /// Decryption time beyond the download it overlapped.
    pub decrypt: Duration,
}

/// Why a backup could not be got back intact. Nothing written may be used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The download failed.
    #[error("downloading {key}: {source:#}")]
    Download {
        /// Object key.
        key: String,
        /// Cause.
        source: anyhow::Error,
    },
    /// The object is not the one the manifest describes.
    #[error("{key}: downloaded {size} bytes with SHA-256 {sha256}, the manifest says {want_size} bytes, {want_sha256}: the object is damaged or was replaced (checksum mismatch)")]
    ObjectMismatch {
        /// Object key.
        key: String,
        /// Downloaded size.
        size: u64,
        /// Downloaded SHA-256.
        sha256: String,
        /// Manifest's size.
        want_size: u64,
        /// Manifest's SHA-256.
        want_sha256: String,
    },
    /// Decryption failed (wrong key, damaged message, MDC).
    #[error("decrypting {key}: {source:#}")]
    Decrypt {
        /// Object key.
        key: String,
        /// Cause.
        source: anyhow::Error,
    },
    /// The plaintext is not the dump the manifest describes.
    #[error("{key}: decrypted {size} bytes with SHA-256 {sha256}, the manifest says {want_size} bytes, {want_sha256} (checksum mismatch)")]
    PlaintextMismatch {
        /// Object key.
        key: String,
        /// Decrypted size.
        size: u64,
        /// Decrypted SHA-256.
        sha256: String,
        /// Manifest's size.
        want_size: u64,
        /// Manifest's SHA-256.
        want_sha256: String,
    },
}

/// Read and parse a manifest, refusing one larger than [`MAX_MANIFEST`].
pub async fn read_manifest(dest: &dyn Destination, key: &str) -> anyhow::Result<Manifest> {
    let bytes = dest.get(key, MAX_MANIFEST).await?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_MANIFEST,
        "{key} on {} is {} bytes, more than any manifest ({MAX_MANIFEST}): refusing it",
        dest.name(),
        bytes.len()
    );
    serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("parsing {key}: {e}"))
}

/// The largest encrypted details object read (row counts of a few hundred
/// thousand tables).
const MAX_DETAILS: u64 = 64 << 20;

/// Fill `m.row_counts` from the encrypted details beside the manifest at
/// `manifest_key` (SPEC §10), decrypted with `secret_key`; their SHA-256 must
/// be the manifest's. A manifest without details (older backups) is left as is.
pub async fn read_details(
    dest: &dyn Destination,
    manifest_key: &str,
    secret_key: &Path,
    m: &mut Manifest,
) -> anyhow::Result<()> {
    use sha2::Digest;
    let Some(want) = m.details_sha256.clone() else {
        return Ok(());
    };
    let key = match manifest_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}", crate::jobs::backup::manifest::DETAILS),
        None => crate::jobs::backup::manifest::DETAILS.to_owned(),
    };
    let bytes = dest.get(&key, MAX_DETAILS).await?;
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    anyhow::ensure!(
        got == want,
        "{key} on {}: SHA-256 {got}, the manifest says {want}: the details are damaged or were replaced (checksum mismatch)",
        dest.name()
    );
    let secret_key = secret_key.to_owned();
    let plain = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::crypto::decrypt(&secret_key, &mut &bytes[..], &mut out).map(|_| out)
    })
    .await?
    .with_context(|| format!("decrypting {key}"))?;
    let d: crate::jobs::backup::manifest::Details =
        serde_json::from_slice(&plain).with_context(|| format!("parsing {key}"))?;
    m.row_counts = d.row_counts;
    Ok(())
}

/// Stream `key` from `dest` through decryption with the secret key in
/// `secret_key` into `out`, and check the object and the plaintext against
/// `want`. `progress` counts the downloaded bytes. The decrypting side always
/// reads the download to its end, so a damaged object is named as such
/// (its checksum) rather than as a decryption error.
pub async fn fetch_decrypt(
    dest: &dyn Destination,
    key: &str,
    secret_key: &Path,
    out: std::fs::File,
    want: &Expected,
    progress: &std::sync::Arc<Progress>,
) -> Result<Fetched, FetchError> {
    let t = Instant::now();
    let (rx, tx) = pipe().map_err(|e| FetchError::Download {
        key: key.to_owned(),
        source: e.context("creating the download pipe"),
    })?;
    let fetch = async {
        let r = dest.fetch(key, tx).await;
        (r, t.elapsed())
    };
    let ((fetched, download), decrypted) =
        tokio::join!(fetch, decrypt_stream(secret_key, rx, out, progress.clone()));
    let (size, sha256) = fetched.map_err(|source| FetchError::Download {
        key: key.to_owned(),
        source: source.into(),
    })?;
    if size != want.size || sha256 != want.sha256 {
        return Err(FetchError::ObjectMismatch {
            key: key.to_owned(),
            size,
            sha256,
            want_size: want.size,
            want_sha256: want.sha256.clone(),
        });
    }
    let (n, psha) = decrypted.map_err(|source| FetchError::Decrypt {
        key: key.to_owned(),
        source,
    })?;
    if n != want.plaintext_size || psha != want.plaintext_sha256 {
        return Err(FetchError::PlaintextMismatch {
            key: key.to_owned(),
            size: n,
            sha256: psha,
            want_size: want.plaintext_size,
            want_sha256: want.plaintext_sha256.clone(),
        });
    }
    Ok(Fetched {
        download,
        decrypt: t.elapsed().saturating_sub(download),
    })
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

/// Decrypt the message arriving on `input` into `out`; (plaintext size,
/// plaintext SHA-256). Reads `input` to its end whatever happens, so the
/// writer always finishes.
async fn decrypt_stream(
    key: &Path,
    input: std::fs::File,
    out: std::fs::File,
    progress: std::sync::Arc<Progress>,
) -> anyhow::Result<(u64, String)> {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: input,
                progress: &progress,
            },
        );
        let r = (|| {
            let mut w = HashingWriter::spawn(out)?;
            let n = crate::crypto::decrypt(&key, &mut input, &mut w);
            // The writer's own error (a full disk) explains a failed
            // decryption better than the broken pipe it caused.
            let (written, sha256) = w.finish()?;
            let n = n?;
            anyhow::ensure!(
                n == written,
                "decryption reported {n} bytes, {written} were written"
            );
            Ok((n, sha256))
        })();
        let _ = std::io::copy(&mut input, &mut std::io::sink());
        r
    })
    .await?
}

/// Plaintext hashed (SHA-256) and written to a file on a thread of its own,
/// in 1 MiB pieces, so decryption (AES, the SHA-1 MDC) and hashing + writing
/// run on two cores instead of one after the other. Pieces come back to be
/// refilled (at most four exist), so no fresh pages are faulted in per MiB.
struct HashingWriter {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<(u64, String)>>>,
}

impl HashingWriter {
    const PIECE: usize = 1 << 20;

    fn spawn(mut out: std::fs::File) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (give_back, back) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("plaintext-writer".into())
            .spawn(move || {
                use sha2::Digest;
                use std::io::Write;
                let (mut h, mut n) = (sha2::Sha256::new(), 0u64);
                for mut piece in rx {
                    h.update(&piece);
                    out.write_all(&piece)?;
                    n += piece.len() as u64;
                    piece.clear();
                    let _ = give_back.try_send(piece);
                }
                out.flush()?;
                Ok((n, hex::encode(h.finalize())))
            })
            .context("starting the plaintext writer thread")?;
        Ok(HashingWriter {
            buf: Vec::with_capacity(Self::PIECE),
            tx: Some(tx),
            back,
            thread: Some(thread),
        })
    }

    fn send(&mut self) -> std::io::Result<()> {
        let next = self
            .back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(Self::PIECE));
        let piece = std::mem::replace(&mut self.buf, next);
        match &self.tx {
            Some(tx) if tx.send(piece).is_ok() => Ok(()),
            // The thread ended early: its error comes out of `finish`.
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the plaintext writer stopped",
            )),
        }
    }

    /// Everything written and hashed: (bytes, SHA-256 hex).
    fn finish(mut self) -> anyhow::Result<(u64, String)> {
        let sent = if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        };
        drop(self.tx.take());
        let r = self
            .thread
            .take()
            .context("the plaintext writer is gone")?
            .join()
            .map_err(|_| anyhow::anyhow!("the plaintext writer thread panicked"))?
            .context("writing the decrypted backup")?;
        sent.context("writing the decrypted backup")?;
        Ok(r)
    }
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let take = b.len().min(Self::PIECE - self.buf.len());
        self.buf.extend_from_slice(&b[..take]);
        if self.buf.len() == Self::PIECE {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for HashingWriter {
    fn drop(&mut self) {
        // Dropped without `finish` (a panic): stop the thread, do not wait.
        drop(self.tx.take());
    }
}

/// Differences between the manifest's row counts and the restored ones.
pub fn count_differences(want: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>) -> Vec<String> {
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
        assert!(count_differences(&m(&[("a", 1)]), &m(&[("a", 1)])).is_empty());
        assert_eq!(
            count_differences(&m(&[("a", 1)]), &m(&[("a", 2)])),
            vec!["a: restored 2, manifest 1"]
        );
        assert_eq!(
            count_differences(&m(&[("a", 1)]), &m(&[])),
            vec!["a: missing after restore (manifest 1)"]
        );
        assert_eq!(
            count_differences(&m(&[]), &m(&[("b", 0)])),
            vec!["b: present after restore, not in the manifest"]
        );
    }
}
