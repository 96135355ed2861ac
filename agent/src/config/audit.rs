//! `[audit]`: the hash-chained audit log and its signed checkpoints.

use super::common::{check_secret, secret_file_problem};
use super::problem::Check;
use super::schema::{fragment, Rules};
use std::path::PathBuf;

/// Smallest `rotate_bytes` accepted.
pub const MIN_ROTATE_BYTES: u64 = 1024;

fragment! {
    /// `[audit]` as written in one file.
    raw RawAudit;
    /// Validated `[audit]`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct AuditConfig {
        /// The JSON Lines file (rotated files get `.1`, `.2`, … suffixes).
        path: PathBuf = {|c| c.state_dir.join("audit.jsonl")},
        /// Ed25519 PKCS#8 PEM key; created 0600 if absent.
        signing_key_file: PathBuf = ("/etc/cloudnx-agent/keys/audit.ed25519.pem"),
        /// How often a checkpoint seals the head (when there are new records).
        checkpoint_interval_seconds: u64 = (60),
        /// Rotate the active file once it is larger than this.
        rotate_bytes: u64 = (64 << 20),
    }
}

impl Rules for RawAudit {
    fn rules(&self, c: &mut Check) {
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
}

impl AuditConfig {
    /// Why `signing_key_file` is unusable as a secret (absent, group/other
    /// access, not a file), if it is: (message, how to fix). Never reads it.
    /// Its owner was checked when the configuration was loaded, which every
    /// caller did first (as whichever user; the key it creates is its own).
    pub fn signing_key_problem(&self) -> Option<(String, String)> {
        secret_file_problem(&self.signing_key_file, false, None)
    }
}
