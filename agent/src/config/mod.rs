//! Configuration: parsed once into typed, validated structs.
//!
//! Each key is written once, in its section's [`schema::fragment!`]
//! declaration (type, default, doc line), which generates the *raw fragment*
//! a file parses into (`deny_unknown_fields`, spanned values), its merge, its
//! type check and the typed struct. Each file (`agent.toml`, then
//! `agent.d/*.toml` in name order) is parsed and checked on its own, so every
//! type error, unknown key and bad value is reported with its file, line and
//! column. Fragments then merge (later wins, key by key; named array entries
//! such as `[[destinations]]` merge by `name`), and the merged result is built
//! into [`Config`]. Nothing downstream re-validates. Loading never has side
//! effects: startup, `check-config`, SIGHUP and the API reload all call
//! [`load`], and only swap in the result when it is `Ok`.

mod audit;
mod backup;
mod common;
mod control_plane;
mod destinations;
mod drill;
mod luks;
mod policy;
mod posture;
mod problem;
mod proxmox;
mod schema;
mod snapshots;
#[cfg(test)]
mod tests;
mod vm_backup;

pub use audit::AuditConfig;
pub use backup::BackupConfig;
pub use control_plane::ControlPlaneConfig;
pub use destinations::{Destination, DestinationKind, S3Destination};
pub use drill::DrillConfig;
pub use luks::{LuksConfig, LuksPolicy, LuksVolume};
pub use policy::PolicyConfig;
pub use posture::{OriginPattern, PostureConfig, ReleaseField};
pub use problem::{Problem, Problems, Source};
pub use proxmox::ProxmoxConfig;
pub use snapshots::SnapshotConfig;
pub use vm_backup::VmBackupConfig;

