//! `cloudnx-agent`: parse arguments, call the library, map the result to an exit code.

use clap::{Parser, Subcommand};
use cloudnx_agent::cli;
use cloudnx_agent::jobs::kind::{RestoreParams, VmRestoreParams};
use cloudnx_agent::jobs::{JobKind, JobParams};
use std::path::PathBuf;
use std::process::ExitCode;

/// Host agent: PostgreSQL backups, restore drills, Proxmox snapshots, LUKS checks,
/// with metrics, a tamper-evident audit log and control-plane events.
#[derive(Parser)]
#[command(name = "cloudnx-agent", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Configuration file (default: $CLOUDNX_AGENT_CONFIG, else /etc/cloudnx-agent/agent.toml).
    /// `*.toml` files in the sibling agent.d/ are merged over it in name order.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the job record as JSON (job verbs).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the daemon in the foreground (systemd Type=notify).
    Run,
    /// Validate the configuration; print every problem (exit 2) or what is enabled (exit 0).
    CheckConfig,
    /// Dump, encrypt and upload PostgreSQL databases now.
    Backup {
        /// Only this database (repeatable).
        #[arg(long = "database", value_name = "NAME")]
        databases: Vec<String>,
    },
    /// Restore the newest backup into a throwaway cluster and check it now.
    RestoreDrill {
        /// Fetch from this destination instead of the configured one.
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
    },
    /// Get one backup back — into a live server or a file — verified against
    /// its manifest before a byte is written.
    Restore(RestoreArgs),
    /// The complete backups the destinations hold.
    Backups {
        #[command(subcommand)]
        verb: BackupsVerb,
    },
    /// What this host's duties last did, and whether anything needs attention
    /// (exit 1 when something is failing or past its alert threshold).
    Status,
    /// Snapshot the selected Proxmox VE guests now and prune old snapshots.
    Snapshot,
    /// Check every LUKS volume against the policy now.
    LuksCheck,
    /// Read this host's patch and reboot state now (read-only).
    Posture,
    /// Back up Proxmox VE guests (vzdump) to every destination now.
    VmBackup {
        /// Only this guest (repeatable; default: as configured).
        #[arg(long = "vmid", value_name = "N")]
        vmids: Vec<u32>,
    },
    /// Restore a VM backup into Proxmox VE as a new guest.
    VmRestore(VmRestoreArgs),
    /// Talk to an agent's control-plane API with a client certificate.
    Ctl(cli::ctl::CtlArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        verb: AuditVerb,
    },
    /// The legal hold: while set, retention deletes nothing (SPEC §10).
    Hold {
        #[command(subcommand)]
        verb: HoldVerb,
    },
}

#[derive(Subcommand)]
enum HoldVerb {
    /// Set the legal hold (audited with the reason).
    Set {
        /// Why: a case or ticket reference.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Release it and turn OFF the Object Lock legal holds the agent set.
    Release {
        /// Why it is released (recorded in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Whether a hold is set.
    Status,
}

#[derive(clap::Args)]
struct VmRestoreArgs {
    /// The guest whose backup to restore.
    #[arg(long, value_name = "N")]
    vmid: u32,
    /// A stamp (YYYYMMDDTHHMMSSZ) or `latest`.
    #[arg(long, value_name = "STAMP", default_value = "latest")]
    backup: String,
    /// Fetch from this destination (default: the first of [vm_backup] destinations).
    #[arg(long, value_name = "NAME")]
    destination: Option<String>,
    /// The new guest's VMID (default: --vmid); refused when it exists.
    #[arg(long, value_name = "M")]
    target_vmid: Option<u32>,
    /// The Proxmox storage for the new guest's disks.
    #[arg(long, value_name = "S")]
    storage: String,
    /// Armored OpenPGP secret key (default: [restore_drill] decryption_key).
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["target", "output"])))]
struct RestoreArgs {
    /// The database (with --output, `_globals` means --globals).
    #[arg(long, value_name = "NAME", required_unless_present = "globals")]
    database: Option<String>,
    /// The cluster's roles and tablespaces (SQL, with --output) instead of a database.
    #[arg(long, conflicts_with_all = ["database", "target"])]
    globals: bool,
    /// Which backup: a stamp (YYYYMMDDTHHMMSSZ, see `backups list`) or `latest`.
    #[arg(long, value_name = "STAMP|latest", default_value = "latest")]
    backup: String,
    /// Fetch from this destination (default: the first of [backup] destinations).
    #[arg(long, value_name = "NAME")]
    destination: Option<String>,
    /// Another host's backups on that destination (its host_id).
    #[arg(long, value_name = "HOST_ID")]
    host: Option<String>,
    /// Armored OpenPGP secret key (default: [restore_drill] decryption_key).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Restore into this server (libpq conninfo; passwords belong in ~/.pgpass).
    #[arg(long, value_name = "CONNINFO")]
    target: Option<String>,
    /// The database to restore into (default: the original name); created when absent.
    #[arg(long, value_name = "NAME", requires = "target")]
    target_database: Option<String>,
    /// Drop and re-create the backup's objects in a non-empty target database.
    #[arg(long, requires = "target")]
    clean: bool,
    /// Parallel pg_restore jobs (default: [restore_drill] jobs, else the cores).
    #[arg(long, value_name = "N", requires = "target", value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: Option<u32>,
    /// Write the decrypted dump (custom format; SQL for _globals) to this new file, mode 0600.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BackupsVerb {
    /// List complete backups, newest first.
    List {
        /// Only this database (repeatable).
        #[arg(long = "database", value_name = "NAME")]
        databases: Vec<String>,
        /// Only this destination (default: every [[destinations]]).
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Another host's backups (its host_id).
        #[arg(long, value_name = "HOST_ID")]
        host: Option<String>,
        /// VM backups (vzdump archives) instead of database backups.
        #[arg(long, conflicts_with = "databases")]
        vm: bool,
    },
}

