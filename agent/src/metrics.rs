//! Metrics for node_exporter's textfile collector.
//!
//! The series live in a small JSON state file in `state_dir`; every update
//! (daemon or one-shot CLI) takes a lock, applies its change to that state,
//! and re-renders `{textfile_dir}/cloudnx_agent.prom` atomically (temp file in
//! the same directory, mode 0644, fsync, rename, fsync the directory). A
//! one-shot run therefore never erases series the daemon wrote, and nothing
//! ever parses the exposition file back. Duties never call this module: they
//! return a [`MetricsUpdate`] in their outcome and the runner applies it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The exposition file's name inside `textfile_dir`.
pub const FILE_NAME: &str = "cloudnx_agent.prom";

/// Every family the agent exports: (name, type, help). One prefix, `cloudnx_`.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    ("cloudnx_agent_info", "gauge", "Agent version and host id (always 1)."),
    ("cloudnx_job_last_run_timestamp_seconds", "gauge", "When the last run of this job kind finished (success or failure)."),
    ("cloudnx_job_last_success_timestamp_seconds", "gauge", "When the last successful run of this job kind finished."),
    ("cloudnx_job_last_duration_seconds", "gauge", "Wall time of the last run of this job kind."),
    ("cloudnx_job_last_status", "gauge", "1 if the last run of this job kind succeeded, 0 if it failed."),
    ("cloudnx_job_next_run_timestamp_seconds", "gauge", "When the daemon's schedule fires this job kind next."),
    ("cloudnx_backup_last_success_timestamp_seconds", "gauge", "When a backup of this database last completed on this destination."),
    ("cloudnx_backup_last_size_bytes", "gauge", "Encrypted size of the last backup of this database."),
    ("cloudnx_backup_retained", "gauge", "Complete backups of this database kept on this destination."),
    ("cloudnx_backup_last_duration_seconds", "gauge", "Wall time of the last backup of this database."),
    ("cloudnx_restore_drill_last_rto_seconds", "gauge", "Recovery time of the last successful restore drill (download to checks done)."),
    ("cloudnx_restore_drill_last_phase_seconds", "gauge", "Duration of each phase of the last restore drill."),
    ("cloudnx_restore_drill_last_success_timestamp_seconds", "gauge", "When a restore drill last succeeded."),
    ("cloudnx_snapshot_last_success_timestamp_seconds", "gauge", "When a snapshot of this guest last succeeded."),
    ("cloudnx_snapshot_retained", "gauge", "Snapshots of this guest taken by the agent and still kept."),
    ("cloudnx_snapshot_last_result", "gauge", "1 for the result of the last snapshot attempt of this guest (ok, degraded, failed, locked, unsupported)."),
    ("cloudnx_luks_volume_compliant", "gauge", "1 if the volume satisfies the LUKS policy, else 0."),
    ("cloudnx_luks_volume_open", "gauge", "1 if the volume's dm-crypt mapping is open."),
    ("cloudnx_luks_check_failed", "gauge", "1 for each policy check the volume fails."),
    ("cloudnx_luks_header_backup_timestamp_seconds", "gauge", "When the volume's LUKS header was last backed up."),
    ("cloudnx_luks_unencrypted_mount", "gauge", "1 for each disk filesystem under a configured data path that is not on an encrypting dm mapping."),
    ("cloudnx_tls_certificate_expiry_timestamp_seconds", "gauge", "notAfter of the agent's certificate and CA."),
    ("cloudnx_tls_reload_failures_total", "counter", "Certificate reloads refused because the new files were unusable."),
    ("cloudnx_report_outbox_events", "gauge", "Events waiting in the outbox for the control plane."),
    ("cloudnx_audit_records_total", "counter", "Records appended to the audit log."),
    ("cloudnx_audit_last_checkpoint_timestamp_seconds", "gauge", "When the audit log head was last sealed by a signed checkpoint."),
];

/// One series to set.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Family name (one of [`FAMILIES`]).
    pub name: &'static str,
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// A series with labels.
    pub fn new(name: &'static str, labels: &[(&'static str, &str)], value: f64) -> Self {
        Sample {
            name,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value,
        }
    }
}

/// What a job (or the daemon) changes in the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsUpdate {
    /// Families whose every series is dropped before `set` is applied
    /// (for families a run fully re-describes, e.g. per-check failures).
    pub clear: Vec<&'static str>,
    /// Series to set.
    pub set: Vec<Sample>,
}

impl MetricsUpdate {
    /// Add a series.
    pub fn set(&mut self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.set.push(Sample::new(name, labels, value));
    }
}

/// Persisted series: family → rendered label set → value.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    families: BTreeMap<String, BTreeMap<String, f64>>,
}

