//! A GnuPG home with one fresh key, the OpenPGP peer that must open backups.
//! The agent is stopped and the home removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary GnuPG home with a key pair.
pub struct Gpg {
    home: tempfile::TempDir,
    /// Primary key fingerprint.
    pub fingerprint: String,
}

impl Gpg {
    /// Generate a key (future-default: ed25519 + cv25519 encryption subkey).
    pub fn new() -> Gpg {
        Self::expiring("never")
    }

    /// Generate a key that expires as gpg's `--quick-gen-key` EXPIRE says (`1y`, `never`).
    pub fn expiring(expire: &str) -> Gpg {
        super::require("gpg");
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::Builder::new()
            .prefix("cnx-gpg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut g = Gpg {
            home,
            fingerprint: String::new(),
        };
        g.run(&[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "backup@cloudnx.test",
            "future-default",
            "default",
            expire,
        ]);
        let out = g.run(&["--batch", "--with-colons", "--list-keys"]);
        let fpr = String::from_utf8_lossy(&out)
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("a fingerprint")
            .to_owned();
        g.fingerprint = fpr;
        g
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", super::text(&out));
        out.stdout
    }

    /// The primary key's creation and expiry (Unix seconds) from the `pub`
    /// line of `gpg --with-colons --list-keys` (fields 6 and 7).
    pub fn colon_dates(&self) -> (i64, Option<i64>) {
        let out = self.run(&["--batch", "--with-colons", "--list-keys", &self.fingerprint]);
        let text = String::from_utf8_lossy(&out).into_owned();
        let f: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("pub:"))
            .expect("a pub line")
            .split(':')
            .collect();
        (f[5].parse().unwrap(), f[6].parse().ok())
    }

    /// `gpg --quick-set-expire` of the primary key.
    pub fn set_expire(&self, expire: &str) {
        self.run(&["--batch", "--quick-set-expire", &self.fingerprint, expire]);
    }

    /// Write the armored public key to `path`.
    pub fn export_public(&self, path: &Path) -> PathBuf {
        let out = self.run(&["--batch", "--armor", "--export", &self.fingerprint]);
        std::fs::write(path, out).unwrap();
        path.to_owned()
    }

    /// Write the armored secret key (no passphrase) to `path`, mode 0600.
    pub fn export_secret(&self, path: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let out = self.run(&[
            "--batch",
            "--armor",
            "--export-secret-keys",
            &self.fingerprint,
        ]);
        std::fs::write(path, out).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_owned()
    }

    /// Encrypt bytes to this key the way an operator would (for forged backups in tests).
    pub fn encrypt(&self, plain: &[u8], out: &Path) {
        let input = out.with_extension("plain");
        std::fs::write(&input, plain).unwrap();
        self.run(&[
            "--batch",
            "--yes",
            "--trust-model",
            "always",
            "--compress-algo",
            "none",
            "-r",
            &self.fingerprint,
            "-o",
            out.to_str().unwrap(),
            "--encrypt",
            input.to_str().unwrap(),
        ]);
        std::fs::remove_file(input).unwrap();
    }

    /// `gpg --decrypt` a file; the plaintext bytes.
    pub fn decrypt(&self, path: &Path) -> Vec<u8> {
        self.run(&["--batch", "--quiet", "--decrypt", path.to_str().unwrap()])
    }

    /// A `manifest.json` with its encrypted details (`manifest.details.pgp`
    /// beside it, opened by gpg) merged in; the plaintext manifest must hold
    /// no row counts (SPEC §10: nothing readable off the host).
    pub fn manifest(&self, path: &Path) -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(
            v["row_counts"].is_null(),
            "row counts in the plaintext manifest {}: {v}",
            path.display()
        );
        let details = path.with_file_name("manifest.details.pgp");
        if details.is_file() {
            let d: serde_json::Value = serde_json::from_slice(&self.decrypt(&details)).unwrap();
            v["row_counts"] = d["row_counts"].clone();
        }
        v
    }

    /// `gpg --verbose --list-packets` of a file (to check the message structure).
    pub fn list_packets(&self, path: &Path) -> String {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--verbose", "--list-packets"])
            .arg(path)
            .output()
            .unwrap();
        super::text(&out)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
