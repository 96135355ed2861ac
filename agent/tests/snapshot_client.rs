//! The Proxmox VE client (`cloudnx_agent::pve`) against the API simulator:
//! envelope, UPIDs, task polling and the documented error shapes.

mod support;

use cloudnx_agent::pve::{GuestType, PveClient, PveError};
use serde_json::json;
use std::time::Duration;
use support::pve::{PveSim, TOKEN_ID, TOKEN_SECRET};
use support::Scratch;
use tokio_util::sync::CancellationToken;

fn client(scratch: &Scratch, sim: &PveSim) -> PveClient {
    let secret = scratch.secret("token", TOKEN_SECRET);
    PveClient::new(
        &sim.url,
        TOKEN_ID,
        &secret,
        &sim.ca,
        Duration::from_secs(10),
        cloudnx_agent::tls_floor::TlsFloor::V1_3,
    )
    .unwrap()
}

fn sim(scratch: &Scratch) -> PveSim {
    PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "task_seconds": 0.2, "guests": [
            {"vmid": 100, "type": "qemu", "snapshots": [{"name": "keep-me", "description": "by hand"}]},
            {"vmid": 101, "type": "lxc"}]}),
    )
}

#[tokio::test]
async fn create_list_delete_round_trip_through_tasks() {
    let scratch = Scratch::new();
    let sim = sim(&scratch);
    let c = client(&scratch, &sim);
    let never = CancellationToken::new();
    for (vmid, t, create_type, delete_type) in [
        (100, GuestType::Qemu, "qmsnapshot", "qmdelsnapshot"),
        (101, GuestType::Lxc, "vzsnapshot", "vzdelsnapshot"),
    ] {
        let upid = c
            .create_snapshot(
                "pve1",
                t,
                vmid,
                "cnx-20261123010203",
                false,
                "cloudnx-agent: host=h job=j",
            )
            .await
            .unwrap();
        assert_eq!(
            (
                upid.node.as_str(),
                upid.task_type.as_str(),
                upid.id.as_str()
            ),
            ("pve1", create_type, vmid.to_string().as_str())
        );
        assert_eq!(upid.user, TOKEN_ID);
        let st = c
            .wait_task(&upid, Duration::from_secs(10), &never)
            .await
            .unwrap();
        assert_eq!(st.exitstatus.as_deref(), Some("OK"));
        let list = c.snapshots("pve1", t, vmid).await.unwrap();
        let last = list.last().unwrap();
        assert!(last.is_current(), "the list ends with `current`: {list:?}");
        let ours = list
            .iter()
            .find(|s| s.name == "cnx-20261123010203")
            .unwrap();
        assert_eq!(ours.description, "cloudnx-agent: host=h job=j");
        assert!(ours.snapstate.is_none() && ours.snaptime.is_some());
        assert_eq!(c.task_log_tail(&upid, 1).await.unwrap(), ["TASK OK"]);

        let again = c
            .create_snapshot("pve1", t, vmid, "cnx-20261123010203", false, "x")
            .await
            .unwrap();
        let st = c
            .wait_task(&again, Duration::from_secs(10), &never)
            .await
            .unwrap();
        assert_eq!(
            st.exitstatus.as_deref(),
            Some("snapshot name 'cnx-20261123010203' already used"),
            "HTTP 200 + failing task"
        );

        let del = c
            .delete_snapshot("pve1", t, vmid, "cnx-20261123010203")
            .await
            .unwrap();
        assert_eq!(del.task_type, delete_type);
        assert_eq!(
            c.wait_task(&del, Duration::from_secs(10), &never)
                .await
                .unwrap()
                .exitstatus
                .as_deref(),
            Some("OK")
        );
        let names: Vec<String> = c
            .snapshots("pve1", t, vmid)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(
            !names.contains(&"cnx-20261123010203".to_owned()),
            "{names:?}"
        );
    }
    assert!(c
        .snapshots("pve1", GuestType::Qemu, 100)
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "keep-me"));
}

