//! The checkpoint-signing key: Ed25519, PKCS#8 PEM at `signing_key_file`,
//! created mode 0600 on first use. The public half is published as SPKI PEM
//! (`audit public-key`) so anyone can check checkpoints with openssl.

use anyhow::Context;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::path::Path;

/// Where the checkpoint-signing key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An Ed25519 PKCS#8 PEM file, created 0600 on first use.
    File(std::path::PathBuf),
    /// An Ed25519 key on a PKCS#11 token (it never leaves the token).
    Pkcs11 {
        /// RFC 7512 URI of the key.
        uri: String,
        /// The PKCS#11 module (`.so`).
        module: std::path::PathBuf,
        /// The secret file holding the user PIN.
        pin_file: std::path::PathBuf,
    },
}

/// A key that signs checkpoints.
pub enum Signer {
    /// A key held in memory (from its file).
    File(SigningKey),
    /// A key on a token.
    Token(super::pkcs11::TokenKey),
}

impl Signer {
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            Signer::File(k) => k.verifying_key(),
            Signer::Token(t) => t.public(),
        }
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> anyhow::Result<ed25519_dalek::Signature> {
        match self {
            Signer::File(k) => Ok(ed25519_dalek::Signer::sign(k, msg)),
            Signer::Token(t) => t.sign(msg),
        }
    }
}

impl KeySource {
    /// Open the key (a file key is created when absent).
    pub fn open(&self) -> anyhow::Result<Signer> {
        match self {
            KeySource::File(p) => load_or_create(p).map(Signer::File),
            KeySource::Pkcs11 {
                uri,
                module,
                pin_file,
            } => super::pkcs11::TokenKey::open(module, uri, pin_file).map(Signer::Token),
        }
    }
}

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

/// The key id of SPEC §11: the first 16 hex digits of the SHA-256 of the
/// key's DER SubjectPublicKeyInfo.
pub fn kid(key: &VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    super::record::sha256_hex(&der)[..16].to_owned()
}

/// A public key from SPKI PEM, with its kid.
pub fn from_public_pem(pem: &str) -> anyhow::Result<(String, VerifyingKey)> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let vk = VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| anyhow::anyhow!("not an Ed25519 SPKI PEM public key ({e})"))?;
    Ok((kid(&vk), vk))
}

/// The audit key's kid and when it was created (unix seconds: the key
/// file's modification time; a key file is written once and never changed).
/// For the key-age metric of SPEC §10.
pub fn info(path: &Path) -> anyhow::Result<(String, i64)> {
    let key = load(path)?;
    let created = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", path.display()))?;
    let secs = created
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Ok((kid(&key.verifying_key()), secs))
}

/// Publish `key` as `{dir}/{kid}.pem` (0644) unless it is there already;
/// `dir` is the log's public-key directory (`{path}.keys`).
pub fn publish(dir: &Path, key: &VerifyingKey) -> anyhow::Result<String> {
    let kid = kid(key);
    let path = dir.join(format!("{kid}.pem"));
    if path.exists() {
        return Ok(kid);
    }
    link_new(&path, public_pem(key)?.as_bytes(), 0o644)?;
    Ok(kid)
}

/// Every public key in `dir` (`{kid}.pem`), by kid; a file whose name is not
/// the kid of its key is an error (it was swapped or damaged).
pub fn published(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, VerifyingKey>> {
    let mut out = std::collections::BTreeMap::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in rd {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        let pem =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let (kid, vk) = from_public_pem(&pem).with_context(|| format!("{}", p.display()))?;
        if kid != name {
            anyhow::bail!(
                "{} holds the key with kid {kid}, not {name}: the key file was swapped or damaged",
                p.display()
            );
        }
        out.insert(kid, vk);
    }
    Ok(out)
}

/// Create a new key atomically: written to a temp file, then hard-linked into
/// place, so two processes starting at once never see half a key and agree on one.
pub(crate) fn create(path: &Path) -> anyhow::Result<()> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the new audit signing key: {e}"))?;
    if link_new(path, pem.as_bytes(), 0o600)? {
        tracing::info!("created the audit signing key {}", path.display());
    }
    Ok(())
}

/// Write `bytes` to a temp file beside `path` (fsynced), then hard-link it
/// into place, so no reader sees half a file and two writers agree on one.
/// Ok(false) when `path` existed already.
fn link_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    let dir = crate::fsx::parent_of(path);
    crate::fsx::ensure_private_dir(dir)?;
    let tmp = dir.join(format!(".audit-key.{}.tmp", &crate::util::new_id()[..12]));
    let mut f = crate::fsx::create_new(&tmp, mode)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
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
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
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
    fn kid_is_the_spki_sha256_prefix_and_published_keys_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let k = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let der = k.to_public_key_der().unwrap();
        let want = &crate::audit::sha256_hex(der.as_bytes())[..16];
        assert_eq!(kid(&k), want);
        let dir = d.path().join("keys");
        assert_eq!(publish(&dir, &k).unwrap(), want);
        assert_eq!(publish(&dir, &k).unwrap(), want);
        let all = published(&dir).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[want], k);
        let other = SigningKey::from_bytes(&[10; 32]).verifying_key();
        std::fs::write(dir.join(format!("{want}.pem")), public_pem(&other).unwrap()).unwrap();
        assert!(published(&dir).unwrap_err().to_string().contains("swapped"));
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
