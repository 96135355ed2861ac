//! `[audit]`: the hash-chained audit log and its signed checkpoints.

use super::common::*;
use super::problem::Check;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Smallest `rotate_bytes` accepted.
pub const MIN_ROTATE_BYTES: u64 = 1024;

/// `[audit]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    path: Opt<PathBuf>,
    signing_key_file: Opt<PathBuf>,
    checkpoint_interval_seconds: Opt<u64>,
    rotate_bytes: Opt<u64>,
}

/// Validated `[audit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// The JSON Lines file (rotated files get `.1`, `.2`, … suffixes).
    pub path: PathBuf,
    /// Ed25519 PKCS#8 PEM key; created 0600 if absent.
    pub signing_key_file: PathBuf,
    /// How often a checkpoint seals the head (when there are new records).
    pub checkpoint_interval_seconds: u64,
    /// Rotate the active file once it is larger than this.
    pub rotate_bytes: u64,
}

impl RawAudit {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        check_abs(c, "path", &self.path);
        check_secret(c, "signing_key_file", &self.signing_key_file, true);
        if let Some(i) = &self.checkpoint_interval_seconds {
            if *i.get_ref() == 0 {
                c.err(
                    i.span(),
                    "checkpoint_interval_seconds must be at least 1",
                    "60 is the default",
                );
            }
        }
        if let Some(r) = &self.rotate_bytes {
            if *r.get_ref() < MIN_ROTATE_BYTES {
                c.err(
                    r.span(),
                    format!("rotate_bytes must be at least {MIN_ROTATE_BYTES} (one file per few records is no use)"),
                    "67108864 (64 MiB) is the default",
                );
            }
        }
    }

    /// Merge a later fragment over this one.
    pub fn merge(&mut self, o: RawAudit) {
        merge_fields!(self, o; path, signing_key_file, checkpoint_interval_seconds, rotate_bytes);
    }

    /// Build the validated section (every key has a default).
    pub fn build(self, state_dir: &Path) -> AuditConfig {
        AuditConfig {
            path: or(self.path, state_dir.join("audit.jsonl")),
            signing_key_file: or(
                self.signing_key_file,
                "/etc/cloudnx-agent/keys/audit.ed25519.pem".into(),
            ),
            checkpoint_interval_seconds: or(self.checkpoint_interval_seconds, 60),
            rotate_bytes: or(self.rotate_bytes, 64 << 20),
        }
    }
}

impl AuditConfig {
    /// Why `signing_key_file` is unusable as a secret (absent, group/other
    /// access, not a file), if it is: (message, how to fix). Never reads it.
    pub fn signing_key_problem(&self) -> Option<(String, String)> {
        secret_file_problem(&self.signing_key_file, false)
    }
}