#[tokio::test]
async fn parameter_reserved_name_and_missing_guest_errors_are_decoded() {
    let scratch = Scratch::new();
    let sim = sim(&scratch);
    let c = client(&scratch, &sim);
    match c
        .create_snapshot("pve1", GuestType::Qemu, 100, "Bad name!", false, "")
        .await
    {
        Err(PveError::Api {
            status: 400,
            message,
            errors,
            ..
        }) => {
            assert_eq!(message.trim(), "Parameter verification failed.");
            assert!(
                errors["snapname"].contains("invalid configuration ID"),
                "{errors:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = c
        .create_snapshot("pve1", GuestType::Qemu, 100, "current", false, "")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(
        e.to_string()
            .contains("unable to use snapshot name 'current' (reserved name)"),
        "{e}"
    );
    let e = c.snapshots("pve1", GuestType::Qemu, 999).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn cluster_resources_name_the_owner_and_flag_templates() {
    let scratch = Scratch::new();
    let sim = PveSim::start(
        scratch.dir.path(),
        json!({"node": "pve1", "nodes": ["pve1", "pve2"], "guests": [
            {"vmid": 100}, {"vmid": 101, "template": 1}, {"vmid": 102, "node": "pve2", "type": "lxc"}]}),
    );
    let c = client(&scratch, &sim);
    let g = c.cluster_guests().await.unwrap();
    let got: Vec<(u32, &str, bool, GuestType)> = g
        .iter()
        .map(|g| (g.vmid, g.node.as_str(), g.template, g.guest_type))
        .collect();
    assert_eq!(
        got,
        [
            (100, "pve1", false, GuestType::Qemu),
            (101, "pve1", true, GuestType::Qemu),
            (102, "pve2", false, GuestType::Lxc)
        ]
    );
    let nodes: Vec<String> = c
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["pve1", "pve2"]);
}

#[test]
fn client_refuses_plain_http_and_an_empty_ca() {
    let scratch = Scratch::new();
    let secret = scratch.secret("token", TOKEN_SECRET);
    let ca = scratch.path("empty.pem");
    std::fs::write(&ca, "").unwrap();
    let e = PveClient::new(
        "http://127.0.0.1:8006/api2/json",
        TOKEN_ID,
        &secret,
        &ca,
        Duration::from_secs(1),
        cloudnx_agent::tls_floor::TlsFloor::V1_3,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not https"), "{e}");
    let e = PveClient::new(
        "https://127.0.0.1:8006/api2/json",
        TOKEN_ID,
        &secret,
        &ca,
        Duration::from_secs(1),
        cloudnx_agent::tls_floor::TlsFloor::V1_3,
    )
    .unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let dbg = format!(
        "{:?}",
        PveClient::new(
            "https://x/api2/json",
            TOKEN_ID,
            &secret,
            &{
                support::pve::make_certs(&scratch.path("pki"), "ca");
                scratch.path("pki/ca.pem")
            },
            Duration::from_secs(1),
            cloudnx_agent::tls_floor::TlsFloor::V1_3,
        )
        .unwrap()
    );
    assert!(!dbg.contains(TOKEN_SECRET), "{dbg}");
}

/// `openssl s_server -tls1_2 -www` with the simulator's certificate: a
/// Proxmox endpoint that speaks only TLS 1.2. Killed on drop.
struct Tls12Server(std::process::Child, u16);

impl Drop for Tls12Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_proxmox_api_below_the_tls_floor_is_named_with_the_version() {
    let scratch = Scratch::new();
    let sim = sim(&scratch); // for its certificates
    let pki = scratch.dir.path().join("pki");
    let port = support::free_port();
    let server = Tls12Server(
        std::process::Command::new(support::require("openssl"))
            .args(["s_server", "-accept", &port.to_string(), "-tls1_2", "-www"])
            .arg("-cert")
            .arg(pki.join("srv.pem"))
            .arg("-key")
            .arg(pki.join("srv.key"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        port,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", server.1)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/api2/json");
    let secret = scratch.secret("token", TOKEN_SECRET);
    let client = |floor| {
        PveClient::new(
            &url,
            TOKEN_ID,
            &secret,
            &sim.ca,
            Duration::from_secs(10),
            floor,
        )
        .unwrap()
    };
    let e = client(cloudnx_agent::tls_floor::TlsFloor::V1_3)
        .nodes()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "https://127.0.0.1:{port}/api2/json does not speak TLS 1.3 or newer"
        )),
        "{e}"
    );
    // With the floor at 1.2 the handshake succeeds: what fails is the answer
    // (s_server's status page is no Proxmox envelope), not TLS.
    let e = client(cloudnx_agent::tls_floor::TlsFloor::V1_2)
        .nodes()
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains("TLS"), "{e}");
}
