//! Signed checkpoints: the head of the chain sealed as
//! `{"seq","hash","ts","signature"}` in `{path}.checkpoints`, the signature
//! being Ed25519 over `"cloudnx-audit-checkpoint\n{host_id}\n{seq}\n{hash}\n"`
//! (SPEC §7). The daemon (`daemon.rs`) seals every `checkpoint_interval_seconds`
//! when there are new records and queues each checkpoint as an event, so a
//! copy of the head lives off the host.

use super::files::read_tail;
use super::key::{KeySource, Signer};
use super::log::{set_aside_torn_tail, AuditLog};
use super::record::Head;
use anyhow::Context;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
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
    /// The signing key's id ([`super::key::kid`]); absent on checkpoints
    /// written before SPEC §11 (signed by the first key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// The exact bytes a checkpoint signs.
pub fn message(host_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    format!("cloudnx-audit-checkpoint\n{host_id}\n{seq}\n{hash}\n").into_bytes()
}

impl Checkpoint {
    /// Seal `head` now.
    pub fn sign(key: &SigningKey, host_id: &str, head: &Head) -> Checkpoint {
        let sig = key.sign(&message(host_id, head.seq, &head.hash));
        Self::signed(&key.verifying_key(), &sig, head)
    }

    /// Seal `head` now with `signer` (a file key or a token).
    pub fn sign_with(
        signer: &super::key::Signer,
        host_id: &str,
        head: &Head,
    ) -> anyhow::Result<Checkpoint> {
        let sig = signer.sign(&message(host_id, head.seq, &head.hash))?;
        Ok(Self::signed(&signer.verifying_key(), &sig, head))
    }

