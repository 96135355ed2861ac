//! The control plane side of the agent: the durable event outbox, the mTLS
//! API server and the event pusher.

pub mod outbox;

use crate::runner::Runner;
use std::sync::Arc;

/// Start the control-plane services of the daemon (API listener, event pusher,
/// heartbeat). Returns once the listener is bound, so READY=1 follows it.
/// Without `[control_plane]` there is nothing to start.
pub async fn start(runner: Arc<Runner>) -> anyhow::Result<()> {
    if runner.config().control_plane.is_some() {
        tracing::warn!("[control_plane] is configured but the API server is not built yet; events stay in the outbox");
    }
    Ok(())
}
