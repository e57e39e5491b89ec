//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
//!
//! Streams need no broadcast of their own: when the server stops accepting,
//! it shuts the hub down, which drops every waiting stream's sender, and each
//! stream ends on that (see [`crate::hub::Hub::shutdown`]).

/// Completes on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => log::info!("SIGINT received"),
        _ = terminate => log::info!("SIGTERM received"),
    }
}
