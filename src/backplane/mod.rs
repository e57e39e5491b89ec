//! The one door for payments. The HTTP side (handlers and transports) asks
//! the backplane, and nothing else, to subscribe a waiter (with its
//! catch-up), record an outcome, remember or forget a signed callback's
//! nonce, look an outcome up, and say whether paypush is ready; each mode
//! answers all of them:
//!
//! - **in memory** (one process, the default): the [`Hub`] decides, with
//!   its store below it;
//! - **Redis** ([`redis`]): Redis decides and fans out on one channel;
//! - **Redis Cluster** ([`cluster`]): a Redis Cluster decides, and each
//!   payment has its own sharded channel, subscribed only while it has a
//!   local waiter.
//!
//! The backplane owns the hub: in every mode the hub stays each instance's
//! registry of waiters. A waiter registers there first, then (Redis modes)
//! the recorded outcome is read, so a callback cannot slip between the two.

mod cluster;
mod common;
mod errors;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::hub::{Hub, Limits, NonceCheck, Refusal};
use crate::model::{Outcome, PayRecordId};

use cluster::Cluster;
pub(crate) use cluster::{PubSubMetrics, RedisNodes};
pub(crate) use errors::{RecordError, Unavailable};
use redis::Redis;
pub(crate) use redis::RedisUrl;

pub(crate) use crate::hub::{
    Completion, Durable, Stats, SubscribeError, Subscription, Transport, Waiting, Wake,
};

/// Where outcomes are decided: one process, Redis, or a Redis Cluster.
#[derive(Clone, Debug)]
enum Mode {
    Memory,
    Redis(Arc<Redis>),
    Cluster(Arc<Cluster>),
}

/// The one door for payments; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Backplane {
    /// This instance's waiters (and, in memory mode, its outcomes).
    hub: Hub,
    mode: Mode,
}

/// A signed callback's nonce as the backplane found it.
#[derive(Debug)]
pub(crate) enum Nonce {
    /// New: remembered now; [`Durable::wait`] for it before answering.
    Fresh(Durable),
    /// Seen in the memory window: a replay.
    Replayed,
}

impl Backplane {
    /// The backplane over `hub`: in memory, or the Redis one for `url`, or
    /// the Redis Cluster one for `nodes`; its tasks run until
    /// [`Backplane::shutdown`].
    pub(crate) fn new(
        hub: Hub,
        url: Option<&RedisUrl>,
        nodes: Option<&RedisNodes>,
        outcome_ttl: Duration,
        metrics: PubSubMetrics,
    ) -> Result<Backplane, Unavailable> {
        let mode = if let Some(nodes) = nodes {
            let cluster = Arc::new(Cluster::new(nodes, outcome_ttl, metrics)?);
            cluster.start(&hub);
            Mode::Cluster(cluster)
        } else if let Some(url) = url {
            let redis = Arc::new(Redis::new(url, outcome_ttl, metrics.messages)?);
            redis.start(&hub);
            Mode::Redis(redis)
        } else {
            Mode::Memory
        };
        Ok(Backplane { hub, mode })
    }

    /// Describes how outcomes are kept, without credentials.
    pub(crate) fn describe(&self) -> String {
        match &self.mode {
            Mode::Memory => match self.hub.store() {
                Some(store) => store.describe(),
                None => "in-memory mode".into(),
            },
            Mode::Redis(redis) => redis.describe(),
            Mode::Cluster(cluster) => cluster.describe(),
        }
    }

    /// Registers a waiter of `transport` for `id` that waits at most
    /// `wait`, or returns the outcome already recorded, here or (Redis
    /// modes) anywhere. The waiter registers here first, then the recorded
    /// outcome is read (on a Redis Cluster, once the payment's channel is
    /// subscribed), so no callback slips between the two. If Redis cannot
    /// be read, the waiter waits: the subscriber catches up when it is back.
    pub(crate) async fn subscribe(
        &self,
        id: PayRecordId,
        transport: Transport,
        wait: Duration,
    ) -> Result<Subscription, SubscribeError> {
        let subscription = self.hub.subscribe_via(id, transport, wait)?;
        let Subscription::Waiting(waiting) = subscription else {
            return Ok(subscription);
        };
        let recorded = match &self.mode {
            Mode::Memory => return Ok(Subscription::Waiting(waiting)),
            Mode::Redis(redis) => redis.recorded(id).await,
            Mode::Cluster(cluster) => cluster.recorded(id).await,
        };
        match recorded {
            Ok(Some(outcome)) => {
                // Delivered while this waiter still waits, so the hub keeps
                // it (it keeps outcomes of other instances only where a
                // waiter waits); the next registration finds it recorded.
                self.hub.deliver(outcome);
                drop(waiting);
                self.hub.subscribe_via(id, transport, wait)
            }
            Ok(None) => Ok(Subscription::Waiting(waiting)),
            Err(e) => {
                log::debug!(
                    "{} {id}: cannot read Redis ({e}); waiting",
                    transport.label()
                );
                Ok(Subscription::Waiting(waiting))
            }
        }
    }

