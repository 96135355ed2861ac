//! The duties. Each is `async fn run(&JobContext) -> anyhow::Result<Outcome>`;
//! none writes metrics, audit records, events, pages or locks itself — the
//! runner does that with what the duty returns (and with [`JobContext::audit`] /
//! [`JobContext::event`] for things that must be recorded the moment they happen).
//! Duties depend on this context, the configuration and the leaves (`store`,
//! `pg`, `pve`, `crypto`, `fsx`, …), never on the runner, the daemon, the
//! control plane or the CLI.

pub mod backup;
pub mod catalog;
pub mod context;
pub mod drill;
pub mod kind;
pub mod luks;
pub mod object_holds;
pub mod posture;
pub mod restore;
pub mod retrieve;
pub mod snapshot;
pub mod vm_backup;
pub mod vm_restore;
pub mod workdir;

pub use context::{JobContext, Outcome};
pub use kind::{JobKind, JobParams};

/// Run a duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    match ctx.kind {
        JobKind::Backup => backup::run(ctx).await,
        JobKind::RestoreDrill => drill::run(ctx).await,
        JobKind::Snapshot => snapshot::run(ctx).await,
        JobKind::LuksCheck => luks::run(ctx).await,
        JobKind::Posture => posture::run(ctx).await,
        JobKind::Restore => restore::run(ctx).await,
        JobKind::VmBackup => vm_backup::run(ctx).await,
        JobKind::VmRestore => vm_restore::run(ctx).await,
    }
}
