//! `[audit]`: the hash-chained audit log and its signed checkpoints.

use super::common::{check_secret, secret_file_problem};
use super::destinations::{Destination, DestinationKind};
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
        /// `[[destinations]]` that receive sealed segments, checkpoints and keys (SPEC §11).
        destinations: Vec<String> = (vec![]),
        /// Local records older than this go, by whole files, once off the host.
        retention_days: u32 = (365),
        /// Sign checkpoints with this Ed25519 key on a PKCS#11 token (RFC 7512 URI) instead of `signing_key_file`.
        signing_key_pkcs11: String = optional,
        /// The PKCS#11 module (`.so`) for `signing_key_pkcs11`.
        pkcs11_module: PathBuf = optional,
        /// Secret file (0600) holding the token's user PIN.
        pkcs11_pin_file: PathBuf = optional,
    }
}

impl Rules for RawAudit {
    fn rules(&self, c: &mut Check) {
        check_secret(c, "signing_key_file", &self.signing_key_file, true);
        check_secret(c, "pkcs11_pin_file", &self.pkcs11_pin_file, false);
        if let Some(u) = &self.signing_key_pkcs11 {
            if let Err(e) = crate::audit::pkcs11::parse_uri(u.get_ref()) {
                c.err(
                    u.span(),
                    format!("signing_key_pkcs11: {e}"),
                    "e.g. \"pkcs11:token=cloudnx;object=audit\"",
                );
            }
            if self.pkcs11_module.is_none() || self.pkcs11_pin_file.is_none() {
                c.err(
                    u.span(),
                    "signing_key_pkcs11 needs pkcs11_module and pkcs11_pin_file",
                    "e.g. pkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\", pkcs11_pin_file = \"/etc/cloudnx-agent/secrets/hsm.pin\" (mode 0600)",
                );
            }
        }
        if let Some(i) = &self.checkpoint_interval_seconds {
            if *i.get_ref() == 0 {
                c.err(
                    i.span(),
                    "checkpoint_interval_seconds must be at least 1",
                    "60 is the default",
                );
            }
        }
        if let Some(r) = &self.retention_days {
            if *r.get_ref() == 0 {
                c.err(
                    r.span(),
                    "retention_days must be at least 1",
                    "365 is the default (the 1-year promise)",
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
    /// Where the checkpoint-signing key lives: the token when
    /// `signing_key_pkcs11` is set, else `signing_key_file`.
    pub fn key_source(&self) -> crate::audit::key::KeySource {
        match (
            &self.signing_key_pkcs11,
            &self.pkcs11_module,
            &self.pkcs11_pin_file,
        ) {
            (Some(uri), Some(module), Some(pin_file)) => crate::audit::key::KeySource::Pkcs11 {
                uri: uri.clone(),
                module: module.clone(),
                pin_file: pin_file.clone(),
            },
            _ => crate::audit::key::KeySource::File(self.signing_key_file.clone()),
        }
    }

    /// Why `signing_key_file` is unusable as a secret (absent, group/other
    /// access, not a file), if it is: (message, how to fix). Never reads it.
    /// Its owner was checked when the configuration was loaded, which every
    /// caller did first (as whichever user; the key it creates is its own).
    pub fn signing_key_problem(&self) -> Option<(String, String)> {
        secret_file_problem(&self.signing_key_file, false, None)
    }
}

impl AuditConfig {
    /// The `[audit] destinations` among `all`, opened for shipping the log
    /// off the host. An S3 destination that locks (`object_lock_days > 0`:
    /// its bucket has Object Lock) locks audit objects for at least
    /// `retention_days`.
    pub fn targets(
        &self,
        all: &[Destination],
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Vec<crate::audit::offhost::Target>> {
        self.destinations
            .iter()
            .map(|n| self.target(all, n, cancel))
            .collect()
    }

    /// Destination `name` opened for the audit copy (see [`Self::targets`]).
    pub fn target(
        &self,
        all: &[Destination],
        name: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<crate::audit::offhost::Target> {
        let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        let mut d = all
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("no [[destinations]] entry is named {name:?} (defined: {names:?})")
            })?;
        if let DestinationKind::S3(s) = &mut d.kind {
            if s.object_lock_days > 0 {
                s.object_lock_days = s.object_lock_days.max(self.retention_days);
            }
        }
        let store = d.open(2, cancel)?;
        Ok(crate::audit::offhost::Target {
            name: d.name.clone(),
            prefix: d.prefix.clone(),
            store,
        })
    }
}
