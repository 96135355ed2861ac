//! A test PKI made with the real `openssl` CLI: a CA, the agent's
//! server/client certificate, allowed and refused clients, the control
//! plane's server certificate, and a second, unrelated CA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SAN the test control plane accepts from operators.
pub const OPERATOR: &str = "control-plane.test";
/// A URI SAN that is also allowed.
pub const OPERATOR_URI: &str = "spiffe://cloudnx.test/ops";

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (mode 0600).
    pub key: PathBuf,
}

/// Everything the control-plane tests need.
#[derive(Clone)]
pub struct Pki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The CA every good certificate chains to.
    pub ca: PathBuf,
    ca_key: PathBuf,
    /// The agent: server cert (localhost, 127.0.0.1) and client identity `agent.<host_id>`.
    pub agent: Pair,
    /// An allowed operator/control plane client (DNS SAN [`OPERATOR`]).
    pub operator: Pair,
    /// An allowed client by URI SAN [`OPERATOR_URI`].
    pub operator_uri: Pair,
    /// Same CA, SAN not allowed.
    pub intruder: Pair,
    /// Same CA, allowed SAN, expired yesterday.
    pub expired: Pair,
    /// Allowed SAN, signed by another CA.
    pub foreign: Pair,
    /// The test control plane's server certificate (localhost, 127.0.0.1).
    pub control_plane: Pair,
    /// A server certificate for 127.0.0.1 from the other CA (an impostor control plane).
    pub foreign_server: Pair,
    /// Same CA, allowed SAN, listed in [`crl`](Self::crl).
    pub revoked: Pair,
    /// A CRL of the CA revoking [`revoked`](Self::revoked) (made by `openssl ca -gencrl`).
    pub crl: PathBuf,
}

/// Run openssl, panicking with its output on failure.
pub fn openssl(args: &[&str]) {
    let o = Command::new(super::require("openssl"))
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}",
        super::text(&o)
    );
}

fn key(path: &Path) {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn self_signed_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let k = dir.join(format!("{name}.key"));
    let c = dir.join(format!("{name}.pem"));
    key(&k);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        k.to_str().unwrap(),
        "-out",
        c.to_str().unwrap(),
        "-days",
        "3650",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    (c, k)
}

/// Issue a leaf for `san` (openssl subjectAltName syntax), `days` valid
/// (negative: already expired), with `eku`, signed by (ca, ca_key).
pub fn issue(
    dir: &Path,
    name: &str,
    san: &str,
    eku: &str,
    days: i32,
    ca: &Path,
    ca_key: &Path,
) -> Pair {
    let k = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let c = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    key(&k);
    openssl(&[
        "req",
        "-new",
        "-key",
        k.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nextendedKeyUsage={eku}\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        &format!("0x{:x}", rand_serial()),
        "-days",
        &days.to_string(),
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        c.to_str().unwrap(),
    ]);
    Pair { cert: c, key: k }
}

fn rand_serial() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % u128::from(u64::MAX),
    )
    .unwrap();
    (n ^ u64::from(std::process::id()).rotate_left(32)) & 0x7fff_ffff_ffff_ffff
}

/// Revoke `cert` with a minimal `openssl ca` database; returns the CRL path.
fn revoke(dir: &Path, ca: &Path, ca_key: &Path, cert: &Path) -> PathBuf {
    let db = dir.join("ca-db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("crlnumber"), "1000\n").unwrap();
    let cnf = db.join("ca.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\ncrlnumber = {db}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\ncertificate = {ca}\nprivate_key = {key}\n",
            db = db.display(),
            ca = ca.display(),
            key = ca_key.display()
        ),
    )
    .unwrap();
    let crl = dir.join("crl.pem");
    openssl(&[
        "ca",
        "-config",
        cnf.to_str().unwrap(),
        "-revoke",
        cert.to_str().unwrap(),
    ]);
    openssl(&[
        "ca",
        "-config",
        cnf.to_str().unwrap(),
        "-gencrl",
        "-out",
        crl.to_str().unwrap(),
    ]);
    crl
}

impl Pki {
    /// Create the PKI under `dir` for agent `host_id`.
    pub fn new(dir: &Path, host_id: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (ca, ca_key) = self_signed_ca(dir, "ca");
        let (other_ca, other_key) = self_signed_ca(dir, "other-ca");
        let both = "serverAuth,clientAuth";
        let agent = issue(
            dir,
            "agent",
            &format!("DNS:localhost,IP:127.0.0.1,DNS:agent.{host_id}"),
            both,
            365,
            &ca,
            &ca_key,
        );
        let operator = issue(
            dir,
            "operator",
            &format!("DNS:{OPERATOR}"),
            "clientAuth",
            30,
            &ca,
            &ca_key,
        );
        let operator_uri = issue(
            dir,
            "operator-uri",
            &format!("URI:{OPERATOR_URI}"),
            "clientAuth",
            30,
            &ca,
            &ca_key,
        );
        let intruder = issue(
            dir,
            "intruder",
            "DNS:intruder.test",
            "clientAuth",
            30,
            &ca,
            &ca_key,
        );
        let expired = issue(
            dir,
            "expired",
            &format!("DNS:{OPERATOR}"),
            "clientAuth",
            -1,
            &ca,
            &ca_key,
        );
        let foreign = issue(
            dir,
            "foreign",
            &format!("DNS:{OPERATOR}"),
            "clientAuth",
            30,
            &other_ca,
            &other_key,
        );
        let control_plane = issue(
            dir,
            "cp-server",
            "DNS:localhost,IP:127.0.0.1",
            "serverAuth",
            30,
            &ca,
            &ca_key,
        );
        let revoked = issue(
            dir,
            "revoked",
            &format!("DNS:{OPERATOR}"),
            "clientAuth",
            30,
            &ca,
            &ca_key,
        );
        let crl = revoke(dir, &ca, &ca_key, &revoked.cert);
        let foreign_server = issue(
            dir,
            "foreign-server",
            "DNS:localhost,IP:127.0.0.1",
            "serverAuth",
            30,
            &other_ca,
            &other_key,
        );
        Pki {
            dir: dir.to_owned(),
            foreign_server,
            revoked,
            crl,
            ca,
            ca_key,
            agent,
            operator,
            operator_uri,
            intruder,
            expired,
            foreign,
            control_plane,
        }
    }

    /// A fresh agent certificate from the same CA (for rotation), written to
    /// `name`.pem/.key in the PKI directory.
    pub fn new_agent_pair(&self, name: &str, host_id: &str) -> Pair {
        issue(
            &self.dir,
            name,
            &format!("DNS:localhost,IP:127.0.0.1,DNS:agent.{host_id}"),
            "serverAuth,clientAuth",
            400,
            &self.ca,
            &self.ca_key,
        )
    }

    /// `[control_plane]` for an agent listening on `port`, reporting to `report_url`.
    pub fn config_section(&self, port: u16, report_url: Option<&str>, extra: &str) -> String {
        let report = report_url.map_or(String::new(), |u| format!("report_url = \"{u}\"\n"));
        format!(
            "[control_plane]\nlisten = \"127.0.0.1:{port}\"\n{report}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nallowed_clients = [\"{OPERATOR}\", \"{OPERATOR_URI}\"]\n{extra}\n",
            self.ca.display(),
            self.agent.cert.display(),
            self.agent.key.display()
        )
    }
}

/// The serial of a PEM certificate file, as openssl prints it (upper hex).
pub fn serial_of_pem(pem: &[u8]) -> String {
    let mut child = Command::new(super::require("openssl"))
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_uppercase()
}
