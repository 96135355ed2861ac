//! What a destination reports when a step fails: [`StoreError`] names the step
//! for humans ("uploading part 37 (8388608 bytes) of app.dump.pgp") and
//! carries a [`Cause`] that callers act on (retention treats
//! [`Cause::Unsupported`] clean-up as skipped, a backup stops at
//! [`Cause::Cancelled`]). Both destinations report through it, so a caller never
//! needs to know which one failed, nor to downcast.

use std::path::PathBuf;
use std::time::Duration;

/// A failed destination step: which step, and why.
#[derive(Debug)]
pub struct StoreError {
    step: String,
    cause: Cause,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.step.is_empty() {
            write!(f, "{}", self.cause)
        } else {
            write!(f, "{}: {}", self.step, self.cause)
        }
    }
}

/// The cause is part of the message, not a source: an error chain printed
/// with `{:#}` names it once.
impl std::error::Error for StoreError {}

/// Why a destination step failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A conditional write found the object there already.
    #[error("{key} exists already (another writer?)")]
    Exists {
        /// The key.
        key: String,
    },
    /// The object does not exist; `detail` is the server's or the OS's words.
    #[error("{detail}")]
    NotFound {
        /// "HTTP 404 NoSuchKey: …", "/path: No such file or directory (os error 2)".
        detail: String,
    },
    /// The server refused the request with an error answer (S3 error code and
    /// message; `AccessDenied` on a locked version is a 403).
    #[error("HTTP {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// S3 error code (`AccessDenied`, `SlowDown`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server does not implement the operation (HTTP 501): asking again
    /// will not help, and callers may treat optional operations as skipped.
    #[error("HTTP 501 {code}: {message}")]
    Unsupported {
        /// S3 error code (usually `NotImplemented`).
        code: String,
        /// The server's message.
        message: String,
    },
    /// No connection, or it broke before an answer was complete.
    #[error("{endpoint} unreachable: {detail}")]
    Unreachable {
        /// The endpoint, as configured.
        endpoint: String,
        /// The transport's own words.
        detail: String,
    },
    /// The peer went silent for longer than the transport waits.
    #[error("{endpoint} did not answer within {after:?}")]
    TimedOut {
        /// The endpoint, as configured.
        endpoint: String,
        /// How long it was silent.
        after: Duration,
    },
    /// An answer or object was larger than the reader accepts; it was not
    /// read beyond the limit.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// "the answer from {endpoint}", or the file's path.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// An answer that does not follow the protocol (unreadable XML, a missing
    /// header, a listing that repeats itself or never ends).
    #[error("{from} answered out of protocol: {detail}")]
    Malformed {
        /// The endpoint it came from.
        from: String,
        /// What was wrong.
        detail: String,
    },
    /// A filesystem call failed; the OS error says why (EROFS, ENOSPC, …).
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was done ("creating", "fsync of", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The object key cannot name a file (empty, `.` or `..` component).
    #[error("refusing the object key {key:?}: empty, `.` or `..` component")]
    BadKey {
        /// The key.
        key: String,
    },
    /// The destination is not usable as configured (credentials, endpoint).
    #[error("{0}")]
    Setup(String),
    /// The upload's feed closed without [`super::Feed::End`]: the producer
    /// failed, so the object was discarded. A consequence, not a cause.
    #[error("the stream ended before the object was complete")]
    Incomplete,
    /// The job was cancelled (SIGTERM, shutdown) while this step waited.
    #[error("cancelled (the agent is shutting down)")]
    Cancelled,
}

impl StoreError {
    /// A failure of `step` because of `cause`.
    pub fn new(step: impl Into<String>, cause: Cause) -> Self {
        StoreError {
            step: step.into(),
            cause,
        }
    }

    /// What happened, for callers to act on.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// What happened, owned (to report it from another step).
    pub fn into_cause(self) -> Cause {
        self.cause
    }

    /// The step that failed, for humans.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The same failure seen from an enclosing step ("starting …: HEAD …").
    #[must_use]
    pub fn within(mut self, outer: impl std::fmt::Display) -> Self {
        self.step = if self.step.is_empty() {
            outer.to_string()
        } else {
            format!("{outer}: {}", self.step)
        };
        self
    }

    /// The job was cancelled while this step waited.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.cause, Cause::Cancelled)
    }
}

impl Cause {
    /// This cause as a failure of `step`.
    pub fn during(self, step: impl Into<String>) -> StoreError {
        StoreError::new(step, self)
    }

    /// Whether asking again may succeed: a 5xx other than 501, a 429, a broken
    /// or silent connection.
    pub fn is_transient(&self) -> bool {
        match self {
            Cause::Refused { status, .. } => *status >= 500 || *status == 429,
            Cause::Unreachable { .. } | Cause::TimedOut { .. } => true,
            _ => false,
        }
    }
}

/// Result of a destination step.
pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_step_then_the_cause() {
        let e = Cause::Refused {
            status: 500,
            code: "InternalError".into(),
            message: "try again".into(),
        }
        .during("uploading part 37 (5 bytes) of a/app.dump.pgp");
        assert_eq!(
            e.to_string(),
            "uploading part 37 (5 bytes) of a/app.dump.pgp: HTTP 500 InternalError: try again"
        );
        let e = Cause::Io {
            op: "creating",
            path: "/mnt/b/x".into(),
            source: std::io::Error::from_raw_os_error(30),
        }
        .during("")
        .within("writing a/manifest.json");
        assert_eq!(
            e.to_string(),
            "writing a/manifest.json: creating /mnt/b/x: Read-only file system (os error 30)"
        );
        assert_eq!(
            Cause::Cancelled.during("").to_string(),
            Cause::Cancelled.to_string()
        );
    }

    #[test]
    fn only_server_trouble_and_broken_connections_are_worth_another_try() {
        let refused = |status| Cause::Refused {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(refused(500).is_transient());
        assert!(refused(503).is_transient());
        assert!(refused(429).is_transient());
        assert!(!refused(403).is_transient());
        assert!(!refused(404).is_transient());
        let unsupported = Cause::Unsupported {
            code: "NotImplemented".into(),
            message: String::new(),
        };
        assert!(!unsupported.is_transient());
        assert!(Cause::TimedOut {
            endpoint: "e".into(),
            after: Duration::from_secs(1)
        }
        .is_transient());
        assert!(!Cause::Cancelled.is_transient());
        assert!(!Cause::TooLarge {
            what: "e".into(),
            limit: 1
        }
        .is_transient());
    }
}
