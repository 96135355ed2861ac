//! The job verbs (`backup`, `restore-drill`, `snapshot`, `luks-check`, `posture`): a
//! one-shot run through the same runner as the daemon.

use super::{act_as_state_owner, load_or_report, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::jobs::{JobKind, JobParams};
use crate::runner::{JobState, Runner, SubmitError, Trigger};
use std::path::PathBuf;

/// A one-shot job: the same runner path as the daemon; prints the outcome.
pub async fn run_job(flag: Option<PathBuf>, kind: JobKind, params: JobParams, json: bool) -> u8 {
    let (path, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The actor is who ran the command, even when the run then acts as the
    // state directory's owner.
    let trigger = Trigger::Cli {
        user: crate::util::unix_user(),
    };
    if let Err(e) = act_as_state_owner(&cfg) {
        eprintln!("cloudnx-agent: {e}");
        return EXIT_FAILED;
    }
    let runner = Runner::new(path, cfg);
    let progress = std::sync::Arc::<crate::progress::Progress>::default();
    let drawing = super::progress::draw(progress.clone());
    let run = runner.run_now(kind, trigger, params, progress);
    // Ctrl-C / SIGTERM cancel the job cleanly, as in the daemon.
    let token = runner.shutdown_token();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
        token.cancel();
    });
    let result = run.await;
    drawing.finish().await;
    match result {
        Err(e @ SubmitError::NotConfigured(_)) => {
            eprintln!("cloudnx-agent: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("cloudnx-agent: {kind}: {e}");
            EXIT_FAILED
        }
        Ok(rec) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&rec).unwrap_or_default());
            } else if let Some(s) = &rec.summary {
                println!(
                    "{kind} {}: {s}",
                    if rec.state == JobState::Succeeded {
                        "succeeded"
                    } else {
                        "failed"
                    }
                );
            }
            match rec.state {
                JobState::Succeeded => EXIT_OK,
                _ => {
                    if !json {
                        eprintln!(
                            "cloudnx-agent: {kind} failed: {}",
                            rec.error.as_deref().unwrap_or("unknown cause")
                        );
                    }
                    EXIT_FAILED
                }
            }
        }
    }
}
