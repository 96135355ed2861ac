//! Checkpoints signed on a PKCS#11 token (SPEC §11, `signing_key_pkcs11`):
//! SoftHSM2, a real PKCS#11 module, with an Ed25519 key made on the token by
//! OpenSC's pkcs11-tool; the signatures verify with `openssl pkeyutl` using
//! the public key the agent reads from the token.

mod support;

use cloudnx_agent::audit::checkpoint::Checkpoint;
use std::path::Path;
use std::process::Command;
use support::audit::{mixed_entry, AuditScratch};
use support::text;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token `cloudnx` (user PIN 1234) in `dir`, holding the Ed25519
/// key pair `audit`; returns the SOFTHSM2_CONF path.
fn token(dir: &Path) -> std::path::PathBuf {
    support::require("softhsm2-util");
    support::require("pkcs11-tool");
    assert!(
        Path::new(MODULE).exists(),
        "install softhsm2 (scripts/packages: test)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let o = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "cloudnx",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--module",
            MODULE,
            "--token-label",
            "cloudnx",
            "--login",
            "--pin",
            "1234",
        ])
        .args([
            "--keypairgen",
            "--key-type",
            "EC:edwards25519",
            "--label",
            "audit",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    conf
}

fn agent(s: &AuditScratch, conf: &Path, args: &[&str]) -> (i32, String, Vec<u8>) {
    let o = Command::new(support::agent_bin())
        .env("SOFTHSM2_CONF", conf)
        .arg("--config")
        .arg(&s.config_path)
        .args(args)
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), text(&o), o.stdout)
}

#[test]
fn checkpoints_signed_on_a_softhsm2_token_verify_with_openssl_and_the_agent() {
    let work = tempfile::tempdir().unwrap();
    let conf = token(work.path());
    let pin = work.path().join("hsm.pin");
    std::fs::write(&pin, "1234\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = AuditScratch::with_local_destination(&format!(
        "destinations = [\"local\"]\nsigning_key_pkcs11 = \"pkcs11:token=cloudnx;object=audit\"\n\
         pkcs11_module = \"{MODULE}\"\npkcs11_pin_file = \"{}\"\n",
        pin.display()
    ));
    for i in 1..=4 {
        s.log().append(mixed_entry(i)).unwrap();
    }
    let (code, out, _) = agent(&s, &conf, &["audit", "ship"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !s.config.audit.signing_key_file.exists(),
        "no key file: the key stays on the token"
    );
    // The public key, read from the token by the agent.
    let (code, out, pem) = agent(&s, &conf, &["audit", "public-key"]);
    assert_eq!(code, 0, "{out}");
    let pub_pem = work.path().join("pub.pem");
    std::fs::write(&pub_pem, &pem).unwrap();
    let cp: Checkpoint =
        serde_json::from_str(std::fs::read_to_string(s.checkpoints()).unwrap().trim()).unwrap();
    assert_eq!(cp.seq, 4);
    let (kid, _) =
        cloudnx_agent::audit::key::from_public_pem(&String::from_utf8(pem).unwrap()).unwrap();
    assert_eq!(cp.kid.as_deref(), Some(kid.as_str()));
    // openssl pkeyutl -verify over the §7 bytes.
    let o = support::audit::openssl_verify_checkpoint(work.path(), &pub_pem, "test-host", &cp);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Signature Verified Successfully"));
    // The agent's own checks, here and off the host.
    let (code, out, _) = agent(&s, &conf, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = agent(&s, &conf, &["audit", "verify", "--destination", "local"]);
    assert_eq!(code, 0, "{out}");

    // A wrong PIN fails clearly and writes no checkpoint; a loose PIN file is
    // refused by check-config.
    std::fs::write(&pin, "9999\n").unwrap();
    s.log().append(mixed_entry(5)).unwrap();
    let (code, out, _) = agent(&s, &conf, &["audit", "ship"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("logging in to the PKCS#11 token"), "{out}");
    assert!(!out.contains("9999"), "{out}");
    assert_eq!(
        std::fs::read_to_string(s.checkpoints())
            .unwrap()
            .lines()
            .count(),
        1
    );
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, _) = agent(&s, &conf, &["check-config"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("pkcs11_pin_file"), "{out}");
}
