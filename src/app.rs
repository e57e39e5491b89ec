//! The app: the state every handler shares (the backplane, metrics,
//! configuration), built once at start-up. It is where the layers are put
//! together: the store opened and read back, the hub over it, the backplane
//! over the hub. Nothing above it sees the hub or the store.

use std::sync::Arc;

use crate::backplane::{Backplane, PubSubMetrics};
use crate::config::Config;
use crate::hub::{Hub, Limits};
use crate::metrics::Metrics;
use crate::signature::NONCE_MEMORY;
use crate::store::{OpenError, Stopped, Store, StoreConfig};

/// Why the app could not be built.
#[derive(Debug)]
pub struct StartError {
    /// One line saying what is wrong.
    pub message: String,
    /// True when the configuration (not the machine) is at fault: exit 2.
    pub usage: bool,
}

impl StartError {
    fn failure(message: String) -> StartError {
        StartError {
            message,
            usage: false,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

/// What every handler shares; cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    /// The one door for payments: in memory or over Redis.
    pub(crate) backplane: Backplane,
    /// The process's metrics.
    /// Behind an `Arc`: every route's filter, every connection's service and
    /// every stream holds a clone, and `Metrics` itself is a dozen `Arc`s.
    pub metrics: Arc<Metrics>,
    /// The settings it runs with.
    pub config: Arc<Config>,
    /// Tells when the store's writer has stopped (the durable default).
    pub(crate) store_stopped: Option<Stopped>,
}

impl App {
    /// Builds the app; `open_file_limit` sizes the default stream limit.
    /// Without Redis and `--in-memory`, opens the store and reads it back
    /// first, so the app serves what earlier runs answered.
    pub fn new(config: Config, open_file_limit: u64) -> Result<App, StartError> {
        let limits = Limits {
            max_streams: config.stream_limit(open_file_limit),
            max_streams_per_payment: usize::try_from(config.max_streams_per_payment)
                .unwrap_or(usize::MAX),
            outcome_ttl: config.outcome_ttl,
            nonce_memory: NONCE_MEMORY,
            max_outcomes: usize::try_from(config.max_outcomes).unwrap_or(usize::MAX),
            push_timeout: config.push_timeout,
        };
        let metrics = Metrics::new()
            .map_err(|e| StartError::failure(format!("cannot set up metrics: {e}")))?;
        let mut store_stopped = None;
        let hub =
            if config.redis_url.is_some() || config.redis_cluster.is_some() || config.in_memory {
                Hub::new(limits)
            } else {
                let store_config = StoreConfig {
                    dir: config.data_dir.clone(),
                    durability: config.durability.into(),
                    outcome_ttl: config.outcome_ttl,
                    nonce_memory: NONCE_MEMORY,
                };
                let (store, replay) = Store::open(store_config, metrics.store_sync_seconds())
                    .map_err(|e| StartError {
                        usage: matches!(e, OpenError::Locked(_) | OpenError::NotPrivate { .. }),
                        message: e.to_string(),
                    })?;
                store_stopped = Some(store.stopped());
                Hub::with_store(limits, store, replay.records)
            };
        let pubsub = PubSubMetrics {
            channels: metrics.channels_subscribed(),
            messages: metrics.pubsub_messages(),
        };
        let backplane = Backplane::new(
            hub,
            config.redis_url.as_ref(),
            config.redis_cluster.as_ref(),
            config.outcome_ttl,
            pubsub,
        )
        .map_err(|e| StartError::failure(format!("cannot use Redis: {e}")))?;
        Ok(App {
            backplane,
            metrics: Arc::new(metrics),
            config: Arc::new(config),
            store_stopped,
        })
    }

    /// Says how outcomes are kept, without credentials, for the start-up line.
    pub fn describe(&self) -> String {
        self.backplane.describe()
    }

    /// The waiter limits in force: the whole process's, and one payment's.
    pub fn stream_limits(&self) -> (usize, usize) {
        let limits = self.backplane.limits();
        (limits.max_streams, limits.max_streams_per_payment)
    }
}
