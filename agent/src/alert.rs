//! Pages to a Prometheus Alertmanager (its v2 API), for the failures that
//! must wake someone even when the control plane is down. A leaf: the runner
//! sends what a duty's outcome asks for; nothing here decides when to page.

use anyhow::bail;
use serde_json::json;

/// What to page about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The `alertname` label, e.g. `CloudnxRestoreDrillFailed`.
    pub alertname: &'static str,
    /// One line for the notification.
    pub summary: String,
    /// The cause.
    pub description: String,
}

/// `POST {url}/api/v2/alerts` with one alert (severity `page`, the host's
/// `host_id`), within 10 seconds, over TLS no older than `min_tls` when the
/// URL is `https://`.
pub async fn send(
    url: &str,
    host_id: &str,
    page: &Page,
    min_tls: crate::tls_floor::TlsFloor,
) -> anyhow::Result<()> {
    let body = json!([{
        "labels": {"alertname": page.alertname, "severity": "page", "host_id": host_id},
        "annotations": {"summary": page.summary, "description": page.description},
    }]);
    let client = min_tls.apply(reqwest::Client::builder()).build()?;
    let r = client
        .post(format!("{}/api/v2/alerts", url.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .map_err(|e| match min_tls.explain(url, &e) {
            Some(words) => anyhow::anyhow!(words),
            None => e.into(),
        })?;
    if !r.status().is_success() {
        bail!("HTTP {}", r.status());
    }
    Ok(())
}
