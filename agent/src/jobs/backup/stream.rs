//! One dump, streamed once: a dump program's stdout (or a file: a vzdump
//! archive, [`Source`]) → SHA-256 of the plaintext
//! → OpenPGP encryption → SHA-256 of the ciphertext → parts → every
//! destination's upload at once. Memory is bounded by the part size times the
//! parts queued per destination; nothing touches disk here.
//!
//! A destination whose upload fails drops its receiver and is skipped from then
//! on; the others continue. `Feed::End` is sent only after the dump program
//! exited 0 and the message was fully encrypted, so an upload can never
//! complete from a partial dump.

use crate::crypto::Recipients;
use crate::progress::Progress;
use crate::store::{Cause, Destination, Feed, StoreResult};
use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// S3 allows 10 000 parts; part sizes double every this many parts.
const PARTS_PER_SIZE_STEP: u64 = 1000;
/// S3's largest part.
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
/// Shipped parts remembered for reuse (more than are ever in flight).
const MAX_SHIPPED: usize = 64;

/// The size of part `n` (1-based) for an initial size `base`: doubles every
/// 1000 parts, so 10 000 parts hold 1023 × 1000 × base (≈ 7.8 TiB at 8 MiB).
pub fn part_size(base: u64, n: u64) -> u64 {
    let step = (n.saturating_sub(1) / PARTS_PER_SIZE_STEP).min(20);
    (base << step).min(MAX_PART)
}

/// What was streamed.
#[derive(Debug, Clone, PartialEq)]
pub struct Streamed {
    /// Bytes the dump program wrote.
    pub plaintext_size: u64,
    /// Their SHA-256 (hex).
    pub plaintext_sha256: String,
    /// Bytes of the OpenPGP message.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
}

struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    n: u64,
    progress: Arc<Progress>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        self.progress.add(k as u64);
        Ok(k)
    }
}

/// Cuts the ciphertext into parts and hands each to every live destination.
struct PartWriter {
    senders: Vec<Option<mpsc::Sender<Feed>>>,
    buf: BytesMut,
    /// Parts handed to the destinations, to reuse once they are done with them.
    shipped: Vec<Bytes>,
    base: u64,
    part: u64,
    hash: Sha256,
    n: u64,
}

impl PartWriter {
    fn target(&self) -> usize {
        usize::try_from(part_size(self.base, self.part + 1)).unwrap_or(usize::MAX)
    }

    fn ship(&mut self) -> std::io::Result<()> {
        let part: Bytes = self.buf.split().freeze();
        self.part += 1;
        self.shipped.push(part.clone());
        for s in &mut self.senders {
            // A closed channel is a destination that already failed: skip it.
            if s.as_ref()
                .is_some_and(|tx| tx.blocking_send(Feed::Part(part.clone())).is_err())
            {
                *s = None;
            }
        }
        if self.senders.iter().all(Option::is_none) {
            return Err(std::io::Error::other("every destination failed"));
        }
        crate::fault_point!("backup::after_part");
        self.buf = self.reclaim();
        self.buf.reserve(self.target());
        Ok(())
    }

    /// A buffer for the next part: the first shipped part every destination
    /// has finished with, if any (so a backup does not map, fault in and unmap
    /// a fresh multi-MiB buffer per part). Other finished parts are freed
    /// rather than kept, so at most one idle buffer exists beside the parts in
    /// flight and the memory bound is unchanged.
    fn reclaim(&mut self) -> BytesMut {
        let mut found: Option<BytesMut> = None;
        self.shipped.retain_mut(|b| {
            if b.is_unique() {
                if found.is_none() {
                    found = std::mem::take(b).try_into_mut().ok();
                }
                false
            } else {
                true
            }
        });
        // Parts still held elsewhere are in flight; a bounded list of them is
        // enough (dropping a clone here frees nothing the uploads still use).
        if self.shipped.len() > MAX_SHIPPED {
            self.shipped.drain(..self.shipped.len() - MAX_SHIPPED);
        }
        found.map_or_else(BytesMut::new, |mut b| {
            b.clear();
            b
        })
    }
}

