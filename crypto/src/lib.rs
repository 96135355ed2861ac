//! Streaming OpenPGP encryption of backups (see docs/adr/0002-openpgp.md).
//!
//! Owns: reading the operator's armored public keys, choosing each key's
//! encryption-capable (sub)key, and turning a byte stream of unknown length
//! into one binary OpenPGP message that stock `gpg --decrypt` (GnuPG 2.2)
//! opens: PKESK v3 per recipient, SEIPD v1 with MDC, AES-256, a binary literal
//! data packet, partial body lengths, and no compression packet (a custom-format
//! dump is already compressed; compressing again costs ~10× the CPU).
//!
//! Also decrypts (for the restore drill): a binary message read as a stream
//! with an unprotected armored secret key; the MDC is checked at the end.
//!
//! Its own crate, with non-generic entry points (`dyn Read`/`dyn Write`), so
//! the pgp stream code is instantiated and optimised for speed here while the
//! agent itself is optimised for size (docs/adr/0011-binary-size.md).
//!
//! Must never: buffer the whole message, write plaintext anywhere but where
//! the caller says, or accept a key it cannot encrypt to (that would silently
//! make a backup unreadable).

use anyhow::{bail, Context};
use pgp::composed::{Deserializable, MessageBuilder, SignedPublicKey};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::KeyDetails;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Partial body chunk: a power of two; 512 KiB keeps per-chunk overhead negligible.
const PARTIAL_CHUNK: u32 = 512 * 1024;

/// A recipient key's dates (see [`Recipients::dates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDates {
    /// Primary-key fingerprint, upper-case hex.
    pub fingerprint: String,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds; None: never expires.
    pub expires: Option<i64>,
}

/// The keys a backup is encrypted to.
pub struct Recipients {
    keys: Vec<(PathBuf, SignedPublicKey)>,
}

impl Recipients {
    /// Read and check every armored public key file.
    pub fn load(paths: &[PathBuf]) -> anyhow::Result<Recipients> {
        if paths.is_empty() {
            bail!("no recipients: [backup] encrypt_to lists no public key");
        }
        let mut keys = Vec::new();
        for p in paths {
            let key = read_public_key(p)?;
            if encryption_subkey(&key).is_none() && !key.algorithm().can_encrypt() {
                bail!(
                    "the OpenPGP key {} ({:X}) has no encryption-capable key; export a key with an encryption subkey (gpg --quick-gen-key UID future-default default never)",
                    p.display(),
                    key.fingerprint()
                );
            }
            keys.push((p.clone(), key));
        }
        Ok(Recipients { keys })
    }

    /// Primary-key fingerprints (upper-case hex, as `gpg --list-keys` prints them), for the manifest.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|(_, k)| format!("{:X}", k.fingerprint()))
            .collect()
    }

    /// When each recipient's primary key was created and when it expires
    /// (Unix seconds; None: never), as `gpg --with-colons` shows them on its
    /// `pub` line: the expiry is the key expiration time of the newest
    /// self-signature (the primary user ID's first, else any user ID's, else
    /// a direct-key signature), counted from the key's creation.
    pub fn dates(&self) -> Vec<KeyDates> {
        self.keys
            .iter()
            .map(|(_, k)| {
                let created = i64::from(k.primary_key.created_at().as_secs());
                let newest = |sigs: &mut dyn Iterator<Item = &pgp::packet::Signature>| {
                    sigs.max_by_key(|s| s.created().map(|t| t.as_secs()))
                        .cloned()
                };
                let users = &k.details.users;
                let sig = newest(
                    &mut users
                        .iter()
                        .flat_map(|u| u.signatures.iter())
                        .filter(|s| s.is_primary()),
                )
                .or_else(|| newest(&mut users.iter().flat_map(|u| u.signatures.iter())))
                .or_else(|| newest(&mut k.details.direct_signatures.iter()));
                let expires = sig
                    .and_then(|s| s.key_expiration_time())
                    .map(|d| d.as_secs())
                    .filter(|d| *d > 0)
                    .map(|d| created + i64::from(d));
                KeyDates {
                    fingerprint: format!("{:X}", k.fingerprint()),
                    created,
                    expires,
                }
            })
            .collect()
    }

    /// Encrypt everything `plain` yields into `out` as one OpenPGP message.
    /// Blocking: run it on a blocking thread.
    pub fn encrypt(&self, plain: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut rng = rand::thread_rng();
        let mut builder = MessageBuilder::from_reader("", plain)
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        builder
            .partial_chunk_size(PARTIAL_CHUNK)
            .context("setting the partial chunk size")?;
        for (path, key) in &self.keys {
            let r = match encryption_subkey(key) {
                Some(sub) => builder.encrypt_to_key(&mut rng, sub),
                None => builder.encrypt_to_key(&mut rng, key),
            };
            r.map_err(|e| {
                anyhow::anyhow!("encrypting the session key to {}: {e}", path.display())
            })?;
        }
        builder
            .to_writer(&mut rng, out)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("encrypting the dump")
    }
}

