//! The app: the state every handler shares (hub, backplane, metrics,
//! configuration), built once at start-up.

use std::sync::Arc;

use crate::backplane::Backplane;
use crate::config::Config;
use crate::hub::{Hub, Limits};
use crate::metrics::Metrics;
use crate::signature::NONCE_MEMORY;

/// Why the app could not be built.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every handler shares; cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    /// The registry of streams and outcomes.
    pub hub: Hub,
    /// In memory or over Redis: where outcomes are decided.
    pub backplane: Backplane,
    /// The process's metrics.
    /// Behind an `Arc`: every route's filter, every connection's service and
    /// every stream holds a clone, and `Metrics` itself is a dozen `Arc`s.
    pub metrics: Arc<Metrics>,
    /// The settings it runs with.
    pub config: Arc<Config>,
}

impl App {
    /// Builds the app; `open_file_limit` sizes the default stream limit.
    pub fn new(config: Config, open_file_limit: u64) -> Result<App, StartError> {
        let limits = Limits {
            max_streams: config.stream_limit(open_file_limit),
            max_streams_per_payment: usize::try_from(config.max_streams_per_payment)
                .unwrap_or(usize::MAX),
            outcome_ttl: config.outcome_ttl,
            nonce_memory: NONCE_MEMORY,
        };
        let hub = Hub::new(limits);
        let backplane = Backplane::new(config.redis_url.as_ref(), config.outcome_ttl)
            .map_err(|e| StartError(format!("cannot use Redis: {}", e.0)))?;
        backplane.start(&hub);
        let metrics =
            Metrics::new().map_err(|e| StartError(format!("cannot set up metrics: {e}")))?;
        Ok(App {
            hub,
            backplane,
            metrics: Arc::new(metrics),
            config: Arc::new(config),
        })
    }
}
