//! Metrics for node_exporter's textfile collector. A leaf: it imports only
//! `fsx` and `util`.
//!
//! Every family the agent exports is a [`Family`] (name, type, help and label
//! names in one table), so a metric name is checked by the compiler. The
//! series live in a small JSON state file in `state_dir`; every update
//! (daemon or one-shot CLI) takes a lock, applies its change to that state,
//! and re-renders `{textfile_dir}/cloudnx_agent.prom` through the `prometheus`
//! crate's text encoder, atomically ([`crate::fsx::write_atomic`]: temp file
//! in the same directory, mode 0644, fsync, rename, fsync the directory). A
//! one-shot run therefore never erases series the daemon wrote, and nothing
//! ever parses the exposition file back. Duties never call this module: they
//! return a [`MetricsUpdate`] in their outcome and the runner applies it.

use crate::fsx;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The exposition file's name inside `textfile_dir`.
pub const FILE_NAME: &str = "cloudnx_agent.prom";

/// A family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (named `…_total`).
    Counter,
}

macro_rules! families {
    ($( $variant:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal; )*) => {
        /// Every family the agent exports. One prefix, `cloudnx_`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Family {
            $(
                #[doc = $help]
                $variant,
            )*
        }

        impl Family {
            /// Every family, in declaration order.
            pub const ALL: &'static [Family] = &[$(Family::$variant),*];

            /// The metric name.
            pub fn name(self) -> &'static str {
                match self { $(Family::$variant => $name,)* }
            }

            /// The `# HELP` text.
            pub fn help(self) -> &'static str {
                match self { $(Family::$variant => $help,)* }
            }

            /// The `# TYPE`.
            pub fn kind(self) -> Kind {
                match self { $(Family::$variant => Kind::$kind,)* }
            }

            /// The label names every series of the family carries.
            pub fn labels(self) -> &'static [&'static str] {
                match self { $(Family::$variant => &[$($label),*],)* }
            }
        }
    };
}

