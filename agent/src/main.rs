//! `cloudnx-agent`: parse arguments, call the library, map the result to an exit code.

use clap::{Parser, Subcommand};
use cloudnx_agent::cli;
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
    /// Snapshot the selected Proxmox VE guests now and prune old snapshots.
    Snapshot,
    /// Check every LUKS volume against the policy now.
    LuksCheck,
    /// Talk to an agent's control-plane API with a client certificate.
    Ctl(cli::ctl::CtlArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        verb: AuditVerb,
    },
}

#[derive(Subcommand)]
enum AuditVerb {
    /// Verify the hash chain and the signed checkpoints (exit 1 naming the first bad seq).
    Verify,
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
            Verb::Snapshot => {
                cli::job::run_job(config, JobKind::Snapshot, JobParams::default(), json).await
            }
            Verb::LuksCheck => {
                cli::job::run_job(config, JobKind::LuksCheck, JobParams::default(), json).await
            }
            Verb::Ctl(args) => cli::ctl::run(config, args).await,
            Verb::Audit {
                verb: AuditVerb::Verify,
            } => cli::audit::verify(config),
            Verb::Audit {
                verb: AuditVerb::PublicKey,
            } => cli::audit::public_key(config),
        }
    });
    ExitCode::from(code)
}