#[derive(Subcommand)]
enum AuditVerb {
    /// Verify the hash chain and the signed checkpoints (exit 1 naming the first bad seq);
    /// with --destination, the off-host copy and the local log against it.
    Verify {
        /// Verify the copy on this `[[destinations]]` entry (SPEC §11).
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Another host's copy on that destination (its host_id).
        #[arg(long, value_name = "HOST_ID", requires = "destination")]
        host: Option<String>,
    },
    /// Seal the head and ship the log to every `[audit] destinations` entry now.
    Ship,
    /// Seal the head with the current key, record and seal `audit.key_rotated`, sign on with a new key.
    RotateKey,
    /// Print the checkpoint-signing Ed25519 public key (PEM, SPKI).
    PublicKey,
}

fn main() -> ExitCode {
    cloudnx_agent::util::tune_allocator();
    let cli = Cli::parse();
    cloudnx_agent::logging::init();
    // Fault-injection builds only: fail points named in $FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloudnx-agent: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILED);
        }
    };
    let (config, json) = (cli.config, cli.json);
    let code = rt.block_on(async move {
        match cli.verb {
            Verb::Run => cli::daemon(config).await,
            Verb::CheckConfig => cli::check::check_config(config),
            Verb::Backup { databases } => {
                cli::job::run_job(
                    config,
                    JobKind::Backup,
                    JobParams {
                        databases,
                        ..Default::default()
                    },
                    json,
                )
                .await
            }
            Verb::RestoreDrill { destination } => {
                cli::job::run_job(
                    config,
                    JobKind::RestoreDrill,
                    JobParams {
                        destination,
                        ..Default::default()
                    },
                    json,
                )
                .await
            }
            Verb::Restore(a) => {
                let backup = (a.backup != "latest").then_some(a.backup);
                cli::job::run_job(
                    config,
                    JobKind::Restore,
                    JobParams {
                        destination: a.destination,
                        restore: Some(RestoreParams {
                            database: a.database.unwrap_or_else(|| "_globals".into()),
                            globals: a.globals,
                            backup,
                            host: a.host,
                            key: a.key,
                            target: a.target,
                            target_database: a.target_database,
                            clean: a.clean,
                            jobs: a.jobs,
                            output: a.output,
                        }),
                        ..Default::default()
                    },
                    json,
                )
                .await
            }
            Verb::Backups {
                verb:
                    BackupsVerb::List {
                        databases,
                        destination,
                        host,
                        vm,
                    },
            } => {
                if vm {
                    return cli::vm_backups::list(
                        config,
                        destination.as_deref(),
                        host.as_deref(),
                        json,
                    )
                    .await;
                }
                cli::backups::list(
                    config,
                    &databases,
                    destination.as_deref(),
                    host.as_deref(),
                    json,
                )
                .await
            }
            Verb::Status => cli::status::run(config, json).await,
            Verb::Snapshot => {
                cli::job::run_job(config, JobKind::Snapshot, JobParams::default(), json).await
            }
            Verb::LuksCheck => {
                cli::job::run_job(config, JobKind::LuksCheck, JobParams::default(), json).await
            }
            Verb::Posture => {
                cli::job::run_job(config, JobKind::Posture, JobParams::default(), json).await
            }
            Verb::VmBackup { vmids } => {
                let params = JobParams {
                    vmids,
                    ..Default::default()
                };
                cli::job::run_job(config, JobKind::VmBackup, params, json).await
            }
            Verb::VmRestore(a) => {
                let params = JobParams {
                    destination: a.destination,
                    vm_restore: Some(VmRestoreParams {
                        vmid: a.vmid,
                        backup: (a.backup != "latest").then_some(a.backup),
                        target_vmid: a.target_vmid,
                        storage: a.storage,
                        key: a.key,
                    }),
                    ..Default::default()
                };
                cli::job::run_job(config, JobKind::VmRestore, params, json).await
            }
            Verb::Ctl(args) => cli::ctl::run(config, args).await,
            Verb::Audit {
                verb:
                    AuditVerb::Verify {
                        destination: None, ..
                    },
            } => cli::audit::verify(config),
            Verb::Audit {
                verb:
                    AuditVerb::Verify {
                        destination: Some(d),
                        host,
                    },
            } => cli::audit::verify_destination(config, &d, host).await,
            Verb::Audit {
                verb: AuditVerb::Ship,
            } => cli::audit::ship(config).await,
            Verb::Audit {
                verb: AuditVerb::RotateKey,
            } => cli::audit::rotate_key(config).await,
            Verb::Audit {
                verb: AuditVerb::PublicKey,
            } => cli::audit::public_key(config),
            Verb::Hold { verb } => match verb {
                HoldVerb::Set { reason } => cli::hold::set(config, &reason).await,
                HoldVerb::Release { reason } => cli::hold::release(config, reason.as_deref()).await,
                HoldVerb::Status => cli::hold::status(config, json),
            },
        }
    });
    ExitCode::from(code)
}