    fn signed(vk: &VerifyingKey, sig: &Signature, head: &Head) -> Checkpoint {
        Checkpoint {
            seq: head.seq,
            hash: head.hash.clone(),
            ts: crate::util::now_rfc3339(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            kid: Some(super::key::kid(vk)),
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
/// log's writer lock, so the head cannot move while it is sealed. Finishes a
/// key rotation a crash interrupted (see [`rotate_key`]).
pub fn seal(log: &AuditLog, key_file: &Path, host_id: &str) -> anyhow::Result<Sealed> {
    seal_from(log, &KeySource::File(key_file.to_owned()), host_id)
}

/// [`seal`] with the key wherever it lives (a file, or a PKCS#11 token).
pub fn seal_from(log: &AuditLog, source: &KeySource, host_id: &str) -> anyhow::Result<Sealed> {
    let mut locked = log.lock()?;
    let mut cps = CheckpointFile::open(log, &mut locked)?;
    if let KeySource::File(key_file) = source {
        let key = Signer::File(super::key::load_or_create(key_file)?);
        finish_rotation(log, &mut locked, &mut cps, &key, key_file, host_id)?;
    }
    let key = source.open()?;
    cps.seal_with(log, &locked, &key, host_id)
}

/// The checkpoints file open for appending under the writer lock, with its
/// last checkpoint (a torn tail set aside and audited first).
struct CheckpointFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    last: Option<Checkpoint>,
}

impl CheckpointFile {
    fn open(log: &AuditLog, locked: &mut super::log::Locked<'_>) -> anyhow::Result<Self> {
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
        Ok(CheckpointFile { file, path, last })
    }

    /// Seal the head with `key` if it is newer than the last checkpoint.
    fn seal_with(
        &mut self,
        log: &AuditLog,
        locked: &super::log::Locked<'_>,
        key: &Signer,
        host_id: &str,
    ) -> anyhow::Result<Sealed> {
        let head = locked.head.clone();
        let Some(h) = head
            .as_ref()
            .filter(|h| self.last.as_ref().is_none_or(|c| c.seq < h.seq))
        else {
            return Ok(Sealed {
                head,
                last: self.last.clone(),
                wrote: false,
            });
        };
        super::key::publish(&log.files().keys_dir(), &key.verifying_key())?;
        let cp = Checkpoint::sign_with(key, host_id, h)?;
        append_checkpoint(&mut self.file, &self.path, &cp)?;
        self.last = Some(cp.clone());
        Ok(Sealed {
            head,
            last: Some(cp),
            wrote: true,
        })
    }
}

/// Where a rotation keeps the new key until the rotation record is sealed.
fn next_key_file(key_file: &Path) -> std::path::PathBuf {
    let mut s = key_file.as_os_str().to_owned();
    s.push(".next");
    s.into()
}

/// What `audit rotate-key` did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The key before.
    pub old_kid: String,
    /// The key from now on.
    pub new_kid: String,
    /// The `audit.key_rotated` record.
    pub seq: u64,
}

/// `audit rotate-key` (SPEC §11): under the writer lock, seal the head with
/// the old key, append `audit.key_rotated` (old and new kid, new public key),
/// seal that with the old key, then make the new key the signing key. The new
/// key waits in `{key_file}.next` (0600) until its record is sealed; a crash
/// in between is finished (or undone, when no record names it) by the next seal.
pub fn rotate_key(
    log: &AuditLog,
    key_file: &Path,
    host_id: &str,
    actor: &str,
) -> anyhow::Result<Rotated> {
    let mut locked = log.lock()?;
    let mut cps = CheckpointFile::open(log, &mut locked)?;
    let old = Signer::File(super::key::load_or_create(key_file)?);
    finish_rotation(log, &mut locked, &mut cps, &old, key_file, host_id)?;
    let old = Signer::File(super::key::load(key_file)?);
    cps.seal_with(log, &locked, &old, host_id)?;
    let next = next_key_file(key_file);
    let _ = std::fs::remove_file(&next);
    super::key::create(&next)?;
    let new = super::key::load(&next)?;
    let (old_kid, new_kid) = (
        super::key::kid(&old.verifying_key()),
        super::key::kid(&new.verifying_key()),
    );
    super::key::publish(&log.files().keys_dir(), &new.verifying_key())?;
    let seq = locked.append(super::record::AuditEntry {
        actor: actor.into(),
        action: super::record::KEY_ROTATED.into(),
        detail: serde_json::json!({
            "old_kid": old_kid,
            "new_kid": new_kid,
            "new_public_key": super::key::public_pem(&new.verifying_key())?,
        }),
        ..Default::default()
    })?;
    cps.seal_with(log, &locked, &old, host_id)?;
    install_next(key_file)?;
    Ok(Rotated {
        old_kid,
        new_kid,
        seq,
    })
}

fn install_next(key_file: &Path) -> anyhow::Result<()> {
    let next = next_key_file(key_file);
    std::fs::rename(&next, key_file).with_context(|| {
        format!(
            "installing the new audit key {} as {}",
            next.display(),
            key_file.display()
        )
    })?;
    crate::fsx::sync_dir(crate::fsx::parent_of(key_file))
}

/// A rotation cut short by a crash: `{key_file}.next` exists. When an
/// unsealed `audit.key_rotated` record names it, seal that record with the
/// old key and install the new one; otherwise the rotation never happened
/// and the new key goes.
fn finish_rotation(
    log: &AuditLog,
    locked: &mut super::log::Locked<'_>,
    cps: &mut CheckpointFile,
    old: &Signer,
    key_file: &Path,
    host_id: &str,
) -> anyhow::Result<()> {
    let next = next_key_file(key_file);
    if !next.exists() {
        return Ok(());
    }
    let new_kid = super::key::kid(&super::key::load(&next)?.verifying_key());
    let sealed = cps.last.as_ref().map_or(0, |c| c.seq);
    let head = locked.head.as_ref().map_or(0, |h| h.seq);
    // The record is unsealed, or is the last one sealed (by the old key).
    let from = sealed.max(1);
    let rotated = head >= from
        && super::files::read_lines(log.files(), from, head)?
            .iter()
            .filter_map(|l| super::record::Record::parse_canonical(&l[..l.len() - 1]).ok())
            .any(|r| {
                r.action == super::record::KEY_ROTATED
                    && r.detail.get("new_kid").and_then(|v| v.as_str()) == Some(new_kid.as_str())
            });
    if rotated {
        cps.seal_with(log, locked, old, host_id)?;
        install_next(key_file)?;
        tracing::warn!("audit key rotation to {new_kid} was interrupted; finished it");
    } else {
        std::fs::remove_file(&next).with_context(|| format!("removing {}", next.display()))?;
        tracing::warn!("audit key rotation to {new_kid} was interrupted before its record; undone");
    }
    Ok(())
}

/// Append one checkpoint line and fsync it.
pub(crate) fn append_checkpoint(
    file: &mut std::fs::File,
    path: &Path,
    cp: &Checkpoint,
) -> anyhow::Result<()> {
    let mut line = cp.to_line();
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending a checkpoint to {}", path.display()))
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
        assert_eq!(
            cp.kid.as_deref(),
            Some(crate::audit::key::kid(&vk).as_str())
        );
        let line = String::from_utf8(cp.to_line()).unwrap();
        assert!(
            line.ends_with(&format!(",\"kid\":\"{}\"}}", crate::audit::key::kid(&vk))),
            "{line}"
        );
        let legacy: Checkpoint = serde_json::from_str(
            &line.replace(&format!(",\"kid\":\"{}\"", crate::audit::key::kid(&vk)), ""),
        )
        .unwrap();
        assert!(legacy.kid.is_none() && legacy.check_signature(&vk, "h1").is_ok());
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
