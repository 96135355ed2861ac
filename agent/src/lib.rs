//! cloudnx-agent: the host agent that makes a cloud provider's promises true on
//! each host — PostgreSQL backups, restore drills, Proxmox snapshots, LUKS
//! checks — with metrics, an audit log and events for every run.
//!
//! Data flows one way: trigger (schedule, CLI, API) → [`runner`] → [`jobs`]
//! duty → outcome → sinks ([`metrics`], [`audit`], [`outbox`]).
//! See ARCHITECTURE.md for the map.
#![deny(missing_docs)]

/// Pages to Alertmanager (v2 API).
pub mod alert;
/// Hash-chained audit log, checkpoints, verification.
pub mod audit;
/// What each CLI verb does (exit codes 0/1/2).
pub mod cli;
/// Typed, validated configuration (file:line:col errors).
pub mod config;
/// Control-plane side: mTLS API, event outbox and pusher, TLS reload, `ctl`.
pub mod control;
/// The legal hold: while set, retention deletes nothing.
pub mod hold;
/// Streaming OpenPGP encryption of backups (the `cloudnx-crypto` crate).
pub use cloudnx_crypto as crypto;
/// Daemon lifecycle: sd_notify, signals, scheduler, reload.
pub mod daemon;
/// File-system safety: private dirs, exclusive no-follow creation, atomic replace, locks.
pub mod fsx;
/// The four duties.
pub mod jobs;
/// tracing setup (journald or terminal).
pub mod logging;
/// Metrics state and the textfile exposition.
pub mod metrics;
/// The durable event outbox for the control plane.
pub mod outbox;
/// PostgreSQL helpers shared by backup and drill.
pub mod pg;
/// Phase and byte counts of a running job.
pub mod progress;
/// Typed Proxmox VE API client (token auth, verified TLS, UPIDs, tasks).
pub mod pve;
/// The one job runner.
pub mod runner;
/// Cron schedules in a time zone.
pub mod schedule;
/// Backup destinations: the Destination trait, filesystem and S3.
pub mod store;
/// The TLS floor of every outbound HTTPS client (`[policy] min_tls_version`).
pub mod tls_floor;
/// Small shared helpers.
pub mod util;
/// Weekly maintenance windows in a time zone.
pub mod window;