fn render_labels(labels: &[(&str, String)]) -> String {
    let mut sorted: Vec<_> = labels.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The metrics of one host: state file + exposition file.
#[derive(Debug, Clone)]
pub struct MetricsStore {
    state: PathBuf,
    lock: PathBuf,
    textfile: PathBuf,
    version: String,
    host_id: String,
}

impl MetricsStore {
    /// The store for a configuration.
    pub fn new(state_dir: &Path, textfile_dir: &Path, host_id: &str) -> Self {
        MetricsStore {
            state: state_dir.join("metrics.json"),
            lock: state_dir.join("metrics.lock"),
            textfile: textfile_dir.join(FILE_NAME),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host_id: host_id.to_owned(),
        }
    }

    /// Path of the exposition file.
    pub fn textfile(&self) -> &Path {
        &self.textfile
    }

    /// A value from the persisted state (not from the exposition file), e.g. the
    /// last run time of a kind; None when the series was never written.
    pub fn read(&self, name: &str, labels: &[(&'static str, &str)]) -> Option<f64> {
        let state: State = serde_json::from_slice(&std::fs::read(&self.state).ok()?).ok()?;
        let key = render_labels(
            &labels
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .collect::<Vec<_>>(),
        );
        state.families.get(name)?.get(&key).copied()
    }

    /// Apply an update from async code (file I/O on the blocking pool).
    pub async fn apply_async(&self, update: MetricsUpdate) -> anyhow::Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&update)).await?
    }

    /// Apply an update and re-render the exposition file, under the cross-process lock.
    pub fn apply(&self, update: &MetricsUpdate) -> anyhow::Result<()> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .with_context(|| format!("opening metrics lock {}", self.lock.display()))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", self.lock.display()))?;
        let mut state: State = match std::fs::read(&self.state) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %self.state.display(), "metrics state unreadable ({e}); starting afresh");
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.state.display())),
        };
        for f in &update.clear {
            state.families.remove(*f);
        }
        for s in &update.set {
            state
                .families
                .entry(s.name.to_owned())
                .or_default()
                .insert(render_labels(&s.labels), s.value);
        }
        let info = state
            .families
            .entry("cloudnx_agent_info".into())
            .or_default();
        info.clear();
        info.insert(
            render_labels(&[
                ("host_id", self.host_id.clone()),
                ("version", self.version.clone()),
            ]),
            1.0,
        );
        write_atomic(&self.state, serde_json::to_vec(&state)?.as_slice(), 0o600)?;
        write_atomic(&self.textfile, render(&state).as_bytes(), 0o644)
            .with_context(|| format!("writing metrics to {}", self.textfile.display()))
    }
}

fn render(state: &State) -> String {
    let mut out = String::new();
    let mut names: Vec<&String> = state.families.keys().collect();
    names.sort();
    for name in names {
        let series = &state.families[name];
        if series.is_empty() {
            continue;
        }
        let (ty, help) = FAMILIES
            .iter()
            .find(|f| f.0 == name)
            .map_or(("gauge", "cloudnx-agent metric."), |f| (f.1, f.2));
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        for (labels, v) in series {
            let _ = writeln!(out, "{name}{labels} {}", fmt_value(*v));
        }
    }
    out
}

/// Write `bytes` to `path` atomically: a temp file in the same directory with
/// `mode`, fsync, rename over `path`, fsync the directory. Readers see the old
/// or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A leading dot and no .prom suffix: node_exporter never reads the temp file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_update_keeps_series_written_by_another_process() {
        let d = tempfile::tempdir().unwrap();
        let store = MetricsStore::new(d.path(), d.path(), "h1");
        let mut a = MetricsUpdate::default();
        a.set("cloudnx_job_last_status", &[("kind", "backup")], 1.0);
        store.apply(&a).unwrap();
        let mut b = MetricsUpdate::default();
        b.set("cloudnx_job_last_status", &[("kind", "snapshot")], 0.0);
        MetricsStore::new(d.path(), d.path(), "h1")
            .apply(&b)
            .unwrap();
        let text = std::fs::read_to_string(store.textfile()).unwrap();
        assert!(
            text.contains("cloudnx_job_last_status{kind=\"backup\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cloudnx_job_last_status{kind=\"snapshot\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cloudnx_agent_info{host_id=\"h1\",version=\""),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let mode = std::fs::metadata(store.textfile())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn clear_drops_a_whole_family_and_labels_are_escaped() {
        let d = tempfile::tempdir().unwrap();
        let store = MetricsStore::new(d.path(), d.path(), "h1");
        let mut a = MetricsUpdate::default();
        a.set(
            "cloudnx_luks_check_failed",
            &[("volume", "v\"1"), ("check", "cipher")],
            1.0,
        );
        store.apply(&a).unwrap();
        assert!(std::fs::read_to_string(store.textfile())
            .unwrap()
            .contains(r#"{check="cipher",volume="v\"1"} 1"#));
        store
            .apply(&MetricsUpdate {
                clear: vec!["cloudnx_luks_check_failed"],
                set: vec![],
            })
            .unwrap();
        assert!(!std::fs::read_to_string(store.textfile())
            .unwrap()
            .contains("cloudnx_luks_check_failed"));
    }
}
