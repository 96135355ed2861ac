//! Where backups are written: the [`Destination`] trait and its two real
//! implementations, a local directory ([`fs::FsStore`]) and any S3-compatible
//! API ([`s3::S3Store`]).
//!
//! Owns: object keys relative to the destination root, atomic visibility of
//! an object (a filesystem object appears by rename; an S3 object by completing
//! its multipart upload), confirming sizes, listing and deleting.
//!
//! Every step reports a [`StoreError`]: the step for humans, a [`Cause`] for
//! callers to act on. Every answer read is bounded ([`Destination::get`]
//! takes a limit; S3 answers and listings have their own), and a destination
//! opened for a job ends its waits when the job is cancelled.
//!
//! Must never: decide *what* to delete (retention is a pure function in
//! `jobs::backup::retention`), hold a whole object in memory, or leave a failed
//! upload looking like an object (temp files are removed, multipart uploads aborted).

mod error;
pub mod fs;
pub mod s3;

pub use error::{Cause, StoreError, StoreResult};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// The most [`Destination::get`] reads for a manifest (they are a few KiB).
pub const MANIFEST_LIMIT: u64 = 1 << 20;

/// The marker that reserves a stamp directory for one writer:
/// `{dir}/.writer`, holding the writer's id.
pub const WRITER: &str = ".writer";

/// What [`Destination::reserve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The directory is ours now.
    Ours,
    /// Someone reserved it first; their id, when the marker says.
    Taken {
        /// The other writer's id.
        writer: Option<String>,
    },
}

/// What the producer sends an upload: parts in order, then `End`. A channel
/// that closes without `End` means the stream failed: the upload is discarded.
#[derive(Debug, Clone)]
pub enum Feed {
    /// The next part of the object.
    Part(Bytes),
    /// The object is complete.
    End,
}

/// An object found by [`Destination::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the destination root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The object is gone.
    Deleted,
    /// The object was already absent.
    Absent,
    /// The store refused: the object is under retention (Object Lock). Expected, not an error.
    Locked,
}

/// A place backups are written to.
pub trait Destination: Send + Sync {
    /// The configured name (metrics label, messages).
    fn name(&self) -> &str;

    /// Where it is, for humans (`s3://bucket` at endpoint, or a path).
    fn location(&self) -> String;

    /// Stream an object from `parts` to `key`; it becomes visible only when
    /// `Feed::End` arrives and everything was written. Returns its size.
    fn upload<'a>(
        &'a self,
        key: &'a str,
        parts: mpsc::Receiver<Feed>,
    ) -> BoxFuture<'a, StoreResult<u64>>;

    /// Reserve the (stamp) directory `dir` (ending in `/`) for `writer`, so
    /// two runs — two agents sharing a prefix — can never write into one:
    /// an exclusive `mkdir` on a filesystem, a conditional `If-None-Match: *`
    /// PUT of its [`WRITER`] marker on S3 (with a checked fallback for servers
    /// without conditional writes).
    fn reserve<'a>(
        &'a self,
        dir: &'a str,
        writer: &'a str,
    ) -> BoxFuture<'a, StoreResult<Reservation>>;

    /// Undo a reservation of ours that holds nothing else yet.
    fn release<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, StoreResult<()>>;

    /// Who reserved `dir`: its [`WRITER`] marker; None when there is none.
    fn writer<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            match self.get(&format!("{dir}{WRITER}"), 4096).await {
                Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().to_owned())),
                Err(e) if matches!(e.cause(), Cause::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Write a small object (a manifest) atomically, never over an existing
    /// one: [`Cause::Exists`] when `key` is already there.
    fn put_new<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>>;

    /// Write a small object (a manifest) atomically.
    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>>;

    /// Read a small object (a manifest) of at most `limit` bytes; a larger
    /// one is [`Cause::TooLarge`] and is not read beyond the limit.
    fn get<'a>(&'a self, key: &'a str, limit: u64) -> BoxFuture<'a, StoreResult<Bytes>>;

    /// Stream an object into `to` (a file or a pipe's write end, closed when
    /// done); returns its size and SHA-256 (hex), computed while the bytes pass.
    fn fetch<'a>(
        &'a self,
        key: &'a str,
        to: std::fs::File,
    ) -> BoxFuture<'a, StoreResult<(u64, String)>>;

    /// The size of an object, None if absent.
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<u64>>>;

    /// Every object under `prefix` (a `/`-terminated key prefix).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<ObjectInfo>>>;

    /// Delete one object.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Deleted>>;

    /// Turn the Object Lock legal hold of `key` on or off (S3's
    /// PutObjectLegalHold). Ok(false) where the store has no legal holds (a
    /// filesystem, a bucket without Object Lock): nothing to do.
    fn set_legal_hold<'a>(&'a self, _key: &'a str, _on: bool) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async { Ok(false) })
    }

    /// Whether `key` carries an Object Lock legal hold.
    fn legal_hold<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async { Ok(false) })
    }

    /// When the object's Object Lock retention ends (RFC 3339), if it is
    /// locked; None where the store has no locks.
    fn locked_until<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async { Ok(None) })
    }

    /// Abort uploads under `prefix` that were started and never completed nor
    /// aborted (the agent was killed mid-upload); returns their keys. Only
    /// called while the backup lock is held, so none of them is still live.
    /// A filesystem destination has none: its temp files are listed objects.
    /// A server that cannot list them answers [`Cause::Unsupported`].
    /// `may_abort(key)` says which uploads are dead (another agent's live
    /// upload under a shared prefix must not be aborted). The server's
    /// `Initiated` time is not used: some S3-compatible servers report a
    /// constant.
    fn abort_stale_uploads<'a>(
        &'a self,
        _prefix: &'a str,
        _may_abort: &'a (dyn Fn(&str) -> bool + Sync),
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
