//! `[control_plane]`: the mTLS API and where events are pushed.

use super::common::*;
use super::problem::{Check, Problem};
use serde::Deserialize;
use std::path::PathBuf;

/// `[control_plane]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    listen: Opt<String>,
    report_url: Opt<String>,
    ca_file: Opt<PathBuf>,
    crl_file: Opt<PathBuf>,
    cert_file: Opt<PathBuf>,
    key_file: Opt<PathBuf>,
    allowed_clients: Opt<Vec<String>>,
    max_connections: Opt<u32>,
    heartbeat_seconds: Opt<u64>,
    outbox_max_events: Opt<u64>,
    requests_per_second: Opt<u32>,
    header_timeout_seconds: Opt<u64>,
    retry_max_seconds: Opt<u64>,
}

/// Validated `[control_plane]`.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Address the API listens on.
    pub listen: std::net::SocketAddr,
    /// Base URL events are pushed to; None = events stay in the outbox.
    pub report_url: Option<String>,
    /// CA that client certificates (and the control plane's server cert) chain to.
    pub ca_file: PathBuf,
    /// Optional CRL (PEM) for client certificates.
    pub crl_file: Option<PathBuf>,
    /// The agent's certificate chain (server and client).
    pub cert_file: PathBuf,
    /// The agent's private key (a secret file).
    pub key_file: PathBuf,
    /// DNS or URI SANs accepted from clients.
    pub allowed_clients: Vec<String>,
    /// Concurrent connections accepted.
    pub max_connections: u32,
    /// Heartbeat event interval.
    pub heartbeat_seconds: u64,
    /// Outbox bound; the oldest heartbeats go first, never a page.
    pub outbox_max_events: u64,
    /// Sustained API requests per second per client identity (burst: twice that).
    pub requests_per_second: u32,
    /// Longest a client may take to send its TLS handshake, request headers or body.
    pub header_timeout_seconds: u64,
    /// Ceiling of the exponential backoff between event delivery attempts.
    pub retry_max_seconds: u64,
}

impl RawControlPlane {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        if let Some(l) = &self.listen {
            if l.get_ref().parse::<std::net::SocketAddr>().is_err() {
                c.err(
                    l.span(),
                    format!("listen {:?} is not an address:port", l.get_ref()),
                    "e.g. listen = \"0.0.0.0:7443\"",
                );
            }
        }
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
        Self::check_min(c, "max_connections", num32(&self.max_connections), 4);
        Self::check_min(c, "heartbeat_seconds", num(&self.heartbeat_seconds), 1);
        // A bound below this could not hold the pages of one bad day.
        Self::check_min(c, "outbox_max_events", num(&self.outbox_max_events), 10);
        Self::check_min(
            c,
            "requests_per_second",
            num32(&self.requests_per_second),
            1,
        );
        Self::check_min(
            c,
            "header_timeout_seconds",
            num(&self.header_timeout_seconds),
            1,
        );
        Self::check_min(c, "retry_max_seconds", num(&self.retry_max_seconds), 1);
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

    /// Merge a later fragment over this one.
    pub fn merge(&mut self, o: RawControlPlane) {
        merge_fields!(self, o; listen, report_url, ca_file, crl_file, cert_file, key_file, allowed_clients,
            max_connections, heartbeat_seconds, outbox_max_events, requests_per_second,
            header_timeout_seconds, retry_max_seconds);
    }

    /// Build the validated section.
    pub fn build(self, problems: &mut Vec<Problem>) -> Option<ControlPlaneConfig> {
        let ca = required(self.ca_file, "control_plane", "ca_file", problems);
        let cert = required(self.cert_file, "control_plane", "cert_file", problems);
        let key = required(self.key_file, "control_plane", "key_file", problems);
        let allowed = required(
            self.allowed_clients,
            "control_plane",
            "allowed_clients",
            problems,
        );
        Some(ControlPlaneConfig {
            listen: or(self.listen, "0.0.0.0:7443".into()).parse().ok()?,
            report_url: self.report_url.map(toml::Spanned::into_inner),
            ca_file: ca?,
            crl_file: self.crl_file.map(toml::Spanned::into_inner),
            cert_file: cert?,
            key_file: key?,
            allowed_clients: allowed?,
            max_connections: or(self.max_connections, 256),
            heartbeat_seconds: or(self.heartbeat_seconds, 60),
            outbox_max_events: or(self.outbox_max_events, 100_000),
            requests_per_second: or(self.requests_per_second, 20),
            header_timeout_seconds: or(self.header_timeout_seconds, 10),
            retry_max_seconds: or(self.retry_max_seconds, 300),
        })
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
