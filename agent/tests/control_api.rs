//! The control-plane API over mutual TLS, against the real daemon process and
//! real TLS peers (curl, openssl s_client, a rustls client, `ctl`).

mod support;

use serde_json::Value;
use support::control_plane::{
    audit_records, client, curl, curl_identity, s_client, AgentHost, Daemon,
};
use support::tls::{Pki, OPERATOR};
use support::{free_port, Scratch};

type Agent = AgentHost;

fn agent(extra: &str) -> Agent {
    AgentHost::start(extra)
}

fn url(a: &Agent, path: &str) -> String {
    a.url(path)
}

/// curl with an identity; returns (exit code, HTTP status, body, stderr).
fn curl_as(
    a: &Agent,
    pair: Option<&support::tls::Pair>,
    extra: &[&str],
    path: &str,
) -> (i32, String, String, String) {
    let mut args: Vec<String> = match pair {
        Some(p) => curl_identity(&a.pki, p),
        None => vec!["--cacert".into(), a.pki.ca.display().to_string()],
    };
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(["-w".into(), "\n%{http_code}".into(), url(a, path)]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = curl(&refs);
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code, status.to_owned(), body.to_owned(), err)
}

#[test]
fn good_client_gets_200_and_every_misfit_peer_is_refused_with_403s_audited() {
    let a = agent("");
    // Allowed by DNS SAN and by URI SAN.
    let (code, status, body, err) = curl_as(&a, Some(&a.pki.operator), &[], "/healthz");
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let (code, status, _, err) = curl_as(&a, Some(&a.pki.operator_uri), &[], "/v1/status");
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");

    // Without a CRL configured, revocation is unknown: the revoked pair still works.
    let (_, status, _, _) = curl_as(&a, Some(&a.pki.revoked), &[], "/healthz");
    assert_eq!(status, "200");
    // Refused in the handshake: no certificate, another CA, expired.
    for (who, pair) in [
        ("no certificate", None),
        ("other CA", Some(&a.pki.foreign)),
        ("expired", Some(&a.pki.expired)),
    ] {
        let (code, status, body, err) = curl_as(&a, pair, &[], "/healthz");
        assert!(
            code != 0 && status != "200",
            "{who}: curl exit {code}, status {status}, body {body}, stderr {err}"
        );
    }
    // A TLS 1.2-only client cannot even negotiate.
    let (code, _, _, err) = curl_as(&a, Some(&a.pki.operator), &["--tls-max", "1.2"], "/healthz");
    assert_ne!(code, 0, "curl --tls-max 1.2 must fail: {err}");
    let o = s_client(&a.pki, &a.pki.operator, a.d.port, &["-tls1_2"]);
    let t = support::text(&o);
    assert!(
        !o.status.success() && t.contains("alert protocol version"),
        "openssl s_client -tls1_2: {t}"
    );
    // ... while TLS 1.3 with the same identity verifies.
    let o = s_client(
        &a.pki,
        &a.pki.operator,
        a.d.port,
        &["-tls1_3", "-verify_return_error"],
    );
    let t = support::text(&o);
    assert!(
        t.contains("TLSv1.3") && t.contains("Verify return code: 0 (ok)"),
        "openssl s_client -tls1_3: {t}"
    );

    // Chains to our CA but its SAN is not allowed: 403, GET and POST, audited.
    let (code, status, body, _) = curl_as(
        &a,
        Some(&a.pki.intruder),
        &["-H", "X-Request-Id: intr-1"],
        "/v1/status",
    );
    assert_eq!((code, status.as_str()), (0, "403"), "{body}");
    assert!(body.contains("intruder.test"), "{body}");
    let (_, status, _, _) = curl_as(
        &a,
        Some(&a.pki.intruder),
        &["-X", "POST", "-A", "evil/1"],
        "/v1/config/reload",
    );
    assert_eq!(status, "403");
    let recs = audit_records(&a.s.path("state"));
    let forbidden: Vec<&Value> = recs.iter().filter(|r| r["status"] == 403).collect();
    assert_eq!(forbidden.len(), 2, "{recs:#?}");
    assert_eq!(forbidden[0]["method"], "GET");
    assert_eq!(forbidden[0]["request_id"], "intr-1");
    assert_eq!(forbidden[1]["method"], "POST");
    assert_eq!(forbidden[1]["user_agent"], "evil/1");
    for r in &forbidden {
        assert_eq!(r["actor"], "intruder.test");
        assert_eq!(r["source_ip"], "127.0.0.1");
        assert_eq!(r["action"], "api.forbidden");
        assert!(r["duration_ms"].is_u64());
    }
    // The configuration was not reloaded by the intruder.
    assert!(
        !recs.iter().any(|r| r["action"] == "config.reload"),
        "{recs:#?}"
    );
    // The refused handshakes are visible in the daemon's log.
    assert!(
        a.d.logs().contains("TLS handshake refused"),
        "{}",
        a.d.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_status_jobs_audit_and_reload_and_audits_every_post() {
    let a = agent("");
    let http = client(&a.pki, &a.pki.operator);
    let get = |p: &str| http.get(url(&a, p)).send();

    let st: Value = get("/v1/status").await.unwrap().json().await.unwrap();
    assert_eq!(st["host_id"], "test-host");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["started_at"].as_str().unwrap().ends_with('Z'), "{st}");
    assert_eq!(st["jobs"]["backup"]["configured"], false, "{st}");
    assert_eq!(st["jobs"]["luks-check"]["running"], false, "{st}");

    let mut posts = 0;
    // A kind this host does not run: refused with the reason, 422 (not 409:
    // nothing is running, retrying will not help).
    let r = http
        .post(url(&a, "/v1/jobs/backup"))
        .header("x-request-id", "req-backup-1")
        .header("user-agent", "cp-test/1")
        .send()
        .await
        .unwrap();
    posts += 1;
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["x-request-id"], "req-backup-1");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["reason"], "not_configured", "{b}");
    assert!(b["error"].as_str().unwrap().contains("[backup]"), "{b}");

    for (path, body, want) in [
        ("/v1/jobs/nonsense", "", 404),
        ("/v1/jobs/backup", "{not json", 400),
        ("/v1/jobs/backup", "{\"databses\": [\"app\"]}", 400),
        // A restore writes into a live database: only someone on the host starts it.
        (
            "/v1/jobs/restore",
            "{\"restore\": {\"database\": \"app\", \"output\": \"/tmp/x\"}}",
            403,
        ),
        (
            "/v1/jobs/backup",
            "{\"restore\": {\"database\": \"app\"}}",
            400,
        ),
    ] {
        let r = http.post(url(&a, path)).body(body).send().await.unwrap();
        posts += 1;
        assert_eq!(r.status(), want, "POST {path} {body}");
        let b: Value = r.json().await.unwrap();
        assert!(b["error"].is_string(), "{b}");
    }
    assert_eq!(
        get("/v1/jobs/backup-000000000000").await.unwrap().status(),
        404
    );
    assert_eq!(
        http.delete(url(&a, "/v1/status"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    posts += 1;

    // Size limits: a 20 KiB header and a 100 KiB body are refused.
    let big = "x".repeat(20 * 1024);
    let r = http
        .get(url(&a, "/v1/status"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = http
        .post(url(&a, "/v1/jobs/backup"))
        .body("{".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    posts += 1;
    assert_eq!(r.status(), 413);

    // Reload: same path as SIGHUP; a bad file is refused, the old one stays.
    let reload = || http.post(url(&a, "/v1/config/reload")).send();
    let r = reload().await.unwrap();
    posts += 1;
    assert_eq!(r.status(), 200);
    let good = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(&a.config, format!("{good}\nbogus_key = 1\n")).unwrap();
    let r = reload().await.unwrap();
    posts += 1;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(b["problems"].to_string().contains("bogus_key"), "{b}");
    assert_eq!(
        get("/v1/status").await.unwrap().status(),
        200,
        "old configuration still serves"
    );
    std::fs::write(&a.config, good).unwrap();

    // Every POST (and the DELETE) is in the audit log with the request's facts.
    let recs = audit_records(&a.s.path("state"));
    let api: Vec<&Value> = recs
        .iter()
        .filter(|r| r["method"].is_string() && r["action"].as_str().unwrap().starts_with("api."))
        .collect();
    assert_eq!(api.len(), posts, "{recs:#?}");
    assert!(
        api.iter().all(|r| r["method"] != "GET"),
        "GETs are not audited: {api:#?}"
    );
    let first = api[0];
    assert_eq!(first["actor"], OPERATOR);
    assert_eq!(first["source_ip"], "127.0.0.1");
    assert_eq!(first["path"], "/v1/jobs/backup");
    assert_eq!(first["status"], 422);
    assert_eq!(first["request_id"], "req-backup-1");
    assert_eq!(first["user_agent"], "cp-test/1");
    assert!(first["duration_ms"].is_u64());
    assert_eq!(first["detail"]["reason"], "not_configured");
    // Without X-Request-Id one is generated.
    assert_eq!(api[1]["request_id"].as_str().unwrap().len(), 32);
    let reloads: Vec<&&Value> = api
        .iter()
        .filter(|r| r["action"] == "api.config.reload")
        .collect();
    assert_eq!(
        reloads
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![200, 400]
    );
    // The runner audited the reloads too, with the client as actor.
    assert_eq!(
        recs.iter()
            .filter(|r| r["action"] == "config.reload" && r["actor"] == OPERATOR)
            .count(),
        2
    );

    // The audit log through the API: oldest first, paged.
    let page: Value = get("/v1/audit?after_seq=0&limit=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    let page: Value = get("/v1/audit?after_seq=2&limit=1000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (The log may have grown since: a reload also reloads the certificates.)
    let records = page["records"].as_array().unwrap();
    assert!(records.len() >= recs.len() - 2);
    assert_eq!(records[..recs.len() - 2], recs[2..]);
    assert_eq!(records[0]["seq"], 3);
    assert_eq!(get("/v1/audit?limit=0").await.unwrap().status(), 400);
}

#[test]
fn ctl_speaks_the_api_with_a_client_certificate() {
    let a = agent("");
    let ctl = |pair: &support::tls::Pair, args: &[&str]| {
        let mut v = vec![
            "ctl".to_owned(),
            "--cert".into(),
            pair.cert.display().to_string(),
            "--key".into(),
            pair.key.display().to_string(),
        ];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        support::agent(&a.config, &refs)
    };
    let o = ctl(&a.pki.operator, &["health"]);
    assert!(o.status.success(), "{}", support::text(&o));
    let o = ctl(&a.pki.operator_uri, &["--request-id", "ctl-1", "status"]);
    assert!(o.status.success(), "{}", support::text(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["host_id"], "test-host");
    let o = ctl(&a.pki.operator, &["start", "backup", "--database", "app"]);
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("422") && support::text(&o).contains("not_configured"),
        "{}",
        support::text(&o)
    );
    let o = ctl(&a.pki.intruder, &["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", support::text(&o));
    assert!(support::text(&o).contains("403"), "{}", support::text(&o));
    let o = ctl(&a.pki.foreign, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", support::text(&o));
    let o = ctl(&a.pki.operator, &["reload"]);
    assert!(o.status.success(), "{}", support::text(&o));
    let recs = audit_records(&a.s.path("state"));
    assert!(
        !recs.iter().any(|r| r["request_id"] == "ctl-1"),
        "GET is not audited"
    );
    assert!(
        recs.iter().any(|r| r["action"] == "api.config.reload"
            && r["actor"] == OPERATOR
            && r["user_agent"]
                .as_str()
                .unwrap()
                .starts_with("cloudnx-agent-ctl/")),
        "{recs:#?}"
    );
    assert!(
        recs.iter().any(|r| r["action"] == "api.job.submit"
            && r["actor"] == OPERATOR
            && r["status"] == 422
            && r["detail"]["kind"] == "backup"),
        "{recs:#?}"
    );
}

#[test]
fn a_revoked_client_is_refused_in_the_handshake_when_a_crl_is_configured() {
    let s = Scratch::new();
    let pki = Pki::new(&s.path("tls"), "test-host");
    let port = free_port();
    let extra = format!("crl_file = \"{}\"\n", pki.crl.display());
    let config = s.config(&pki.config_section(port, None, &extra));
    let d = Daemon::start(&config, port);
    let a = Agent { s, pki, config, d };
    let (code, status, _, err) = curl_as(&a, Some(&a.pki.revoked), &[], "/healthz");
    assert!(
        code != 0 && status != "200",
        "revoked: curl exit {code}, status {status}, {err}"
    );
    let (code, status, _, err) = curl_as(&a, Some(&a.pki.operator), &[], "/healthz");
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");
    assert!(a.d.logs().contains("Revoked"), "{}", a.d.logs());
}

/// A refused reload's problems go to the API's 400 reply, the audit log (for
/// ever: it is hash-chained) and the journal: a password in the refused file
/// must reach none of them, whether the file is broken around it or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_never_carries_a_password() {
    let a = agent("");
    let http = client(&a.pki, &a.pki.operator);
    let good = std::fs::read_to_string(&a.config).unwrap();
    let secret = "Hunter2Secret";
    for (broken, want) in [
        // The quote left open: a TOML error on the line holding the password.
        (
            format!("\n[backup]\nconnection = \"host=/x password={secret}\n"),
            "invalid basic string",
        ),
        // Valid TOML: the password itself is the problem.
        (
            format!("\n[backup]\nconnection = \"host=/x password={secret}\"\n"),
            "`connection` holds a password",
        ),
    ] {
        std::fs::write(&a.config, format!("{good}{broken}")).unwrap();
        let r = http
            .post(url(&a, "/v1/config/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{body}");
        assert!(
            body.contains("agent.toml:"),
            "the problem is located: {body}"
        );
        assert!(body.contains("connection = <redacted>"), "{body}");
        assert!(!body.contains(secret), "the 400 reply leaked it: {body}");

        // SIGHUP: the same refusal, logged to the journal.
        let before = a.d.logs().matches("reload refused").count();
        nix::sys::signal::kill(a.d.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.d.logs().matches("reload refused").count() == before {
            assert!(std::time::Instant::now() < deadline, "{}", a.d.logs());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    std::fs::write(&a.config, good).unwrap();

    let logs = a.d.logs();
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(!logs.contains(secret), "the journal leaked it:\n{logs}");
    let audit = std::fs::read_to_string(a.s.path("state/audit.jsonl")).unwrap();
    let refused = audit_records(&a.s.path("state"))
        .into_iter()
        .filter(|r| r["action"] == "config.reload" && r["detail"]["accepted"] == false)
        .count();
    assert_eq!(refused, 4, "{audit}");
    assert!(!audit.contains(secret), "the audit log leaked it:\n{audit}");
}
