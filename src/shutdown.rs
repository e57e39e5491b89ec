//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
//!
//! Waiters need no broadcast of their own: when the server stops accepting,
//! it shuts the hub down, which drops every waiter's sender, and each one
//! ends on that (see [`crate::hub::Hub::shutdown`]): a stream ends, a
//! long-poll answers `PENDING`, a WebSocket closes with `1001`.

use std::future::Future;

use tokio::signal::unix::{signal as listen, SignalKind};

/// Listens for SIGINT and SIGTERM from now on (call it before announcing
/// that the server listens), and completes on the first of them.
pub(crate) fn signal() -> impl Future<Output = ()> {
    let interrupt = listen(SignalKind::interrupt());
    let terminate = listen(SignalKind::terminate());
    async move {
        let (mut interrupt, mut terminate) = match (interrupt, terminate) {
            (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("cannot listen for SIGINT and SIGTERM ({e}); stop with SIGKILL");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = interrupt.recv() => log::info!("SIGINT received"),
            _ = terminate.recv() => log::info!("SIGTERM received"),
        }
    }
}
