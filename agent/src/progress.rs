//! How far a long job has got: a phase name and a byte count, updated by the
//! duty as bytes flow and read by whoever wants to show it (the CLI draws it
//! on a terminal; the daemon never reads it). A leaf; lock-free counters, so
//! the hot loops pay one atomic add per chunk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Phase and bytes of one run.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<String>,
    done: AtomicU64,
    /// 0 = unknown.
    total: AtomicU64,
}

/// A moment of a [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// What the job is doing (`"download app"`, `"pg_restore"`, …).
    pub phase: String,
    /// Bytes moved in this phase.
    pub done: u64,
    /// Bytes the phase will move, when known.
    pub total: Option<u64>,
}

impl Progress {
    /// Start a phase: the byte count restarts at 0.
    pub fn phase(&self, name: impl Into<String>, total: Option<u64>) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = name.into();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }

    /// Count `n` more bytes.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Where it is now.
    pub fn seen(&self) -> Seen {
        let total = self.total.load(Ordering::Relaxed);
        Seen {
            phase: self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            done: self.done.load(Ordering::Relaxed),
            total: (total > 0).then_some(total),
        }
    }
}

/// A reader that counts what passes into a [`Progress`].
pub struct Counting<'a, R> {
    /// The reader.
    pub inner: R,
    /// Where to count.
    pub progress: &'a Progress,
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_restarts_the_count_and_a_reader_counts_what_passes() {
        let p = Progress::default();
        p.phase("download", Some(10));
        let mut r = Counting {
            inner: &b"0123456789"[..],
            progress: &p,
        };
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(
            p.seen(),
            Seen {
                phase: "download".into(),
                done: 10,
                total: Some(10)
            }
        );
        p.phase("restore", None);
        assert_eq!(p.seen().done, 0);
        assert_eq!(p.seen().total, None);
    }
}