impl Write for PartWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.hash.update(b);
        self.n += b.len() as u64;
        let mut rest = b;
        while !rest.is_empty() {
            let room = self.target() - self.buf.len();
            let k = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if self.buf.len() >= self.target() {
                self.ship()?;
            }
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What is streamed: a dump program's stdout, or a file already written
/// (a vzdump archive). One pipeline, two sources.
pub enum Source {
    /// Run this program and stream its stdout; it must exit 0.
    Program(Command),
    /// Stream this open file to its end.
    File(std::fs::File),
}

/// A reader that fails once the job is cancelled (a file has no process to kill).
struct CancelReader<R> {
    inner: R,
    cancel: CancellationToken,
}

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

fn part_writer(senders: Vec<mpsc::Sender<Feed>>, base_part: u64) -> PartWriter {
    PartWriter {
        senders: senders.into_iter().map(Some).collect(),
        buf: BytesMut::with_capacity(usize::try_from(base_part).unwrap_or(8 << 20)),
        shipped: Vec::new(),
        base: base_part,
        part: 0,
        hash: Sha256::new(),
        n: 0,
    }
}

type Encrypted<R> = (anyhow::Result<()>, HashingReader<R>, PartWriter);

/// Encrypt everything `inner` yields into parts for the senders, on a blocking thread.
async fn encrypt<R: Read + Send + 'static>(
    inner: R,
    recipients: Arc<Recipients>,
    writer: PartWriter,
    progress: &Arc<Progress>,
) -> anyhow::Result<Encrypted<R>> {
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = HashingReader {
            inner,
            hash: Sha256::new(),
            n: 0,
            progress,
        };
        let mut w = writer;
        let r = recipients.encrypt(&mut reader, &mut w).and_then(|()| {
            if w.buf.is_empty() {
                Ok(())
            } else {
                w.ship()
                    .context("handing the last part to the destinations")
            }
        });
        (r, reader, w)
    })
    .await
    .context("the encryption thread panicked")
}

/// Every live sender gets `Feed::End`; what was streamed.
async fn finish<R>(reader: HashingReader<R>, writer: PartWriter) -> Streamed {
    let PartWriter {
        senders, hash, n, ..
    } = writer;
    for tx in senders.into_iter().flatten() {
        // A destination that failed at the very end shows that in its own result.
        let _ = tx.send(Feed::End).await;
    }
    Streamed {
        plaintext_size: reader.n,
        plaintext_sha256: hex::encode(reader.hash.finalize()),
        size: n,
        sha256: hex::encode(hash.finalize()),
    }
}

fn cancelled(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: cancelled (the agent is shutting down); the partial upload was discarded"
    )
}

/// What [`fan_out`] did: the stream, and each destination's upload (its size).
pub struct FannedOut {
    /// The stream's result.
    pub streamed: anyhow::Result<Streamed>,
    /// Each upload's result, in the order of the targets.
    pub uploaded: Vec<StoreResult<u64>>,
}

impl FannedOut {
    /// Why each destination failed, when the stream failed: the stream sees
    /// only closed channels ("every destination failed"), so each
    /// destination's own failure says why (EROFS and the path, the server's
    /// refusal). Uploads that merely saw the stream end or the job
    /// cancelled add nothing.
    pub fn upload_errors(&self) -> Vec<Option<String>> {
        self.uploaded
            .iter()
            .map(|up| match up {
                Err(e)
                    if self.streamed.is_err()
                        && !matches!(e.cause(), Cause::Incomplete | Cause::Cancelled) =>
                {
                    Some(e.to_string())
                }
                _ => None,
            })
            .collect()
    }
}