use common::Owners;
use problem::Check;
use schema::{fragment, Ctx, Merge, Rules};
use std::path::{Path, PathBuf};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/cloudnx-agent/agent.toml";
/// Environment variable naming the configuration file.
pub const ENV_VAR: &str = "CLOUDNX_AGENT_CONFIG";
/// `state_dir` when the configuration does not name one.
const DEFAULT_STATE_DIR: &str = "/var/lib/cloudnx-agent";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Names this host in metrics, backups, events and checkpoints.
    pub host_id: String,
    /// Locks, metrics state, outbox, spool.
    pub state_dir: PathBuf,
    /// Zone in which schedules are read.
    pub timezone: chrono_tz::Tz,
    /// Directory of node_exporter's textfile collector.
    pub textfile_dir: PathBuf,
    /// Backup destinations by name.
    pub destinations: Vec<Destination>,
    /// `[backup]`; None = the backup job is off.
    pub backup: Option<BackupConfig>,
    /// `[restore_drill]`; None = off.
    pub restore_drill: Option<DrillConfig>,
    /// `[snapshots]`; None = off.
    pub snapshots: Option<SnapshotConfig>,
    /// `[luks]`; None = off.
    pub luks: Option<LuksConfig>,
    /// `[posture]`; None = off.
    pub posture: Option<PostureConfig>,
    /// `[control_plane]`; None = no API, events stay in the outbox.
    pub control_plane: Option<ControlPlaneConfig>,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[policy]` (defaults when absent: TLS 1.3 floor, no allow-lists).
    pub policy: PolicyConfig,

    /// `[proxmox]`; None = not written (`[snapshots]` may still hold the keys).
    pub proxmox: Option<ProxmoxConfig>,
    /// `[vm_backup]`; None = off.
    pub vm_backup: Option<VmBackupConfig>,
    /// Things that work but should change (deprecated places of keys), for `check-config`.
    pub notices: Vec<String>,
    /// The files this was loaded from, in merge order.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// A destination by name.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

fragment! {
    /// One file as written: the top-level keys, every section, the destinations.
    raw RawConfig;
    /// The top-level keys.
    #[derive(Debug)]
    pub struct Top {
        /// Names this host in metrics, backups, events and checkpoints.
        host_id: String = {|c| c.host_name.clone()},
        /// Locks, metrics state, outbox, spool.
        state_dir: PathBuf = (DEFAULT_STATE_DIR),
        /// Zone in which schedules are read.
        timezone: chrono_tz::Tz = ("Asia/Kolkata"),
    }
    tables {
        metrics: RawMetrics,
        backup: backup::RawBackup,
        restore_drill: drill::RawDrill,
        snapshots: snapshots::RawSnapshots,
        luks: luks::RawLuks,
        posture: posture::RawPosture,
        control_plane: control_plane::RawControlPlane,
        audit: audit::RawAudit,
        policy: policy::RawPolicy,

        proxmox: proxmox::RawProxmox,
        vm_backup: vm_backup::RawVmBackup,
    }
    arrays { destinations: destinations::RawDestination as "destinations", }
}

fragment! {
    /// `[metrics]` as written.
    raw RawMetrics;
    /// `[metrics]`.
    #[derive(Debug)]
    pub struct Metrics {
        /// Directory of node_exporter's textfile collector.
        textfile_dir: PathBuf = ("/var/lib/prometheus/node-exporter"),
    }
}

impl Rules for RawMetrics {}

impl Rules for RawConfig {
    fn rules(&self, c: &mut Check) {
        if let Some(h) = &self.host_id {
            let ok = !h.get_ref().is_empty()
                && h.get_ref()
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !ok {
                c.err(
                    h.span(),
                    format!(
                        "host_id {:?} is not usable in object keys and labels",
                        h.get_ref()
                    ),
                    "use letters, digits, '-', '_' and '.' only",
                );
            }
        }
    }
}

/// The configuration file to use: `--config`, else `$CLOUDNX_AGENT_CONFIG`, else the default.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(ENV_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// The main file followed by `agent.d/*.toml` beside it, in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, Problem> {
    let mut out = vec![path.to_owned()];
    let dir = path.parent().unwrap_or(Path::new(".")).join("agent.d");
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            let mut dropins: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
                .collect();
            dropins.sort();
            out.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Problem::in_file(
                &dir,
                format!("cannot list drop-in directory: {e}"),
            ))
        }
    }
    Ok(out)
}

/// Load, merge and validate the configuration at `path` (plus its drop-ins).
pub fn load(path: &Path) -> Result<Config, Problems> {
    load_with(path, true)
}

/// [`load`] for the LUKS helper: everything is parsed and checked as usual,
/// but of the files the configuration names only `[luks]`'s are looked at
/// (see [`Check::other_files`]).
pub fn load_for_luks_helper(path: &Path) -> Result<Config, Problems> {
    load_with(path, false)
}

fn load_with(path: &Path, other_files: bool) -> Result<Config, Problems> {
    let files = files(path).map_err(|p| Problems(vec![p]))?;
    // Each file parsed on its own (a problem, or the fragment and its text).
    let parsed: Vec<Result<(Source, RawConfig), Problem>> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| {
                let hint = if f == path {
                    format!("pass --config PATH or set {ENV_VAR}")
                } else {
                    "fix or remove the drop-in".into()
                };
                Problem::in_file(f, format!("cannot read configuration: {e}")).hint(hint)
            })?;
            let src = Source {
                path: f.clone(),
                text,
            };
            match toml::from_str::<RawConfig>(&src.text) {
                Ok(raw) => Ok((src, raw)),
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    Err(Problem::at(&src, span, e.message().trim().to_owned()).hint("see /usr/share/doc/cloudnx-agent/agent.toml for every key, its type and its default"))
                }
            }
        })
        .collect();
    // Who may own secret files depends on the state_dir in force.
    let state_dir = parsed
        .iter()
        .rev()
        .filter_map(|p| p.as_ref().ok())
        .find_map(|(_, raw)| raw.state_dir.as_ref())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |s| s.get_ref().clone());
    let owners = Owners::for_state_dir(&state_dir);
    let mut problems = Vec::new();
    let mut merged = RawConfig::default();
    let mut sources = Vec::new();
    for p in parsed {
        match p {
            Err(p) => problems.push(p),
            Ok((src, raw)) => {
                raw.check_all(&mut Check {
                    src: &src,
                    problems: &mut problems,
                    other_files,
                    owners,
                });
                merged.merge(raw);
                sources.push(src);
            }
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let cfg = build(merged, files, &mut problems);
    // [policy] over every outbound URL and region, at the span that wrote it.
    if let Some(c) = &cfg {
        for src in &sources {
            policy::check_file(&c.policy, src, &mut problems);
        }
    }
    match cfg {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(Problems(problems)),
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn build(mut raw: RawConfig, files: Vec<PathBuf>, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut ctx = Ctx {
        host_name: host_name(),
        ..Ctx::default()
    };
    let top = Top::build(&mut raw, "top level", &ctx, problems)?;
    ctx.host_id.clone_from(&top.host_id);
    ctx.state_dir.clone_from(&top.state_dir);
    let metrics = Metrics::build(
        &mut raw.metrics.unwrap_or_default(),
        "metrics",
        &ctx,
        problems,
    )?;
    let destinations: Vec<Destination> = raw
        .destinations
        .into_iter()
        .filter_map(|d| destinations::build(d, &ctx, problems))
        .collect();
    let backup = raw
        .backup
        .and_then(|mut b| BackupConfig::build(&mut b, "backup", &ctx, problems));
    let restore_drill = raw
        .restore_drill
        .and_then(|mut d| DrillConfig::build(&mut d, "restore_drill", &ctx, problems));
    let proxmox = proxmox::build(raw.proxmox, &ctx, problems);
    let mut notices = Vec::new();
    let snapshots = raw
        .snapshots
        .and_then(|s| snapshots::build(s, &ctx, proxmox.as_ref(), &mut notices, problems));
    let vm_backup = raw.vm_backup.and_then(|v| {
        let keys = backup.as_ref().map(|b| b.encrypt_to.as_slice());
        vm_backup::build(v, &ctx, proxmox.clone(), keys, problems)
    });
    let luks = raw.luks.and_then(|l| luks::build(l, &ctx, problems));
    let posture = raw
        .posture
        .and_then(|mut p| PostureConfig::build(&mut p, "posture", &ctx, problems));
    let control_plane = raw
        .control_plane
        .and_then(|mut c| ControlPlaneConfig::build(&mut c, "control_plane", &ctx, problems));
    let audit = AuditConfig::build(&mut raw.audit.unwrap_or_default(), "audit", &ctx, problems)?;
    let policy = PolicyConfig::build(
        &mut raw.policy.unwrap_or_default(),
        "policy",
        &ctx,
        problems,
    )?;
    let mut destinations = destinations;
    for d in &mut destinations {
        d.min_tls = policy.min_tls_version;
    }

    let known = |n: &str| destinations.iter().any(|d| d.name == n);
    let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
    let sections = [
        ("backup", backup.as_ref().map(|b| &b.destinations)),
        ("vm_backup", vm_backup.as_ref().map(|v| &v.destinations)),
    ];
    for (section, list) in sections {
        let Some(list) = list else { continue };
        if list.is_empty() {
            problems.push(
                Problem::general(format!(
                    "[{section}] destinations is empty: a backup must go somewhere"
                ))
                .hint(format!("list one or more of: {names:?}")),
            );
        }
        for n in list {
            if !known(n) {
                problems.push(
                    Problem::general(format!(
                        "[{section}] destinations names {n:?}, which no [[destinations]] defines"
                    ))
                    .hint(format!("defined destinations: {names:?}")),
                );
            }
        }
    }
    for n in &audit.destinations {
        if !known(n) {
            problems.push(
                Problem::general(format!(
                    "[audit] destinations names {n:?}, which no [[destinations]] defines"
                ))
                .hint(format!("defined destinations: {names:?}")),
            );
        }
    }
    if let Some(d) = &restore_drill {
        if !known(&d.destination) {
            problems.push(
                Problem::general(format!(
                    "[restore_drill] destination {:?} is not defined in [[destinations]]",
                    d.destination
                ))
                .hint(format!("defined destinations: {names:?}")),
            );
        }
    }
    Some(Config {
        host_id: top.host_id,
        state_dir: top.state_dir,
        timezone: top.timezone,
        textfile_dir: metrics.textfile_dir,
        destinations,
        backup,
        restore_drill,
        snapshots,
        luks,
        posture,
        control_plane,
        audit,
        policy,

        proxmox,
        vm_backup,
        notices,
        files,
    })
}
