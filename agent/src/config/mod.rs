//! Configuration: parsed once into typed, validated structs.
//!
//! Each file (`agent.toml`, then `agent.d/*.toml` in name order) is parsed on
//! its own into a *raw fragment* with `deny_unknown_fields` and spanned values,
//! so every type error, unknown key and bad value is reported with its file,
//! line and column. Fragments then merge (later wins, key by key; named array
//! entries such as `[[destinations]]` merge by `name`), and the merged result is
//! built into [`Config`]. Nothing downstream re-validates. Loading never has
//! side effects: startup, `check-config`, SIGHUP and the API reload all call
//! [`load`], and only swap in the result when it is `Ok`.

mod audit;
mod backup;
mod common;
mod control_plane;
mod destinations;
mod drill;
mod luks;
mod problem;
mod snapshots;

pub use audit::AuditConfig;
pub use backup::BackupConfig;
pub use control_plane::ControlPlaneConfig;
pub use destinations::{Destination, DestinationKind, S3Destination};
pub use drill::DrillConfig;
pub use luks::{LuksConfig, LuksPolicy, LuksVolume};
pub use problem::{Problem, Problems, Source};
pub use snapshots::SnapshotConfig;

use common::{check_abs, merge_fields, or, Opt};
use problem::Check;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/cloudnx-agent/agent.toml";
/// Environment variable naming the configuration file.
pub const ENV_VAR: &str = "CLOUDNX_AGENT_CONFIG";

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
    /// `[control_plane]`; None = no API, events stay in the outbox.
    pub control_plane: Option<ControlPlaneConfig>,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// The files this was loaded from, in merge order.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// A destination by name.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host_id: Opt<String>,
    state_dir: Opt<PathBuf>,
    timezone: Opt<String>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    destinations: Vec<destinations::RawDestination>,
    backup: Option<backup::RawBackup>,
    restore_drill: Option<drill::RawDrill>,
    snapshots: Option<snapshots::RawSnapshots>,
    luks: Option<luks::RawLuks>,
    control_plane: Option<control_plane::RawControlPlane>,
    audit: Option<audit::RawAudit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile_dir: Opt<PathBuf>,
}

/// Merge `Option<Section>` fragments: a later section merges over an earlier one.
macro_rules! merge_sections {
    ($into:expr, $from:expr; $($f:ident),*) => {
        $( match (&mut $into.$f, $from.$f) {
            (Some(a), Some(b)) => a.merge(b),
            (a @ None, b) => *a = b,
            (_, None) => {}
        } )*
    };
}

impl RawConfig {
    fn check(&self, c: &mut Check) {
        check_abs(c, "state_dir", &self.state_dir);
        if let Some(tz) = &self.timezone {
            if tz.get_ref().parse::<chrono_tz::Tz>().is_err() {
                c.err(tz.span(), format!("unknown time zone {:?}", tz.get_ref()), "use an IANA zone name such as \"Asia/Kolkata\", \"Europe/Helsinki\" or \"UTC\"");
            }
        }
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
        if let Some(m) = &self.metrics {
            check_abs(c, "textfile_dir", &m.textfile_dir);
        }
        self.destinations.iter().for_each(|d| d.check(c));
        self.backup.iter().for_each(|s| s.check(c));
        self.restore_drill.iter().for_each(|s| s.check(c));
        self.snapshots.iter().for_each(|s| s.check(c));
        self.luks.iter().for_each(|s| s.check(c));
        self.control_plane.iter().for_each(|s| s.check(c));
        self.audit.iter().for_each(|s| s.check(c));
    }

    fn merge(&mut self, o: RawConfig) {
        merge_fields!(self, o; host_id, state_dir, timezone);
        if let Some(m) = o.metrics {
            self.metrics = Some(m);
        }
        for d in o.destinations {
            match d
                .name()
                .and_then(|n| self.destinations.iter().position(|x| x.name() == Some(n)))
            {
                Some(i) => self.destinations[i].merge(d),
                None => self.destinations.push(d),
            }
        }
        merge_sections!(self, o; backup, restore_drill, snapshots, luks, control_plane, audit);
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
    let mut problems = Vec::new();
    let files = files(path).map_err(|p| Problems(vec![p]))?;
    let mut merged = RawConfig::default();
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                let hint = if f == path {
                    format!("pass --config PATH or set {ENV_VAR}")
                } else {
                    "fix or remove the drop-in".into()
                };
                problems.push(
                    Problem::in_file(f, format!("cannot read configuration: {e}")).hint(hint),
                );
                continue;
            }
        };
        let src = Source {
            path: f.clone(),
            text,
        };
        match toml::from_str::<RawConfig>(&src.text) {
            Ok(raw) => {
                raw.check(&mut Check {
                    src: &src,
                    problems: &mut problems,
                    other_files,
                });
                merged.merge(raw);
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                problems.push(Problem::at(&src, span, e.message().trim().to_owned()).hint("see /usr/share/doc/cloudnx-agent/agent.toml for every key, its type and its default"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let cfg = build(merged, files, &mut problems);
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

fn build(raw: RawConfig, files: Vec<PathBuf>, problems: &mut Vec<Problem>) -> Option<Config> {
    let host = host_name();
    let host_id = or(raw.host_id, host.clone());
    let state_dir = or(raw.state_dir, "/var/lib/cloudnx-agent".into());
    let timezone = or(raw.timezone, "Asia/Kolkata".into()).parse().ok()?;
    let textfile_dir = raw.metrics.and_then(|m| m.textfile_dir).map_or_else(
        || "/var/lib/prometheus/node-exporter".into(),
        toml::Spanned::into_inner,
    );

    let mut destinations: Vec<Destination> = Vec::new();
    for d in raw.destinations {
        if let Some(d) = d.build(&host_id, problems) {
            destinations.push(d);
        }
    }
    let backup = raw.backup.and_then(|b| b.build(problems));
    let restore_drill = raw.restore_drill.and_then(|d| d.build(problems));
    let snapshots = raw.snapshots.and_then(|s| s.build(&host, problems));
    let luks = raw.luks.and_then(|l| l.build(&state_dir, problems));
    let control_plane = raw.control_plane.and_then(|c| c.build(problems));
    let audit = raw.audit.unwrap_or_default().build(&state_dir);

    let known = |n: &str| destinations.iter().any(|d| d.name == n);
    let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
    if let Some(b) = &backup {
        if b.destinations.is_empty() {
            problems.push(
                Problem::general("[backup] destinations is empty: a backup must go somewhere")
                    .hint(format!("list one or more of: {names:?}")),
            );
        }
        for n in &b.destinations {
            if !known(n) {
                problems.push(
                    Problem::general(format!(
                        "[backup] destinations names {n:?}, which no [[destinations]] defines"
                    ))
                    .hint(format!("defined destinations: {names:?}")),
                );
            }
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
        host_id,
        state_dir,
        timezone,
        textfile_dir,
        destinations,
        backup,
        restore_drill,
        snapshots,
        luks,
        control_plane,
        audit,
        files,
    })
}
