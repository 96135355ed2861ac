//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) on a
//! free port with a throwaway data dir and a receiver that sends nowhere:
//! tests read back what was posted through its v2 API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Alertmanager; killed on drop.
pub struct Alertmanager {
    child: Child,
    port: u16,
}

impl Alertmanager {
    /// Start one with its storage under `dir`; waits until `/-/ready` answers.
    pub fn start(dir: &Path) -> Alertmanager {
        let bin = super::require("prometheus-alertmanager");
        std::fs::create_dir_all(dir).unwrap();
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
        )
        .unwrap();
        let port = super::free_port();
        let cluster_port = super::free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--cluster.listen-address=127.0.0.1:{cluster_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager");
        let am = Alertmanager { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while am.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "Alertmanager on :{port} never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The alerts it currently holds (`GET /api/v2/alerts`).
    pub fn alerts(&self) -> serde_json::Value {
        let body = self.get("/api/v2/alerts").expect("GET /api/v2/alerts");
        serde_json::from_str(&body).expect("alerts are JSON")
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5"])
            .arg(format!("{}{path}", self.url()))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
