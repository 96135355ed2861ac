//! The Proxmox VE API simulator (`tests/pve-simulator/pve_simulator.py`, a
//! separate Python peer) started with a scenario, behind TLS from a throwaway
//! CA made with the real `openssl` CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The token id every scenario uses.
pub const TOKEN_ID: &str = "cloudnx@pve!agent";
/// Its secret (the simulator's copy comes from the scenario).
pub const TOKEN_SECRET: &str = "5b0d7f1e-6a51-4c3e-9d0a-1f2e3d4c5b6a";

/// A running simulator; killed on drop.
pub struct PveSim {
    child: Child,
    /// `https://127.0.0.1:PORT/api2/json`.
    pub url: String,
    /// The CA that signed the simulator's certificate.
    pub ca: PathBuf,
    stats: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1/localhost (`srv.pem`, `srv.key`) in `dir`.
pub fn make_certs(dir: &Path, ca_name: &str) {
    let openssl = super::require("openssl");
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n);
    run(Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args([
            "-subj",
            &format!("/CN={ca_name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=pve1.sim",
        ])
        .arg("-keyout")
        .arg(p("srv.key"))
        .arg("-out")
        .arg(p("srv.csr")));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n").unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("srv.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("srv.pem")));
}

/// The simulator script in the repository.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pve-simulator/pve_simulator.py")
}

impl PveSim {
    /// Start the simulator in `dir` with `scenario` (JSON; `token` is filled in if absent)
    /// and wait until it answers TLS connections.
    pub fn start(dir: &Path, mut scenario: serde_json::Value) -> PveSim {
        let python = super::require("python3");
        make_certs(&dir.join("pki"), "pve-sim-root-ca");
        if scenario.get("token").is_none() {
            scenario["token"] = serde_json::json!({"id": TOKEN_ID, "secret": TOKEN_SECRET});
        }
        let scen = dir.join("scenario.json");
        std::fs::write(&scen, serde_json::to_vec_pretty(&scenario).unwrap()).unwrap();
        let stats = dir.join("sim-stats.json");
        let mut child = Command::new(python)
            .arg(script())
            .arg("--scenario")
            .arg(&scen)
            .arg("--cert")
            .arg(dir.join("pki/srv.pem"))
            .arg("--key")
            .arg(dir.join("pki/srv.key"))
            .arg("--stats")
            .arg(&stats)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("sim.log")).unwrap(),
            ))
            .spawn()
            .expect("starting the Proxmox API simulator");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "simulator did not start: {line:?}; log: {}",
                    std::fs::read_to_string(dir.join("sim.log")).unwrap_or_default()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "simulator on port {port} never accepted a connection"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PveSim {
            child,
            url: format!("https://127.0.0.1:{port}/api2/json"),
            ca: dir.join("pki/ca.pem"),
            stats,
        }
    }

    /// The simulator's recorded statistics (max_in_flight, created, deleted, snapshots, requests).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.stats).expect("reading simulator stats"))
            .unwrap()
    }

    /// A `[snapshots]` section pointing at this simulator; `extra` lines are appended.
    pub fn section(&self, secret_file: &Path, extra: &str) -> String {
        format!(
            "[snapshots]\napi_url = \"{}\"\napi_token_id = \"{TOKEN_ID}\"\napi_token_secret_file = \"{}\"\nca_file = \"{}\"\nnode = \"pve1\"\n{extra}\n",
            self.url,
            secret_file.display(),
            self.ca.display()
        )
    }

    /// A `[proxmox]` section pointing at this simulator (node `pve1`).
    pub fn proxmox_section(&self, secret_file: &Path) -> String {
        format!(
            "[proxmox]\napi_url = \"{}\"\napi_token_id = \"{TOKEN_ID}\"\napi_token_secret_file = \"{}\"\nca_file = \"{}\"\nnode = \"pve1\"\n\n",
            self.url,
            secret_file.display(),
            self.ca.display()
        )
    }
}

impl Drop for PveSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
