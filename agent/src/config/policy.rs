//! `[policy]` (SPEC §10): the TLS floor of every outbound HTTPS client, and
//! where the agent may send anything — endpoint host patterns and destination
//! regions. The floor is handed to each client (S3, Proxmox, Alertmanager) as
//! a parameter; the allow-lists and the loopback-only `http://` rule are
//! checked here, at the span of each URL in the file that wrote it.

use super::problem::{Problem, Source};
use super::schema::{fragment, Key, Rules};
use crate::tls_floor::TlsFloor;
use toml::Spanned;

fragment! {
    /// `[policy]` as written in one file.
    raw RawPolicy;
    /// Validated `[policy]`.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct PolicyConfig {
        /// Lowest TLS version of every outbound HTTPS client (S3, Proxmox, Alertmanager): "1.2" or "1.3".
        min_tls_version: TlsFloor = ("1.3"),
        /// Host patterns every endpoint must match, e.g. ["*.your-objectstorage.com", "127.0.0.1"]; empty: any.
        allowed_endpoints: Vec<String> = (vec![]),
        /// Destination `region`s allowed, e.g. ["hel1"]; empty: any.
        allowed_regions: Vec<String> = (vec![]),
    }
}

impl Rules for RawPolicy {}

impl Key for TlsFloor {
    type Raw = String;
    fn parse(key: &str, raw: &String) -> Result<Self, (String, String)> {
        TlsFloor::parse(raw).ok_or_else(|| {
            (
                format!("{key} {raw:?} is not a TLS version the agent offers"),
                "write \"1.3\" (the default) or \"1.2\"".into(),
            )
        })
    }
}

/// Whether `host` is the loopback interface (`localhost`, 127/8, ::1).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` matches a pattern: exact (case-insensitive), or
/// `*.domain` for any host below `domain`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(domain) => h.ends_with(&format!(".{domain}")) && h.len() > domain.len() + 1,
        None => p == h,
    }
}

impl PolicyConfig {
    /// What is wrong with an outbound URL under this policy, and the fix.
    pub fn url_problem(&self, key: &str, url: &str) -> Option<(String, String)> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            // Not a URL at all is the section's own rule's to report.
            Err(_) => return None,
        };
        let host = parsed.host_str().unwrap_or("");
        if parsed.scheme() == "http" && !is_loopback(host) {
            return Some((
                format!("{key} {url:?} is plain http:// to {host}, which is not this host: everything leaving the host goes over TLS {}+", self.min_tls_version.as_str()),
                "use https:// (http:// is accepted only for 127.0.0.1, ::1 or localhost)".into(),
            ));
        }
        if !self.allowed_endpoints.is_empty()
            && !self.allowed_endpoints.iter().any(|p| host_matches(p, host))
        {
            return Some((
                format!(
                    "{key} {url:?}: host {host} is outside [policy] allowed_endpoints {:?}",
                    self.allowed_endpoints
                ),
                "use an endpoint the policy allows, or add its host to [policy] allowed_endpoints if the policy really changed".into(),
            ));
        }
        None
    }

    /// What is wrong with a destination region under this policy.
    pub fn region_problem(&self, region: &str) -> Option<(String, String)> {
        (!self.allowed_regions.is_empty() && !self.allowed_regions.iter().any(|r| r == region))
            .then(|| {
                (
                    format!(
                        "region {region:?} is outside [policy] allowed_regions {:?}",
                        self.allowed_regions
                    ),
                    "write a region the policy allows (`region = \"…\"`), or change [policy] allowed_regions if the residency promise really changed".into(),
                )
            })
    }
}

/// The outbound URLs and regions of one file, with their spans (everything
/// else in it is the sections' own to parse; unknown keys are ignored here).
#[derive(serde::Deserialize)]
struct Outbound {
    #[serde(default)]
    destinations: Vec<OutDest>,
    snapshots: Option<OutUrl>,
    control_plane: Option<OutUrl>,
    restore_drill: Option<OutUrl>,
}

#[derive(serde::Deserialize)]
struct OutDest {
    #[serde(rename = "type")]
    kind: Option<String>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
}

#[derive(serde::Deserialize)]
struct OutUrl {
    api_url: Option<Spanned<String>>,
    report_url: Option<Spanned<String>>,
    alertmanager_url: Option<Spanned<String>>,
}

/// Check every outbound URL and destination region written in `src` (one
/// configuration file, re-read) against the merged policy, so each problem
/// points at the file, line and column that wrote it.
pub(super) fn check_file(policy: &PolicyConfig, src: &Source, problems: &mut Vec<Problem>) {
    let Ok(out) = toml::from_str::<Outbound>(&src.text) else {
        return;
    };
    let mut urls: Vec<(&str, &Spanned<String>)> = Vec::new();
    for d in &out.destinations {
        if let Some(e) = &d.endpoint {
            urls.push(("endpoint", e));
        }
        match &d.region {
            Some(r) => {
                if let Some((m, h)) = policy.region_problem(r.get_ref()) {
                    problems.push(Problem::at(src, r.span(), m).hint(h));
                }
            }
            None if d.kind.as_deref() == Some("s3") => {
                if let (Some((m, h)), Some(e)) = (policy.region_problem("us-east-1"), &d.endpoint) {
                    let m = format!("{m} (the default, as this destination writes no `region`)");
                    problems.push(Problem::at(src, e.span(), m).hint(h));
                }
            }
            None => {}
        }
    }
    for (key, u) in [
        (
            "api_url",
            out.snapshots.as_ref().and_then(|s| s.api_url.as_ref()),
        ),
        (
            "report_url",
            out.control_plane
                .as_ref()
                .and_then(|s| s.report_url.as_ref()),
        ),
        (
            "alertmanager_url",
            out.restore_drill
                .as_ref()
                .and_then(|s| s.alertmanager_url.as_ref()),
        ),
    ] {
        if let Some(u) = u {
            urls.push((key, u));
        }
    }
    for (key, u) in urls {
        if let Some((m, h)) = policy.url_problem(key, u.get_ref()) {
            problems.push(Problem::at(src, u.span(), m).hint(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_patterns_and_loopback_is_known() {
        assert!(host_matches(
            "*.your-objectstorage.com",
            "hel1.your-objectstorage.com"
        ));
        assert!(!host_matches(
            "*.your-objectstorage.com",
            "your-objectstorage.com"
        ));
        assert!(!host_matches(
            "*.your-objectstorage.com",
            "evil-your-objectstorage.com"
        ));
        assert!(host_matches("127.0.0.1", "127.0.0.1"));
        assert!(host_matches("S3.Example.com", "s3.example.COM"));
        for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "0.0.0.0"] {
            assert!(!is_loopback(h), "{h}");
        }
        let p = PolicyConfig {
            allowed_endpoints: vec!["*.example.com".into(), "127.0.0.1".into()],
            ..PolicyConfig::default()
        };
        assert!(p.url_problem("endpoint", "http://127.0.0.1:9000").is_none());
        assert!(p
            .url_problem("endpoint", "https://s3.example.com")
            .is_none());
        assert!(p.url_problem("endpoint", "http://s3.example.com").is_some());
        assert!(p
            .url_problem("endpoint", "https://s3.elsewhere.net")
            .is_some());
    }
}
