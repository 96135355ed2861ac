//! The checkpoint-signing key: Ed25519, PKCS#8 PEM at `signing_key_file`,
//! created mode 0600 on first use. The public half is published as SPKI PEM
//! (`audit public-key`) so anyone can check checkpoints with openssl.

use anyhow::Context;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::path::Path;

/// Load the key, creating it (0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    if !path.exists() {
        create(path)?;
    }
    load(path)
}

/// Load an existing key; refuses a file readable by group or other.
pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
    if let Some((msg, hint)) = crate::fsx::secret_file_problem(path, false, None) {
        anyhow::bail!("audit signing key: {msg}; {hint}");
    }
    let pem = crate::fsx::open_read(path)
        .and_then(std::io::read_to_string)
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
    let dir = crate::fsx::parent_of(path);
    crate::fsx::ensure_private_dir(dir)?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the new audit signing key: {e}"))?;
    let tmp = dir.join(format!(".audit-key.{}.tmp", &crate::util::new_id()[..12]));
    let mut f = crate::fsx::create_new(&tmp, 0o600)?;
    let written = f.write_all(pem.as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            crate::fsx::sync_dir(dir)?;
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

    #[test]
    fn key_is_created_0600_once_and_loaded_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys/audit.pem");
        let k1 = load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = load_or_create(&p).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let pem = public_pem(&k1.verifying_key()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pem");
        load_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
    }
}
