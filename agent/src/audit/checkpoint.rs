//! Signed checkpoints: the head of the chain sealed as
//! `{"seq","hash","ts","signature"}` in `{path}.checkpoints`, the signature
//! being Ed25519 over `"cloudnx-audit-checkpoint\n{host_id}\n{seq}\n{hash}\n"`
//! (SPEC §7). The daemon (`daemon.rs`) seals every `checkpoint_interval_seconds`
//! when there are new records and queues each checkpoint as an event, so a
//! copy of the head lives off the host.

use super::files::read_tail;
use super::log::{set_aside_torn_tail, AuditLog};
use super::record::Head;
use anyhow::Context;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One line of `{path}.checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `seq` of the sealed record.
    pub seq: u64,
    /// SHA-256 (lowercase hex) of that record's line.
    pub hash: String,
    /// When it was sealed, RFC 3339 UTC.
    pub ts: String,
    /// Base64 Ed25519 signature over [`message`].
    pub signature: String,
}

/// The exact bytes a checkpoint signs.
pub fn message(host_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    format!("cloudnx-audit-checkpoint\n{host_id}\n{seq}\n{hash}\n").into_bytes()
}

impl Checkpoint {
    /// Seal `head` now.
    pub fn sign(key: &SigningKey, host_id: &str, head: &Head) -> Checkpoint {
        let sig = key.sign(&message(host_id, head.seq, &head.hash));
        Checkpoint {
            seq: head.seq,
            hash: head.hash.clone(),
            ts: crate::util::now_rfc3339(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }

    /// Whether `key` signed this checkpoint for `host_id`.
    pub fn check_signature(&self, key: &VerifyingKey, host_id: &str) -> Result<(), String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| format!("the signature is not base64 ({e})"))?;
        let sig = Signature::from_slice(&raw)
            .map_err(|_| format!("the signature is {} bytes, not 64", raw.len()))?;
        key.verify(&message(host_id, self.seq, &self.hash), &sig)
            .map_err(|_| "the signature does not verify with the audit public key (forged, or made for another host or key)".into())
    }

    /// The exact line written (without newline).
    pub fn to_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What one sealing pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Sealed {
    /// The head of the chain.
    pub head: Option<Head>,
    /// The newest checkpoint (the new one when one was written).
    pub last: Option<Checkpoint>,
    /// Whether a new checkpoint was written by this pass.
    pub wrote: bool,
}

/// Seal the head if it is newer than the last checkpoint (blocking). Holds the
/// log's writer lock, so the head cannot move while it is sealed.
pub fn seal(log: &AuditLog, key_file: &Path, host_id: &str) -> anyhow::Result<Sealed> {
    let mut locked = log.lock()?;
    let path = log.files().checkpoints();
    let (mut file, _) = crate::fsx::open_append(&path, 0o640)?;
    let tail = read_tail(&mut file).with_context(|| format!("reading {}", path.display()))?;
    let last: Option<Checkpoint> = match &tail.last_line {
        None => None,
        Some(l) => Some(serde_json::from_slice(l).map_err(|e| {
            anyhow::anyhow!(
                "the last line of {} is not a checkpoint ({e}): it was edited or damaged; \
                 run `cloudnx-agent audit verify`",
                path.display()
            )
        })?),
    };
    if tail.torn_bytes() > 0 {
        let after = last.as_ref().map_or(0, |c| c.seq);
        let torn = set_aside_torn_tail(log.files(), &mut file, &path, &tail, after)?;
        tracing::warn!(
            "audit checkpoints: a torn write of {} bytes was set aside to {}",
            torn.bytes,
            torn.set_aside_to.display()
        );
        locked.append(super::record::AuditEntry {
            actor: "agent".into(),
            action: "audit.torn_tail".into(),
            detail: serde_json::json!({
                "file": torn.file, "torn_bytes": torn.bytes, "sha256": torn.sha256,
                "set_aside_to": torn.set_aside_to, "after_checkpoint_seq": after,
            }),
            ..Default::default()
        })?;
    }
    let head = locked.head.clone();
    let Some(h) = head
        .as_ref()
        .filter(|h| last.as_ref().is_none_or(|c| c.seq < h.seq))
    else {
        return Ok(Sealed {
            head,
            last,
            wrote: false,
        });
    };
    let key = super::key::load_or_create(key_file)?;
    let cp = Checkpoint::sign(&key, host_id, h);
    let mut line = cp.to_line();
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending a checkpoint to {}", path.display()))?;
    Ok(Sealed {
        head,
        last: Some(cp),
        wrote: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_is_exactly_the_spec_bytes() {
        assert_eq!(
            message("h1", 42, "ab"),
            b"cloudnx-audit-checkpoint\nh1\n42\nab\n".to_vec()
        );
    }

    #[test]
    fn a_checkpoint_verifies_only_for_its_host_key_and_head() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let head = Head {
            seq: 3,
            hash: "a".repeat(64),
        };
        let cp = Checkpoint::sign(&key, "h1", &head);
        let vk = key.verifying_key();
        assert!(cp.check_signature(&vk, "h1").is_ok());
        assert!(cp.check_signature(&vk, "h2").is_err());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(cp.check_signature(&other, "h1").is_err());
        let moved = Checkpoint {
            seq: 4,
            ..cp.clone()
        };
        assert!(moved.check_signature(&vk, "h1").is_err());
        let garbage = Checkpoint {
            signature: "!!".into(),
            ..cp
        };
        assert!(garbage
            .check_signature(&vk, "h1")
            .unwrap_err()
            .contains("base64"));
    }
}
