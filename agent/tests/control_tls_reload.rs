//! Certificate rotation without restart, against the real daemon: new
//! connections get the new certificate, connected clients keep working, and
//! a broken new pair is refused with the old one still serving.

mod support;

use serde_json::Value;
use support::control_plane::{audit_records, client, metric, s_client, wait_for, AgentHost};
use support::tls::{serial_of_pem, Pki};

/// The serial of the certificate the agent presents to a new connection.
fn served_serial(pki: &Pki, port: u16) -> String {
    let o = s_client(pki, &pki.operator, port, &["-tls1_3"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let start = t
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from s_client: {}", support::text(&o)));
    let end = t.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    serial_of_pem(&t.as_bytes()[start..end])
}

fn pem_serial(path: &std::path::Path) -> String {
    serial_of_pem(&std::fs::read(path).unwrap())
}

/// Install `src` at `dst` the way rotation tools do: write beside, rename.
fn install(src: &std::path::Path, dst: &std::path::Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_reaches_new_connections_and_a_broken_one_keeps_the_old() {
    let AgentHost { s, pki, mut d, .. } = AgentHost::start("");
    let port = d.port;
    let url = format!("https://127.0.0.1:{port}/v1/status");
    let old = pem_serial(&pki.agent.cert);
    assert_eq!(served_serial(&pki, port), old);
    let old_expiry = metric(
        &s,
        "cloudnx_tls_certificate_expiry_timestamp_seconds{cert=\"agent\"}",
    )
    .expect("agent expiry exported");
    assert!(
        metric(
            &s,
            "cloudnx_tls_certificate_expiry_timestamp_seconds{cert=\"ca\"}"
        )
        .unwrap()
            > old_expiry
    );

    // A client connected before the rotation.
    let http = client(&pki, &pki.operator);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    let fresh = pki.new_agent_pair("agent-2", "test-host");
    let new = pem_serial(&fresh.cert);
    install(&fresh.key, &pki.agent.key);
    install(&fresh.cert, &pki.agent.cert);
    let served = tokio::task::spawn_blocking({
        let (pki, new) = (pki.clone(), new.clone());
        move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if served_serial(&pki, port) == new {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            false
        }
    });
    // The connected client keeps working during and after the rotation.
    for _ in 0..20 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        served.await.unwrap(),
        "the new certificate was not served within 15 s:\n{}",
        d.logs()
    );
    let new_expiry = metric(
        &s,
        "cloudnx_tls_certificate_expiry_timestamp_seconds{cert=\"agent\"}",
    )
    .unwrap();
    assert!(
        new_expiry > old_expiry + 20.0 * 86400.0,
        "expiry metric follows the new certificate: {old_expiry} -> {new_expiry}"
    );
    let st: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        st["tls"]["serial"]
            .as_str()
            .unwrap()
            .replace(':', "")
            .to_uppercase(),
        new
    );

    // A broken certificate file: refused, the rotated pair keeps serving.
    std::fs::write(
        &pki.agent.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let state = s.path("state");
    let refused = wait_for(15, "the refused reload audited", || {
        audit_records(&state)
            .into_iter()
            .find(|r| r["action"] == "tls.reload" && r["detail"]["accepted"] == false)
    });
    assert!(
        refused["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("agent.pem"),
        "{refused}"
    );
    assert_eq!(refused["actor"], "daemon");
    wait_for(10, "the failure counted", || {
        (metric(&s, "cloudnx_tls_reload_failures_total")? == 1.0).then_some(())
    });
    assert_eq!(served_serial(&pki, port), new);
    assert_eq!(
        client(&pki, &pki.operator)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A certificate that does not match the key: refused as well.
    install(&pki.operator.cert, &pki.agent.cert);
    wait_for(10, "the mismatched pair refused", || {
        (metric(&s, "cloudnx_tls_reload_failures_total")? == 2.0).then_some(())
    });
    assert_eq!(served_serial(&pki, port), new);
    assert!(d.logs().contains("TLS reload refused"), "{}", d.logs());
    let accepted = audit_records(&state)
        .into_iter()
        .filter(|r| r["action"] == "tls.reload" && r["detail"]["accepted"] == true)
        .count();
    assert!(accepted >= 1);
    d.stop();
}
