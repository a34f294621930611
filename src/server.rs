//! Starts a whole splicer: the app's parts ([`crate::app`]), the admin API served over them
//! ([`crate::admin`]), then the listeners. The one place that knows both, so the admin API
//! depends on the app and never the other way round.

use crate::admin;
use crate::app::{AppError, Bound, Lifecycle, Running, Starting};
use crate::config::Config;

/// Starts pools, serves the admin API, runs the start-up health round, then opens the listeners.
pub async fn start(config: Config, bound: Bound) -> Result<Running, AppError> {
    start_with(config, bound, Lifecycle::default()).await
}

/// [`start`] with what the process brings: once the listeners accept, it reports ready to the
/// process it replaces (an upgrade) and to the service manager, and keeps the watchdog fed.
pub async fn start_with(
    config: Config,
    bound: Bound,
    lifecycle: Lifecycle,
) -> Result<Running, AppError> {
    let mut starting = Starting::begin(config, bound, lifecycle).await?;
    // The admin API answers through the start-up round: `/ready` is 503 until listeners open.
    starting.serve_admin(|socket, state| {
        admin::serve(socket.listener, state, socket.stop_accepting, socket.stop)
    });
    starting.finish().await
}
