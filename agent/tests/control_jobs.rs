//! `POST /v1/jobs/{kind}` goes through the same runner and lock as the schedule
//! and the CLI: 409 while another process holds the kind's lock, 202 otherwise,
//! then the job record runs to its end state and is audited with the client's SAN.

mod support;

use serde_json::Value;
use std::os::unix::fs::OpenOptionsExt;
use support::control_plane::{audit_records, curl, curl_identity, wait_for, AgentHost};
use support::tls::OPERATOR;

fn call(a: &AgentHost, method: &str, path: &str) -> (String, Value) {
    let mut args = curl_identity(&a.pki, &a.pki.operator);
    args.extend([
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
        a.url(path),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = curl(&refs);
    assert_eq!(code, 0, "curl failed: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (
        status.to_owned(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn job_api_answers_409_while_the_kind_is_locked_then_202_and_runs_to_success() {
    let a = AgentHost::start("\n[luks]\nschedule = \"0 3 * * *\"\n");
    let locks = a.s.path("state/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(locks.join("luks-check.lock"))
        .unwrap();
    // Another process (here: the test) holds the lock, as a one-shot CLI run would.
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();

    let (status, body) = call(&a, "POST", "/v1/jobs/luks-check");
    assert_eq!(status, "409", "{body}");
    assert!(body.to_string().contains("already running"), "{body}");

    drop(held);
    let (status, body) = call(&a, "POST", "/v1/jobs/luks-check");
    assert_eq!(status, "202", "{body}");
    assert_eq!(body["kind"], "luks-check");
    assert_eq!(body["state"], "queued");
    let id = body["id"].as_str().expect("job id").to_owned();

    let done = wait_for(20, "the job to finish", || {
        let (_, j) = call(&a, "GET", &format!("/v1/jobs/{id}"));
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["started_at"].is_string() && done["finished_at"].is_string(),
        "{done}"
    );

    let records = audit_records(&a.s.path("state"));
    let start = records
        .iter()
        .find(|r| r["action"] == "job.start" && r["detail"]["job_id"] == id.as_str())
        .expect("job.start audited");
    assert_eq!(
        start["actor"], OPERATOR,
        "the job is attributed to the client certificate's SAN"
    );
    let finish = records
        .iter()
        .find(|r| r["action"] == "job.finish" && r["detail"]["job_id"] == id.as_str())
        .expect("job.finish audited");
    assert_eq!(finish["detail"]["state"], "succeeded");
    let refused = records
        .iter()
        .filter(|r| r["method"] == "POST" && r["status"] == 409)
        .count();
    assert_eq!(refused, 1, "the refused POST is audited too");
}
