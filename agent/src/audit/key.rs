//! The checkpoint-signing key: Ed25519, PKCS#8 PEM at `signing_key_file`,
//! created mode 0600 on first use. The public half is published as SPKI PEM
//! (`audit public-key`) so anyone can check checkpoints with openssl.

use crate::config::AuditConfig;
use anyhow::Context;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Load the key, creating it (0600) when the file does not exist.
pub fn load_or_create(cfg: &AuditConfig) -> anyhow::Result<SigningKey> {
    if !cfg.signing_key_file.exists() {
        create(&cfg.signing_key_file)?;
    }
    load(cfg)
}

/// Load an existing key; refuses a file readable by group or other.
pub fn load(cfg: &AuditConfig) -> anyhow::Result<SigningKey> {
    let path = &cfg.signing_key_file;
    if let Some((msg, hint)) = cfg.signing_key_problem() {
        anyhow::bail!("audit signing key: {msg}; {hint}");
    }
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the audit signing key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "the audit signing key {} is not an Ed25519 PKCS#8 PEM key ({e}); \
             move it aside to have a new one created, or restore the right one",
            path.display()
        )
    })
}

/// The public key as SPKI PEM (what `openssl pkeyutl -pubin` reads).
pub fn public_pem(key: &VerifyingKey) -> anyhow::Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))
}

/// Create a new key atomically: written to a temp file, then hard-linked into
/// place, so two processes starting at once never see half a key and agree on one.
fn create(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::runner::ensure_private_dir(dir)?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the new audit signing key: {e}"))?;
    let tmp = dir.join(format!(".audit-key.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            super::log::sync_dir(path)?;
            tracing::info!("created the audit signing key {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(key: &Path) -> AuditConfig {
        AuditConfig {
            path: key.with_file_name("audit.jsonl"),
            signing_key_file: key.to_owned(),
            checkpoint_interval_seconds: 60,
            rotate_bytes: 1 << 20,
        }
    }

    #[test]
    fn key_is_created_0600_once_and_loaded_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys/audit.pem");
        let k1 = load_or_create(&cfg(&p)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = load_or_create(&cfg(&p)).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let pem = public_pem(&k1.verifying_key()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pem");
        load_or_create(&cfg(&p)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&cfg(&p)).unwrap_err().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
    }
}
