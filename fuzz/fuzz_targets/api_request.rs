//! Control-plane API inputs: the `POST /v1/jobs/{kind}` body, the
//! `GET /v1/audit` query string, the job kind path segment and `X-Request-Id`.
//!
//! The input is split at the first NUL: body, then query string (lossy UTF-8).
//! Properties: no panic; accepted job parameters re-serialise and parse back to
//! the same value; an accepted query's limit is within 1..=MAX_AUDIT_LIMIT; a
//! request id is honoured only when it is the given sane token.
#![no_main]

use cloudnx_agent::control::api::{audit_query, job_params, request_id, MAX_AUDIT_LIMIT};
use cloudnx_agent::jobs::{JobKind, JobParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (body, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };

    if let Ok(p) = job_params(body) {
        let again: JobParams =
            serde_json::from_slice(&serde_json::to_vec(&p).expect("serialise")).expect("reparse");
        assert_eq!(p, again, "job parameters must round-trip");
    }

    let query = String::from_utf8_lossy(rest);
    if let Ok((_after, limit)) = audit_query(&query) {
        assert!(
            (1..=MAX_AUDIT_LIMIT).contains(&limit),
            "limit {limit} out of bounds"
        );
    }

    // The same text as a path segment (job kind) and as a request id.
    if let Some(kind) = JobKind::parse(&query) {
        assert_eq!(kind.as_str(), query, "a kind parses only from its own name");
    }
    let rid = request_id(Some(&query));
    assert!(!rid.is_empty() && rid.len() <= 128);
    if rid != query {
        // A generated id: the given one must have been refused for a reason.
        let sane = !query.is_empty()
            && query.len() <= 128
            && query
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        assert!(!sane, "a sane request id {query:?} was replaced");
    }
});
