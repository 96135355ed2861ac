//! Progress of a long verb on a terminal: phase, bytes and rate on stderr,
//! redrawn ten times a second. Off a terminal (systemd, a pipe, cron) nothing
//! is drawn, so the journal and scripts see only the job's own output.

use crate::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

/// A drawing in progress; [`Drawing::finish`] clears it.
pub struct Drawing {
    task: Option<(
        tokio::task::JoinHandle<()>,
        tokio_util::sync::CancellationToken,
    )>,
}

/// Start drawing `progress` on stderr when stderr is a terminal.
pub fn draw(progress: Arc<Progress>) -> Drawing {
    if !std::io::stderr().is_terminal() {
        return Drawing { task: None };
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        let spinner =
            ProgressStyle::with_template("{spinner} {msg}  {bytes} ({bytes_per_sec}, {elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let sized = ProgressStyle::with_template(
            "{msg}  [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let mut phase = String::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = token.cancelled() => break,
            }
            let seen = progress.seen();
            if seen.phase.is_empty() {
                continue;
            }
            if seen.phase != phase {
                phase.clone_from(&seen.phase);
                bar.reset();
                bar.set_message(phase.clone());
                match seen.total {
                    Some(t) => {
                        bar.set_style(sized.clone());
                        bar.set_length(t);
                    }
                    None => {
                        bar.set_style(spinner.clone());
                        bar.unset_length();
                    }
                }
            }
            bar.set_position(seen.done);
            bar.tick();
        }
        bar.finish_and_clear();
    });
    Drawing {
        task: Some((task, stop)),
    }
}

impl Drawing {
    /// Stop drawing and clear the line.
    pub async fn finish(self) {
        if let Some((task, stop)) = self.task {
            stop.cancel();
            let _ = task.await;
        }
    }
}