    /// Records `outcome` unless the payment has one (first wins) and delivers
    /// it to this instance's waiters; in Redis modes, to every instance's.
    pub(crate) async fn record(&self, outcome: Outcome) -> Result<Completion, RecordError> {
        let (recorded, notified) = match &self.mode {
            Mode::Memory => return self.hub.complete(outcome).await.map_err(refused),
            Mode::Redis(redis) => {
                let recorded = redis.record(&outcome).await?;
                // Redis keeps it; this hub only hands it to its own waiters
                // (a duplicate's too, in case they missed it).
                let here = recorded.clone().unwrap_or_else(|| outcome.clone());
                (recorded, self.hub.deliver(here))
            }
            // It has handed it to this hub already, before waiting for a replica.
            Mode::Cluster(cluster) => cluster.record(&self.hub, &outcome).await?,
        };
        Ok(match recorded {
            None => Completion::Recorded {
                notified,
                outcome: Arc::new(outcome),
            },
            Some(recorded) => {
                let recorded = Arc::new(recorded);
                if recorded.status == outcome.status {
                    Completion::Duplicate(recorded)
                } else {
                    Completion::Conflict(recorded)
                }
            }
        })
    }

    /// The outcome recorded for `id`, here or (Redis modes) anywhere,
    /// without registering a waiter: for answers given at once.
    pub(crate) async fn lookup(
        &self,
        id: PayRecordId,
    ) -> Result<Option<Arc<Outcome>>, Unavailable> {
        if let Some(outcome) = self.hub.recorded(id) {
            return Ok(Some(outcome));
        }
        let recorded = match &self.mode {
            Mode::Memory => return Ok(None),
            Mode::Redis(redis) => redis.recorded(id).await?,
            // A read without subscribing: nothing waits for what comes next.
            Mode::Cluster(cluster) => cluster.lookup(id).await?,
        };
        Ok(recorded.map(Arc::new))
    }

    /// The outcome this instance holds for `id`, without asking Redis (on
    /// shutdown, when nothing waits any more).
    pub(crate) fn recorded_here(&self, id: PayRecordId) -> Option<Arc<Outcome>> {
        self.hub.recorded(id)
    }

    /// Remembers a signed callback's nonce where this mode keeps them: the
    /// hub (and its store), or Redis, so a replay to any instance is caught.
    pub(crate) async fn remember_nonce(&self, nonce: &str) -> Result<Nonce, RecordError> {
        let memory = self.hub.limits().nonce_memory;
        let fresh = match &self.mode {
            Mode::Memory => {
                return match self.hub.remember_nonce(nonce) {
                    (NonceCheck::Fresh, stored) => Ok(Nonce::Fresh(stored)),
                    (NonceCheck::Replayed, _) => Ok(Nonce::Replayed),
                    (NonceCheck::Full, _) => Err(RecordError::TooManyNonces),
                };
            }
            Mode::Redis(redis) => redis.remember_nonce(nonce, memory).await?,
            Mode::Cluster(cluster) => cluster.remember_nonce(nonce, memory).await?,
        };
        Ok(if fresh {
            Nonce::Fresh(Durable::now())
        } else {
            Nonce::Replayed
        })
    }

    /// Forgets a nonce that [`Backplane::remember_nonce`] remembered for a
    /// callback that was then not recorded, where it was remembered: the
    /// hub, or Redis (`DEL`; on a cluster, routed to the nonce's slot over
    /// the connection that set it, so it runs after a `SET` still in flight).
    pub(crate) async fn forget_nonce(&self, nonce: &str) -> Result<(), Unavailable> {
        match &self.mode {
            Mode::Memory => {
                self.hub.forget_nonce(nonce);
                Ok(())
            }
            Mode::Redis(redis) => redis.forget_nonce(nonce).await,
            Mode::Cluster(cluster) => cluster.forget_nonce(nonce).await,
        }
    }

    /// [`Backplane::forget_nonce`] from where nothing can wait (a `Drop`):
    /// at once in memory mode, else in a task of its own, bounded by
    /// [`REDIS_TIMEOUT`].
    pub(crate) fn forget_nonce_later(&self, nonce: String) {
        if let Mode::Memory = self.mode {
            self.hub.forget_nonce(&nonce);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backplane = self.clone();
        runtime.spawn(async move {
            if let Err(e) = backplane.forget_nonce(&nonce).await {
                log::debug!("cannot forget a nonce: {e}");
            }
        });
    }

    /// Whether a callback for a new payment would be recorded, else why
    /// not: the hub's store writes; in memory mode, `--max-outcomes` is not
    /// reached; in Redis mode, Redis answers and the subscriber connection
    /// is up; on a Redis Cluster, see [`Cluster::ready`].
    pub(crate) async fn ready(&self) -> Result<(), &'static str> {
        self.hub.ready()?;
        match &self.mode {
            Mode::Memory if self.hub.is_full() => {
                Err("as many outcomes as --max-outcomes allows are remembered")
            }
            Mode::Memory => Ok(()),
            Mode::Redis(redis) => redis.ready().await,
            Mode::Cluster(cluster) => cluster.ready().await,
        }
    }

    /// The bounds waiters and outcomes live within.
    pub(crate) fn limits(&self) -> Limits {
        self.hub.limits()
    }

    /// This instance's size now, for `/metrics`.
    pub(crate) fn stats(&self) -> Stats {
        self.hub.stats()
    }

    /// Ends every waiter (each is told [`Wake::Shutdown`]), refuses new
    /// ones, and stops the backplane's tasks.
    pub(crate) fn shutdown(&self) {
        self.hub.shutdown();
    }
}

/// The hub's refusal as the backplane says it.
fn refused(refusal: Refusal) -> RecordError {
    match refusal {
        Refusal::Full => RecordError::Full,
        Refusal::Store(e) => RecordError::Store(e),
    }
}
