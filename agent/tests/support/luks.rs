//! LUKS test volumes made with the real cryptsetup CLI on image files (and loop
//! devices where the machine has them), with fast PBKDF parameters.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fast Argon2id: 32 MiB, 4 iterations (tests stay quick; the policy checks the kind).
pub const FAST_ARGON: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "32768",
    "--pbkdf-force-iterations",
    "4",
];
/// PBKDF2 as clevis/systemd-cryptenroll write it.
pub const PBKDF2: &[&str] = &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

/// Run cryptsetup; panic with its output on failure.
pub fn cryptsetup(args: &[&str]) -> String {
    let bin = super::require("cryptsetup");
    let o = Command::new(bin)
        .args(args)
        .output()
        .expect("running cryptsetup");
    assert!(
        o.status.success(),
        "cryptsetup {args:?} failed: {}",
        super::text(&o)
    );
    super::text(&o)
}

/// An empty 32 MiB image file.
pub fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(32 << 20).unwrap();
    p
}

/// luksFormat `img` with the key in `key` and extra options (type, cipher, pbkdf…).
pub fn format(img: &Path, key: &Path, opts: &[&str]) {
    let mut a = vec![
        "luksFormat",
        "--batch-mode",
        "--key-file",
        key.to_str().unwrap(),
    ];
    a.extend_from_slice(opts);
    a.push(img.to_str().unwrap());
    cryptsetup(&a);
}

/// Add a keyslot holding `new_key`, unlocking with `key`.
pub fn add_key(img: &Path, key: &Path, new_key: &Path, opts: &[&str]) {
    let mut a = vec![
        "luksAddKey",
        "--batch-mode",
        "--key-file",
        key.to_str().unwrap(),
    ];
    a.extend_from_slice(opts);
    a.push(img.to_str().unwrap());
    a.push(new_key.to_str().unwrap());
    cryptsetup(&a);
}

/// Import a clevis-style token (the JWE is a placeholder: only its type and keyslots matter here).
pub fn import_clevis_token(img: &Path, keyslots: &[u32]) {
    let slots: Vec<String> = keyslots.iter().map(|k| format!("\"{k}\"")).collect();
    let json = format!(
        r#"{{"type":"clevis","keyslots":[{}],"jwe":{{"ciphertext":"","encrypted_key":"","iv":"","protected":"eyJhbGciOiJFQ0RILUVTIn0","tag":""}}}}"#,
        slots.join(",")
    );
    let f = img.with_extension("token.json");
    std::fs::write(&f, json).unwrap();
    cryptsetup(&[
        "token",
        "import",
        "--json-file",
        f.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
}

/// A loop device over an image file, detached on drop.
pub struct LoopDev {
    /// `/dev/loopN`.
    pub dev: PathBuf,
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Attach `img` to a free loop device, or None where the machine has none
/// (the volume is then checked on the image file itself, which libcryptsetup
/// reads the same way).
pub fn attach(img: &Path) -> Option<LoopDev> {
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(img)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "losetup unavailable, using the image file: {}",
            super::text(&o)
        );
        return None;
    }
    Some(LoopDev {
        dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
    })
}