families! {
    AgentInfo = "cloudnx_agent_info", Gauge, ["host_id", "version"], "Agent version and host id (always 1).";
    JobLastRun = "cloudnx_job_last_run_timestamp_seconds", Gauge, ["kind"], "When the last run of this job kind finished (success or failure).";
    JobLastSuccess = "cloudnx_job_last_success_timestamp_seconds", Gauge, ["kind"], "When the last successful run of this job kind finished.";
    JobLastDuration = "cloudnx_job_last_duration_seconds", Gauge, ["kind"], "Wall time of the last run of this job kind.";
    JobLastStatus = "cloudnx_job_last_status", Gauge, ["kind"], "1 if the last run of this job kind succeeded, 0 if it failed.";
    JobNextRun = "cloudnx_job_next_run_timestamp_seconds", Gauge, ["kind"], "When the daemon's schedule fires this job kind next.";
    BackupLastSuccess = "cloudnx_backup_last_success_timestamp_seconds", Gauge, ["database", "destination"], "When a backup of this database last completed on this destination.";
    BackupLastSize = "cloudnx_backup_last_size_bytes", Gauge, ["database"], "Encrypted size of the last backup of this database.";
    BackupRetained = "cloudnx_backup_retained", Gauge, ["database", "destination"], "Complete backups of this database kept on this destination.";
    BackupLastDuration = "cloudnx_backup_last_duration_seconds", Gauge, ["database"], "Wall time of the last backup of this database.";
    BackupSharedPrefix = "cloudnx_backup_shared_prefix", Gauge, ["destination"], "1 when another agent instance writes backups under this host's prefix on this destination (a copied configuration).";
    DrillLastRto = "cloudnx_restore_drill_last_rto_seconds", Gauge, [], "Recovery time of the last successful restore drill (download to checks done).";
    DrillLastPhase = "cloudnx_restore_drill_last_phase_seconds", Gauge, ["phase"], "Duration of each phase of the last restore drill.";
    DrillLastSuccess = "cloudnx_restore_drill_last_success_timestamp_seconds", Gauge, [], "When a restore drill last succeeded.";
    SnapshotLastSuccess = "cloudnx_snapshot_last_success_timestamp_seconds", Gauge, ["type", "vmid"], "When a snapshot of this guest last succeeded.";
    SnapshotRetained = "cloudnx_snapshot_retained", Gauge, ["vmid"], "Snapshots of this guest taken by the agent and still kept.";
    SnapshotLastResult = "cloudnx_snapshot_last_result", Gauge, ["result", "vmid"], "1 for the result of the last snapshot attempt of this guest (ok, degraded, failed, locked, unsupported).";
    LuksCompliant = "cloudnx_luks_volume_compliant", Gauge, ["volume"], "1 if the volume satisfies the LUKS policy, else 0.";
    LuksOpen = "cloudnx_luks_volume_open", Gauge, ["volume"], "1 if the volume's dm-crypt mapping is open.";
    LuksCheckFailed = "cloudnx_luks_check_failed", Gauge, ["check", "volume"], "1 for each policy check the volume fails.";
    LuksHeaderBackup = "cloudnx_luks_header_backup_timestamp_seconds", Gauge, ["volume"], "When the volume's LUKS header was last backed up.";
    LuksUnencryptedMount = "cloudnx_luks_unencrypted_mount", Gauge, ["mountpoint", "source"], "1 for each disk filesystem under a configured data path that is not on an encrypting dm mapping.";
    TlsCertExpiry = "cloudnx_tls_certificate_expiry_timestamp_seconds", Gauge, ["cert"], "notAfter of the agent's certificate and CA.";
    TlsReloadFailures = "cloudnx_tls_reload_failures_total", Counter, [], "Certificate reloads refused because the new files were unusable.";
    OutboxEvents = "cloudnx_report_outbox_events", Gauge, [], "Events waiting in the outbox for the control plane.";
    AuditRecords = "cloudnx_audit_records_total", Counter, [], "Records appended to the audit log.";
    AuditLastCheckpoint = "cloudnx_audit_last_checkpoint_timestamp_seconds", Gauge, [], "When the audit log head was last sealed by a signed checkpoint.";
    VmBackupLastSuccess = "cloudnx_vm_backup_last_success_timestamp_seconds", Gauge, ["destination", "vmid"], "When a VM backup (vzdump) of this guest last completed on this destination.";
    VmBackupLastSize = "cloudnx_vm_backup_last_size_bytes", Gauge, ["vmid"], "Encrypted size of the last VM backup of this guest.";
    VmBackupRetained = "cloudnx_vm_backup_retained", Gauge, ["destination", "vmid"], "Complete VM backups of this guest kept on this destination.";

    AuditOffhostLag = "cloudnx_audit_offhost_lag_seconds", Gauge, ["destination"], "Age of the newest audit checkpoint confirmed on this destination while newer ones wait to be shipped; 0 when all are off the host.";
    HostUpdatesPending = "cloudnx_host_updates_pending", Gauge, ["origin"], "Installed packages `apt-get upgrade` would upgrade, by origin of the new version (security, other).";
    HostUpdatesHeldBack = "cloudnx_host_updates_held_back", Gauge, ["origin"], "Installed packages with a newer version that `apt-get upgrade` keeps back (it needs new packages or removals, e.g. a new kernel ABI), by origin.";
    HostSecurityOldestPending = "cloudnx_host_security_update_oldest_pending_seconds", Gauge, [], "How long the longest-waiting security update (pending or held back) has been pending, across newer versions of it; 0 when none.";
    HostRebootRequired = "cloudnx_host_reboot_required", Gauge, [], "1 if /run/reboot-required exists or the running kernel is not the newest installed one.";
    HostRebootRequiredSince = "cloudnx_host_reboot_required_since_timestamp_seconds", Gauge, [], "Since when a reboot has been required (only while one is).";
    HostKernelInfo = "cloudnx_host_kernel_info", Gauge, ["newest_installed", "running"], "The running kernel and the newest installed one of its flavour (always 1; none: no kernel in /boot).";
    HostUnattendedUpgradesLastRun = "cloudnx_host_unattended_upgrades_last_run_timestamp_seconds", Gauge, [], "When unattended-upgrades last ran (its stamp files); 0 when it never did or is not installed.";
    HostInMaintenanceWindow = "cloudnx_host_in_maintenance_window", Gauge, [], "1 while the configured maintenance window was open at the last posture run.";
    HostMaintenanceWindowLastEnd = "cloudnx_host_maintenance_window_last_end_timestamp_seconds", Gauge, [], "When the latest maintenance window that is over ended.";
    HostMaintenanceWindowNextStart = "cloudnx_host_maintenance_window_next_start_timestamp_seconds", Gauge, [], "When the next maintenance window opens.";
    // Policies (SPEC §10).
    LegalHold = "cloudnx_legal_hold", Gauge, [], "1 while a legal hold is set: retention deletes nothing.";
    BackupRetired = "cloudnx_backup_retired", Gauge, ["database", "destination"], "Complete backups still kept of a retired database (dropped or no longer selected); deleted retention_days after its newest.";
    KeyExpiry = "cloudnx_key_expiry_timestamp_seconds", Gauge, ["key"], "When the key expires (OpenPGP recipients `openpgp:<fingerprint>`, the audit key `audit:<kid>`); absent for a key that never expires.";
    KeyCreated = "cloudnx_key_created_timestamp_seconds", Gauge, ["key"], "When the key was created.";
}