fn read_public_key(path: &Path) -> anyhow::Result<SignedPublicKey> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening the OpenPGP public key {}", path.display()))?;
    let (key, _) = SignedPublicKey::from_armor_single(std::io::BufReader::new(f)).map_err(|e| {
        anyhow::anyhow!(
            "reading the OpenPGP public key {}: {e} (expected an armored public key: gpg --export --armor FPR > FILE)",
            path.display()
        )
    })?;
    key.verify_bindings().map_err(|e| {
        anyhow::anyhow!(
            "the OpenPGP public key {} does not verify: {e}",
            path.display()
        )
    })?;
    Ok(key)
}

/// The newest subkey flagged for encryption whose algorithm can encrypt.
fn encryption_subkey(key: &SignedPublicKey) -> Option<&pgp::composed::SignedPublicSubKey> {
    key.public_subkeys.iter().rev().find(|sk| {
        sk.key.algorithm().can_encrypt()
            && sk.signatures.iter().any(|s| {
                let f = s.key_flags();
                f.encrypt_comms() || f.encrypt_storage()
            })
    })
}

/// Decrypt one OpenPGP message from `input` into `out` with the armored,
/// passphrase-less secret key at `key_path`. Returns the plaintext size.
/// Blocking: run it on a blocking thread. Integrity (MDC) is checked: a
/// modified message fails instead of yielding altered bytes.
pub fn decrypt(
    key_path: &Path,
    input: &mut (dyn std::io::BufRead + Send),
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    use pgp::composed::{Message, SignedSecretKey};
    let f = std::fs::File::open(key_path)
        .with_context(|| format!("opening the decryption key {}", key_path.display()))?;
    let (key, _) = SignedSecretKey::from_armor_single(std::io::BufReader::new(f)).map_err(|e| {
        anyhow::anyhow!(
            "reading the decryption key {}: {e} (expected an armored secret key without passphrase: gpg --export-secret-keys --armor FPR)",
            key_path.display()
        )
    })?;
    let (msg, _) = Message::from_reader(DebugInput(input))
        .map_err(|e| anyhow::anyhow!("reading the OpenPGP message: {e}"))?;
    // Streaming SEIPD v1: rPGP's default reads the whole message into memory
    // to check the MDC before releasing plaintext (and refuses messages over
    // 1 GB). The plaintext goes only to the caller's private file, which is
    // used only after this returns Ok, i.e. after the MDC verified at the end
    // (and the caller compares its SHA-256 with the manifest's).
    let no_password = pgp::types::Password::empty();
    let ring = pgp::composed::TheRing {
        secret_keys: vec![&key],
        key_passwords: vec![&no_password],
        decrypt_options: pgp::composed::DecryptionOptions::new()
            .set_seipdv1_read_mode(pgp::types::Seipdv1ReadMode::Streaming),
        ..Default::default()
    };
    let (mut plain, _) = msg
        .decrypt_the_ring(ring, true)
        .map_err(|e| anyhow::anyhow!("decrypting with {}: {e}", key_path.display()))?;
    // Reading to the end is what checks the MDC: an altered message errors here.
    let n = std::io::copy(&mut plain, out).context("decrypting the backup")?;
    Ok(n)
}

/// pgp wants a `Debug` reader; a `dyn BufRead` is not one.
struct DebugInput<'a>(&'a mut (dyn std::io::BufRead + Send));

impl std::fmt::Debug for DebugInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenPGP message input")
    }
}

impl Read for DebugInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::BufRead for DebugInput<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.0.consume(n);
    }
}
