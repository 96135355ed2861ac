//! `[control_plane]`: the mTLS API and where events are pushed.

use super::common::{check_file_exists, check_secret};
use super::problem::Check;
use super::schema::{fragment, Opt, Rules};
use std::path::PathBuf;

fragment! {
    /// `[control_plane]` as written in one file.
    raw RawControlPlane;
    /// Validated `[control_plane]`.
    #[derive(Debug, Clone)]
    pub struct ControlPlaneConfig {
        /// Address the API listens on.
        listen: std::net::SocketAddr = ("0.0.0.0:7443"),
        /// Base URL events are pushed to; None = events stay in the outbox.
        report_url: String = optional,
        /// CA that client certificates (and the control plane's server cert) chain to.
        ca_file: PathBuf = required,
        /// Optional CRL (PEM) for client certificates.
        crl_file: PathBuf = optional,
        /// The agent's certificate chain (server and client).
        cert_file: PathBuf = required,
        /// The agent's private key (a secret file).
        key_file: PathBuf = required,
        /// DNS or URI SANs accepted from clients.
        allowed_clients: Vec<String> = required,
        /// Concurrent connections accepted.
        max_connections: u32 = (256),
        /// Heartbeat event interval.
        heartbeat_seconds: u64 = (60),
        /// Outbox bound; the oldest heartbeats go first, never a page.
        outbox_max_events: u64 = (100_000),
        /// Sustained API requests per second per client identity (burst: twice that).
        requests_per_second: u32 = (20),
        /// Longest a client may take to send its TLS handshake, request headers or body.
        header_timeout_seconds: u64 = (10),
        /// Ceiling of the exponential backoff between event delivery attempts.
        retry_max_seconds: u64 = (300),
    }
}

impl Rules for RawControlPlane {
    fn rules(&self, c: &mut Check) {
        check_file_exists(c, "ca_file", &self.ca_file);
        check_file_exists(c, "crl_file", &self.crl_file);
        check_file_exists(c, "cert_file", &self.cert_file);
        check_secret(c, "key_file", &self.key_file, false);
        if let Some(u) = &self.report_url {
            if !u.get_ref().starts_with("https://") {
                c.err(
                    u.span(),
                    format!("report_url {:?} must be https://", u.get_ref()),
                    "events are sent over mutual TLS only",
                );
            }
        }
        if let Some(a) = &self.allowed_clients {
            if a.get_ref().iter().any(|n| n.trim().is_empty()) {
                c.err(
                    a.span(),
                    "allowed_clients holds an empty name",
                    "list the DNS or URI SANs of the accepted client certificates",
                );
            }
        }
        let num = |v: &Opt<u64>| v.as_ref().map(|s| (s.span(), *s.get_ref()));
        let num32 = |v: &Opt<u32>| v.as_ref().map(|s| (s.span(), u64::from(*s.get_ref())));
        check_min(c, "max_connections", num32(&self.max_connections), 4);
        check_min(c, "heartbeat_seconds", num(&self.heartbeat_seconds), 1);
        // A bound below this could not hold the pages of one bad day.
        check_min(c, "outbox_max_events", num(&self.outbox_max_events), 10);
        check_min(
            c,
            "requests_per_second",
            num32(&self.requests_per_second),
            1,
        );
        check_min(
            c,
            "header_timeout_seconds",
            num(&self.header_timeout_seconds),
            1,
        );
        check_min(c, "retry_max_seconds", num(&self.retry_max_seconds), 1);
    }
}

fn check_min(c: &mut Check, key: &str, v: Option<(std::ops::Range<usize>, u64)>, min: u64) {
    if let Some((span, n)) = v {
        if n < min {
            c.err(
                span,
                format!("`{key}` = {n} is too small"),
                format!("use at least {min}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn too_small_limits_are_reported_at_their_line() {
        let d = tempfile::tempdir().unwrap();
        let f = |n: &str| d.path().join(n);
        std::fs::write(f("ca.pem"), "").unwrap();
        std::fs::write(f("agent.pem"), "").unwrap();
        std::fs::write(f("agent.key"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f("agent.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = f("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{d}\"\n[control_plane]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/agent.pem\"\nkey_file = \"{d}/agent.key\"\nallowed_clients = [\"cp\"]\nheartbeat_seconds = 0\nrequests_per_second = 0\nretry_max_seconds = 30\n",
                d = d.path().display()
            ),
        )
        .unwrap();
        let p = crate::config::load(&cfg).unwrap_err().to_string();
        assert!(
            p.contains("agent.toml:7:21: `heartbeat_seconds` = 0 is too small"),
            "{p}"
        );
        assert!(
            p.contains("agent.toml:8:23: `requests_per_second` = 0 is too small"),
            "{p}"
        );
        assert!(!p.contains("retry_max_seconds"), "{p}");
    }
}
