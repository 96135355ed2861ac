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
/// `host_id`), within 10 seconds.
pub async fn send(url: &str, host_id: &str, page: &Page) -> anyhow::Result<()> {
    let body = json!([{
        "labels": {"alertname": page.alertname, "severity": "page", "host_id": host_id},
        "annotations": {"summary": page.summary, "description": page.description},
    }]);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", url.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("HTTP {}", r.status());
    }
    Ok(())
}