impl Family {
    /// The family of a metric name, if the agent exports it.
    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.iter().copied().find(|f| f.name() == name)
    }
}

/// One series to set.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its family.
    pub family: Family,
    /// Label pairs (exactly the family's label names).
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

/// What a job (or the daemon) changes in the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsUpdate {
    /// Families whose every series is dropped before `set` is applied
    /// (for families a run fully re-describes, e.g. per-check failures).
    pub clear: Vec<Family>,
    /// Series to keep only if live (a retired database, a guest gone from
    /// this node, a recipient key no longer configured), dropped before `set`.
    pub keep_only: Vec<KeepOnly>,
    /// Series to set.
    pub set: Vec<Sample>,
    /// Series to drop before `set`: every series of the family whose label
    /// has this value (a retired guest's series leave the file).
    pub forget: Vec<(Family, &'static str, String)>,
}

impl MetricsUpdate {
    /// Add a series. The label names must be the family's (checked in
    /// debug builds; a mismatched series is dropped when rendering).
    pub fn set(&mut self, family: Family, labels: &[(&'static str, &str)], value: f64) {
        debug_assert!(
            same_names(family, labels.iter().map(|(k, _)| *k)),
            "{} takes labels {:?}, got {labels:?}",
            family.name(),
            family.labels()
        );
        self.set.push(Sample {
            family,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value,
        });
    }
}

/// Of a family's series whose `label` starts with `scope`, keep only those
/// whose value is in `live`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepOnly {
    /// The family.
    pub family: Family,
    /// The label judged.
    pub label: &'static str,
    /// Only values with this prefix are judged ("" for all).
    pub scope: &'static str,
    /// The values still live.
    pub live: std::collections::BTreeSet<String>,
}

impl MetricsUpdate {
    /// Drop `family`'s series whose `label` is not in `live`.
    pub fn keep_only(
        &mut self,
        family: Family,
        label: &'static str,
        live: std::collections::BTreeSet<String>,
    ) {
        self.keep_scoped(family, label, "", live);
    }

    /// Drop `family`'s series whose `label` starts with `scope` and is not in `live`.
    pub fn keep_scoped(
        &mut self,
        family: Family,
        label: &'static str,
        scope: &'static str,
        live: std::collections::BTreeSet<String>,
    ) {
        self.keep_only.push(KeepOnly {
            family,
            label,
            scope,
            live,
        });
    }
}

fn same_names<'a>(family: Family, names: impl Iterator<Item = &'a str>) -> bool {
    let mut got: Vec<&str> = names.collect();
    got.sort_unstable();
    got == family.labels()
}