/// The one pipeline for every source: stream `source` encrypted to
/// `recipients` into an upload to `key` on each destination at once (one
/// channel per destination; a part is shared, not copied).
#[allow(clippy::too_many_arguments)]
pub async fn fan_out(
    source: Source,
    what: &str,
    recipients: Arc<Recipients>,
    targets: &[(Arc<dyn Destination>, String)],
    base_part: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> FannedOut {
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for (d, key) in targets {
        let (tx, rx) = mpsc::channel(1);
        senders.push(tx);
        uploads.push(async move { d.upload(key, rx).await });
    }
    let (streamed, uploaded) = tokio::join!(
        run(source, what, recipients, senders, base_part, cancel, progress),
        futures_util::future::join_all(uploads)
    );
    FannedOut { streamed, uploaded }
}

/// Stream `source`, encrypted to `recipients`, to every sender.
/// On success every live sender got `Feed::End`; on failure none did (the
/// uploads see their channel close and discard what they have).
pub async fn run(
    source: Source,
    what: &str,
    recipients: Arc<Recipients>,
    senders: Vec<mpsc::Sender<Feed>>,
    base_part: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> anyhow::Result<Streamed> {
    match source {
        Source::Program(cmd) => {
            run_program(cmd, what, recipients, senders, base_part, cancel, progress).await
        }
        Source::File(file) => {
            let inner = CancelReader {
                inner: file,
                cancel: cancel.clone(),
            };
            let writer = part_writer(senders, base_part);
            let (r, reader, writer) = encrypt(inner, recipients, writer, progress).await?;
            if cancel.is_cancelled() {
                return Err(cancelled(what));
            }
            r.with_context(|| format!("streaming {what}"))?;
            Ok(finish(reader, writer).await)
        }
    }
}

/// [`run`] for a program: run `cmd`, encrypt its stdout.
async fn run_program(
    mut cmd: Command,
    what: &str,
    recipients: Arc<Recipients>,
    senders: Vec<mpsc::Sender<Feed>>,
    base_part: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> anyhow::Result<Streamed> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} for {what}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let stdout = child.stdout.take().context("no stdout pipe")?;
    // A 1 MiB pipe (the default unprivileged maximum) instead of 64 KiB: the
    // dump program writes in 4 KiB pieces, and each full pipe is a pair of
    // context switches between it and the encryption thread. Best effort.
    let _ = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let stderr_task = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all).trim().to_owned();
        // Keep the end: that is where the reason is.
        let mut cut = text.len().saturating_sub(2000);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text[cut..].to_owned()
    });

    // Cancellation (SIGTERM, shutdown) kills the dump; the stream then fails
    // below like any other broken dump, so nothing is left looking complete.
    let done = CancellationToken::new();
    let watcher = {
        let (cancel, done) = (cancel.clone(), done.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => { let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL); }
                () = done.cancelled() => {}
            }
        })
    };

    let writer = part_writer(senders, base_part);
    let (enc_result, reader, writer) = encrypt(stdout, recipients, writer, progress).await?;
    if enc_result.is_err() {
        // Nobody reads the pipe any more: make sure the dump does not block forever.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .with_context(|| format!("waiting for {program}"))?;
    done.cancel();
    let _ = watcher.await;
    let stderr_text = stderr_task.join().unwrap_or_default();

    if cancel.is_cancelled() {
        return Err(cancelled(what));
    }
    // A failed encryption (every destination failed) killed the dump above:
    // its status would only say SIGKILL.
    enc_result.with_context(|| format!("streaming {what}"))?;
    if !status.success() {
        let why = if stderr_text.is_empty() {
            "no message".to_owned()
        } else {
            stderr_text
        };
        bail!("{program} for {what} failed ({status}): {why}");
    }

    Ok(finish(reader, writer).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(tx: mpsc::Sender<Feed>, base: u64) -> PartWriter {
        PartWriter {
            senders: vec![Some(tx)],
            buf: BytesMut::new(),
            shipped: Vec::new(),
            base,
            part: 0,
            hash: Sha256::new(),
            n: 0,
        }
    }

    fn next_part(rx: &mut mpsc::Receiver<Feed>) -> Bytes {
        match rx.try_recv() {
            Ok(Feed::Part(b)) => b,
            _ => panic!("expected a part"),
        }
    }

    #[test]
    fn a_part_the_destinations_are_done_with_is_reused_and_idle_ones_are_freed() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut w = writer(tx, 1024);
        w.write_all(&[1; 1024]).unwrap();
        let first = next_part(&mut rx);
        let first_at = first.as_ptr() as usize;
        drop(first); // the destination is done with part 1
        w.write_all(&[2; 1024]).unwrap(); // ships part 2, reclaims part 1's buffer
        let second = next_part(&mut rx);
        assert_ne!(second.as_ptr() as usize, first_at, "part 2 still in use");
        w.write_all(&[3; 1024]).unwrap();
        let third = next_part(&mut rx);
        assert_eq!(
            third.as_ptr() as usize,
            first_at,
            "part 1's buffer was not reused"
        );
        assert_eq!(&third[..], &[3; 1024][..]);
        assert_eq!(
            &second[..],
            &[2; 1024][..],
            "a part in flight was overwritten"
        );
        // Two finished parts: one becomes the next buffer, the other is freed,
        // and nothing idle stays in the list.
        drop((second, third));
        w.write_all(&[4; 1024]).unwrap();
        assert_eq!(
            w.shipped.len(),
            1,
            "only part 4, still queued, is remembered"
        );
        assert!(!w.shipped[0].is_unique());
    }

    #[test]
    fn part_sizes_grow_so_ten_thousand_parts_hold_terabytes() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        assert_eq!(part_size(base, 10_000), 512 * base);
        let total: u64 = (1..=10_000).map(|n| part_size(base, n)).sum();
        assert!(total > 7 << 40, "10 000 parts hold only {total} bytes");
        assert!(part_size(base, 1 << 40) <= MAX_PART);
    }
}
