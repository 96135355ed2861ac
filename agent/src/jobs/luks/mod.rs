//! The `luks` duty (not built yet: the runner refuses it with exit 2 before calling `run`).

use super::{JobContext, Outcome};

/// Whether this duty is implemented in this build.
pub const BUILT: bool = false;

/// Run the duty.
pub async fn run(_ctx: &JobContext) -> anyhow::Result<Outcome> {
    anyhow::bail!("the luks duty is not built yet")
}