/// Persisted series: family name → label key ([`label_key`]) → value.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    families: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The state file's key of a label set: `{a="x",b="y"}`, sorted by name,
/// values escaped as in the exposition format (the format earlier versions
/// wrote, so an upgraded agent keeps its series).
fn label_key<K: AsRef<str>, V: AsRef<str>>(labels: &[(K, V)]) -> String {
    let mut sorted: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = sorted
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// The label set of a state key (the inverse of [`label_key`]); None for a
/// key this version did not write.
fn parse_label_key(key: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if key.is_empty() {
        return Some(out);
    }
    let mut rest = key.strip_prefix('{')?.strip_suffix('}')?;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(name.to_owned(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(out)
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
    /// The store of a host: state in `state_dir`, exposition in `textfile_dir`.
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
    pub fn read(&self, family: Family, labels: &[(&'static str, &str)]) -> Option<f64> {
        let state = self.load().ok()?;
        state
            .families
            .get(family.name())?
            .get(&label_key(labels))
            .copied()
    }

    /// Every series of a family in the persisted state, as label maps.
    pub fn series(&self, family: Family) -> Vec<(BTreeMap<String, String>, f64)> {
        let Ok(state) = self.load() else {
            return Vec::new();
        };
        state
            .families
            .get(family.name())
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((parse_label_key(k)?, *v)))
            .collect()
    }

    fn load(&self) -> anyhow::Result<State> {
        match fsx::open_read(&self.state) {
            Ok(f) => Ok(serde_json::from_reader(std::io::BufReader::new(f)).unwrap_or_else(
                |e| {
                    tracing::warn!(path = %self.state.display(), "metrics state unreadable ({e}); starting afresh");
                    State::default()
                },
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state.display())),
        }
    }

    /// Apply an update from async code (file I/O on the blocking pool).
    pub async fn apply_async(&self, update: MetricsUpdate) -> anyhow::Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&update)).await?
    }

    /// Apply an update and re-render the exposition file, under the cross-process lock.
    pub fn apply(&self, update: &MetricsUpdate) -> anyhow::Result<()> {
        let _guard = fsx::lock_file(&self.lock, true).map_err(anyhow::Error::from)?;
        let mut state = self.load()?;
        for f in &update.clear {
            state.families.remove(f.name());
        }
        for k in &update.keep_only {
            if let Some(series) = state.families.get_mut(k.family.name()) {
                series.retain(|key, _| {
                    parse_label_key(key)
                        .and_then(|l| l.get(k.label).cloned())
                        .is_none_or(|v| !v.starts_with(k.scope) || k.live.contains(&v))
                });
            }
        }
        for (f, label, value) in &update.forget {
            if let Some(series) = state.families.get_mut(f.name()) {
                series
                    .retain(|k, _| parse_label_key(k).is_none_or(|l| l.get(*label) != Some(value)));
            }
        }
        for s in &update.set {
            state
                .families
                .entry(s.family.name().to_owned())
                .or_default()
                .insert(label_key(&s.labels), s.value);
        }
        let info = state
            .families
            .entry(Family::AgentInfo.name().into())
            .or_default();
        info.clear();
        info.insert(
            label_key(&[
                ("host_id", self.host_id.as_str()),
                ("version", self.version.as_str()),
            ]),
            1.0,
        );
        fsx::write_atomic(&self.state, serde_json::to_vec(&state)?.as_slice(), 0o600)?;
        let text = render(&state)?;
        fsx::write_atomic(&self.textfile, text.as_bytes(), 0o644)
            .with_context(|| format!("writing metrics to {}", self.textfile.display()))
    }
}

/// The exposition text of the state, by the `prometheus` crate's encoder.
/// Families this version does not export (left by an older one) and series
/// whose labels are not their family's are left out, with a warning.
fn render(state: &State) -> anyhow::Result<String> {
    use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};
    let registry = Registry::new();
    for (name, series) in &state.families {
        let Some(family) = Family::from_name(name) else {
            tracing::warn!(
                "metrics state holds {name}, which this version does not export; left out"
            );
            continue;
        };
        let rows: Vec<(Vec<String>, f64)> = series
            .iter()
            .filter_map(|(key, v)| {
                let labels = parse_label_key(key)
                    .filter(|l| same_names(family, l.keys().map(String::as_str)));
                if labels.is_none() {
                    tracing::warn!("{name}{key}: not the labels of {name}; left out");
                }
                let labels = labels?;
                let values = family.labels().iter().map(|n| labels[*n].clone()).collect();
                Some((values, *v))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let opts = Opts::new(family.name(), family.help());
        match family.kind() {
            Kind::Gauge => {
                let vec = GaugeVec::new(opts, family.labels())?;
                for (values, v) in &rows {
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    vec.get_metric_with_label_values(&values)?.set(*v);
                }
                registry.register(Box::new(vec))?;
            }
            Kind::Counter => {
                let vec = CounterVec::new(opts, family.labels())?;
                for (values, v) in &rows {
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    vec.get_metric_with_label_values(&values)?
                        .inc_by(v.max(0.0));
                }
                registry.register(Box::new(vec))?;
            }
        }
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_shot_update_keeps_series_written_by_another_process() {
        let d = tempfile::tempdir().unwrap();
        let store = MetricsStore::new(d.path(), d.path(), "h1");
        let mut a = MetricsUpdate::default();
        a.set(Family::JobLastStatus, &[("kind", "backup")], 1.0);
        store.apply(&a).unwrap();
        let mut b = MetricsUpdate::default();
        b.set(Family::JobLastStatus, &[("kind", "snapshot")], 0.0);
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
    fn keep_only_drops_the_series_of_retired_label_values() {
        let d = tempfile::tempdir().unwrap();
        let store = MetricsStore::new(d.path(), d.path(), "h1");
        let mut a = MetricsUpdate::default();
        for db in ["app", "gone"] {
            a.set(
                Family::BackupLastSuccess,
                &[("database", db), ("destination", "s3")],
                1.0,
            );
        }
        a.set(Family::BackupLastSize, &[("database", "gone")], 2.0);
        store.apply(&a).unwrap();
        let live: std::collections::BTreeSet<String> = ["app".to_owned()].into();
        let mut u = MetricsUpdate::default();
        u.keep_only(Family::BackupLastSuccess, "database", live);
        store.apply(&u).unwrap();
        let text = std::fs::read_to_string(store.textfile()).unwrap();
        assert!(text.contains("database=\"app\""), "{text}");
        assert!(
            !text.contains("cloudnx_backup_last_success_timestamp_seconds{database=\"gone\""),
            "{text}"
        );
        // Only the named family is touched.
        assert!(
            text.contains("cloudnx_backup_last_size_bytes{database=\"gone\"}"),
            "{text}"
        );
    }

    #[test]
    fn clear_drops_a_whole_family_and_labels_are_escaped() {
        let d = tempfile::tempdir().unwrap();
        let store = MetricsStore::new(d.path(), d.path(), "h1");
        let mut a = MetricsUpdate::default();
        a.set(
            Family::LuksCheckFailed,
            &[("volume", "v\"1\\x\ny"), ("check", "cipher")],
            1.0,
        );
        store.apply(&a).unwrap();
        let text = std::fs::read_to_string(store.textfile()).unwrap();
        assert!(
            text.contains(r#"cloudnx_luks_check_failed{check="cipher",volume="v\"1\\x\ny"} 1"#),
            "{text}"
        );
        store
            .apply(&MetricsUpdate {
                clear: vec![Family::LuksCheckFailed],
                ..Default::default()
            })
            .unwrap();
        assert!(!std::fs::read_to_string(store.textfile())
            .unwrap()
            .contains("cloudnx_luks_check_failed"));
    }

    #[test]
    fn every_family_is_named_typed_and_helped_once() {
        let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Family::ALL.len());
        for f in Family::ALL {
            assert!(f.name().starts_with("cloudnx_"), "{}", f.name());
            assert!(!f.help().is_empty());
            assert_eq!(f.kind() == Kind::Counter, f.name().ends_with("_total"));
            let mut sorted = f.labels().to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, f.labels(), "{}: labels in name order", f.name());
            assert_eq!(Family::from_name(f.name()), Some(*f));
        }
    }

    #[test]
    fn families_left_by_an_older_version_and_foreign_label_sets_are_not_rendered() {
        let mut state = State::default();
        state
            .families
            .entry("cloudnx_gone_metric".into())
            .or_default()
            .insert(String::new(), 1.0);
        let s = state
            .families
            .entry(Family::JobLastStatus.name().into())
            .or_default();
        s.insert(label_key(&[("kind", "backup")]), 1.0);
        s.insert(label_key(&[("job", "x")]), 1.0);
        let text = render(&state).unwrap();
        assert!(!text.contains("cloudnx_gone_metric"), "{text}");
        assert!(!text.contains("job=\"x\""), "{text}");
        assert!(
            text.contains("cloudnx_job_last_status{kind=\"backup\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counters_and_unlabelled_gauges_render() {
        let mut state = State::default();
        state
            .families
            .entry(Family::AuditRecords.name().into())
            .or_default()
            .insert(String::new(), 42.0);
        state
            .families
            .entry(Family::DrillLastRto.name().into())
            .or_default()
            .insert(String::new(), 12.5);
        let text = render(&state).unwrap();
        assert!(
            text.contains(
                "# TYPE cloudnx_audit_records_total counter\ncloudnx_audit_records_total 42\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("cloudnx_restore_drill_last_rto_seconds 12.5\n"),
            "{text}"
        );
    }

    proptest::proptest! {
        #[test]
        fn label_keys_round_trip(a in ".*", b in ".*") {
            let key = label_key(&[("b", b.as_str()), ("a", a.as_str())]);
            let back = parse_label_key(&key).unwrap();
            proptest::prop_assert_eq!(back.get("a"), Some(&a));
            proptest::prop_assert_eq!(back.get("b"), Some(&b));
        }
    }
}
