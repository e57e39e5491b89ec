//! Where outcomes are decided and how they reach other instances: in memory
//! (one process, the default) or over Redis (any number of instances act as
//! one).
//!
//! The local [`Hub`] stays each instance's registry of waiting streams in
//! both modes. In Redis mode, Redis is the authority:
//!
//! - a callback records its outcome with one Lua script that does
//!   `SET key value NX PX ttl` and, only when that set it, `PUBLISH`es it on
//!   one channel, so duplicates and conflicts are decided once, cluster-wide,
//!   and nothing is published that is not recorded. Only then is it answered
//!   `200`; a Redis error is a `503`, so the provider retries;
//! - every instance keeps one subscriber connection on that channel and hands
//!   each published outcome to its hub; the receiving instance also hands its
//!   own outcome to its hub at once, so local delivery costs no round trip;
//! - a `/push` registers locally first, then reads the recorded outcome, so a
//!   callback cannot slip between the two;
//! - when the subscriber connection comes back after a drop, it re-reads the
//!   outcomes of every payment waiting locally, so nothing published while it
//!   was away is missed;
//! - nonces of signed callbacks live in Redis (`SET NX PX`), so a replay to
//!   another instance is caught.
//!
//! On a Redis Cluster ([`cluster`]), each payment has its own channel
//! (sharded pub/sub), subscribed only while it has a local waiter, so an
//! outcome reaches only the instances that wait for it.

pub mod cluster;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use crate::hub::{Completion, Hub, NonceCheck, Refusal, Stored};
use crate::model::{Outcome, PayRecordId, Status};

pub use cluster::{Cluster, PubSubMetrics, RedisNodes};

/// The channel every instance publishes outcomes on and listens to.
pub const CHANNEL: &str = "paypush:outcomes";
/// Key prefix of recorded outcomes: `paypush:outcome:<payRecordId>`.
const OUTCOME_KEY: &str = "paypush:outcome:";
/// Key prefix of remembered nonces: `paypush:nonce:<nonce>`.
const NONCE_KEY: &str = "paypush:nonce:";
/// How long a Redis command, or a connection attempt, may take before the
/// request that needs it is answered `503`.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between subscriber reconnection attempts.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));
/// What subscription probes start with; every instance ignores them.
const PROBE_PREFIX: &str = "probe:";
/// Why paypush is not ready when Redis does not answer.
const REDIS_UNREACHABLE: &str = "Redis cannot be reached";
/// Payments re-read per `MGET` when catching up.
const CATCH_UP_BATCH: usize = 500;

/// Records an outcome unless one exists, and publishes it only if recorded.
/// Returns nil when it recorded, else the value already recorded.
const RECORD_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return false
end
return redis.call('GET', KEYS[1])
";

/// A Redis URL, checked at start-up. It may hold a password, so it never
/// prints whole.
#[derive(Clone)]
pub struct RedisUrl(String);

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        redis::Client::open(s)
            .map(|_| RedisUrl(s.to_string()))
            .map_err(|e| format!("not a Redis URL: {e}"))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisUrl([redacted])")
    }
}

/// Redis failed or did not answer in time.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        Unavailable(e.to_string())
    }
}

/// Why a callback's outcome was not recorded.
#[derive(Debug)]
pub enum RecordError {
    /// Redis failed or did not answer in time.
    Redis(Unavailable),
    /// Recorded on a Redis Cluster shard's primary, but no replica
    /// acknowledged it in time: a failover could lose it.
    NoReplica,
    /// The hub refused it (full, or its store cannot write).
    Refused(Refusal),
}

impl From<Unavailable> for RecordError {
    fn from(e: Unavailable) -> Self {
        RecordError::Redis(e)
    }
}

/// In memory, or over Redis.
#[derive(Clone, Debug)]
pub enum Backplane {
    /// One process; the hub decides.
    Memory,
    /// Many instances; Redis decides.
    Redis(Arc<Redis>),
    /// Many instances; a Redis Cluster decides.
    Cluster(Arc<Cluster>),
}

/// The Redis side of the backplane.
pub struct Redis {
    client: redis::Client,
    /// Created on first use, so paypush starts (not ready) while Redis is down.
    commands: OnceCell<ConnectionManager>,
    record: redis::Script,
    outcome_ttl: Duration,
    /// Whether the subscriber connection is up: readiness needs it.
    subscribed: AtomicBool,
    /// Bumped for each outcome received over pub/sub.
    messages: prometheus::IntCounter,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("subscribed", &self.subscribed)
            .finish_non_exhaustive()
    }
}

impl Backplane {
    /// The in-memory backplane, the Redis one for `url`, or the Redis
    /// Cluster one for `nodes`.
    pub fn new(
        url: Option<&RedisUrl>,
        nodes: Option<&RedisNodes>,
        outcome_ttl: Duration,
        metrics: PubSubMetrics,
    ) -> Result<Backplane, Unavailable> {
        if let Some(nodes) = nodes {
            let cluster = Cluster::new(nodes, outcome_ttl, metrics)?;
            return Ok(Backplane::Cluster(Arc::new(cluster)));
        }
        let Some(url) = url else {
            return Ok(Backplane::Memory);
        };
        Ok(Backplane::Redis(Arc::new(Redis {
            client: redis::Client::open(url.0.as_str())?,
            commands: OnceCell::new(),
            record: redis::Script::new(RECORD_SCRIPT),
            outcome_ttl,
            subscribed: AtomicBool::new(false),
            messages: metrics.messages,
        })))
    }

    /// Describes the mode for the start-up line, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Backplane::Memory => "in-memory mode".into(),
            Backplane::Redis(redis) => {
                format!("Redis mode at {}", redis.client.get_connection_info().addr)
            }
            Backplane::Cluster(cluster) => cluster.describe(),
        }
    }

    /// Starts the subscriber task (Redis mode); it runs until `hub` shuts down.
    pub fn start(&self, hub: &Hub) {
        match self {
            Backplane::Memory => {}
            Backplane::Redis(redis) => {
                tokio::spawn(subscribe_forever(redis.clone(), hub.clone()));
            }
            Backplane::Cluster(cluster) => cluster.start(hub),
        }
    }

    /// Records `outcome` unless the payment has one (first wins) and delivers
    /// it to this instance's streams; in Redis mode, to every instance's.
    pub async fn record(&self, hub: &Hub, outcome: Outcome) -> Result<Completion, RecordError> {
        let (recorded, notified) = match self {
            Backplane::Memory => return hub.complete(outcome).await.map_err(RecordError::Refused),
            Backplane::Redis(redis) => {
                let recorded = redis.record(&outcome).await.map_err(RecordError::Redis)?;
                // Redis keeps it; this hub only hands it to its own streams
                // (a duplicate's too, in case they missed it).
                let notified = hub.deliver(recorded.clone().unwrap_or_else(|| outcome.clone()));
                (recorded, notified)
            }
            // It has handed it to this hub already, before waiting for a replica.
            Backplane::Cluster(cluster) => cluster.record(hub, &outcome).await?,
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

    /// Hands the outcome recorded elsewhere for `id` (Redis mode) to the hub,
    /// so its streams get it; true when there was one. Always false in
    /// memory mode, where the hub is the record. Call it once a waiter is
    /// registered: on a Redis Cluster it first subscribes (confirmed) to
    /// the payment's channel, so nothing published after the read is missed.
    pub async fn catch_up(&self, hub: &Hub, id: PayRecordId) -> Result<bool, Unavailable> {
        let recorded = match self {
            Backplane::Memory => return Ok(false),
            Backplane::Redis(redis) => redis.recorded(id).await?,
            Backplane::Cluster(cluster) => cluster.recorded(id).await?,
        };
        Ok(match recorded {
            Some(outcome) => {
                hub.deliver(outcome);
                true
            }
            None => false,
        })
    }

    /// The outcome recorded for `id`, here or (Redis mode) anywhere, without
    /// registering a waiter: for answers given at once.
    pub async fn lookup(
        &self,
        hub: &Hub,
        id: PayRecordId,
    ) -> Result<Option<Arc<Outcome>>, Unavailable> {
        if let Some(outcome) = hub.recorded(id) {
            return Ok(Some(outcome));
        }
        let recorded = match self {
            Backplane::Memory => return Ok(None),
            Backplane::Redis(redis) => redis.recorded(id).await?,
            // A read without subscribing: nothing waits for what comes next.
            Backplane::Cluster(cluster) => cluster.lookup(id).await?,
        };
        Ok(recorded.map(Arc::new))
    }

    /// Remembers a signed callback's nonce, cluster-wide in Redis mode.
    /// Wait for the returned [`Stored`] before answering.
    pub async fn remember_nonce(
        &self,
        hub: &Hub,
        nonce: &str,
    ) -> Result<(NonceCheck, Stored), Unavailable> {
        let memory = hub.limits().nonce_memory;
        let redis = match self {
            Backplane::Memory => return Ok(hub.remember_nonce(nonce)),
            Backplane::Redis(redis) => redis,
            Backplane::Cluster(cluster) => {
                let check = if cluster.remember_nonce(nonce, memory).await? {
                    NonceCheck::Fresh
                } else {
                    NonceCheck::Replayed
                };
                return Ok((check, Stored::now()));
            }
        };
        let mut commands = redis.commands().await?;
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(millis(memory)));
        let set: Option<String> =
            with_timeout(commands.set_options(format!("{NONCE_KEY}{nonce}"), 1, options)).await?;
        let check = if set.is_some() {
            NonceCheck::Fresh
        } else {
            NonceCheck::Replayed
        };
        Ok((check, Stored::now()))
    }

    /// Forgets a nonce that [`Backplane::remember_nonce`] remembered for a
    /// callback that was then not recorded, where it was remembered: the
    /// hub, or Redis (`DEL`; on a cluster, routed to the nonce's slot over
    /// the connection that set it, so it runs after a `SET` still in flight).
    pub async fn forget_nonce(&self, hub: &Hub, nonce: &str) -> Result<(), Unavailable> {
        match self {
            Backplane::Memory => {
                hub.forget_nonce(nonce);
                Ok(())
            }
            Backplane::Redis(redis) => {
                // The one multiplexed connection that sent the SET: Redis runs
                // this DEL after it, even when the SET is still in flight.
                let mut commands = redis.commands().await?;
                with_timeout(commands.del::<_, ()>(format!("{NONCE_KEY}{nonce}"))).await
            }
            Backplane::Cluster(cluster) => cluster.forget_nonce(nonce).await,
        }
    }

    /// [`Backplane::forget_nonce`] from where nothing can wait (a `Drop`):
    /// at once in memory mode, else in a task of its own, bounded by
    /// [`REDIS_TIMEOUT`].
    pub fn forget_nonce_later(&self, hub: &Hub, nonce: String) {
        if let Backplane::Memory = self {
            hub.forget_nonce(&nonce);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (backplane, hub) = (self.clone(), hub.clone());
        runtime.spawn(async move {
            if let Err(e) = backplane.forget_nonce(&hub, &nonce).await {
                log::debug!("cannot forget a nonce: {}", e.0);
            }
        });
    }

    /// Whether a callback for a new payment would be recorded, else why
    /// not: the hub's store writes; in memory mode, `--max-outcomes` is not
    /// reached; in Redis mode, Redis answers and the subscriber connection
    /// is up; on a Redis Cluster, see [`Cluster::ready`].
    pub async fn ready(&self, hub: &Hub) -> Result<(), &'static str> {
        hub.ready()?;
        let redis = match self {
            Backplane::Memory if hub.is_full() => {
                return Err("as many outcomes as --max-outcomes allows are remembered")
            }
            Backplane::Memory => return Ok(()),
            Backplane::Redis(redis) => redis,
            Backplane::Cluster(cluster) => return cluster.ready().await,
        };
        if !redis.subscribed.load(Ordering::Relaxed) {
            return Err("the Redis subscriber connection is down");
        }
        let mut commands = redis.commands().await.map_err(|_| REDIS_UNREACHABLE)?;
        with_timeout(redis::cmd("PING").query_async::<String>(&mut commands))
            .await
            .map_err(|_| REDIS_UNREACHABLE)?;
        Ok(())
    }
}

impl Redis {
    /// The shared command connection; reconnects by itself after a drop.
    async fn commands(&self) -> Result<ConnectionManager, Unavailable> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let manager = self
            .commands
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await?;
        Ok(manager.clone())
    }

    /// Runs the record script: `None` when this call recorded `outcome`,
    /// else the outcome already recorded.
    async fn record(&self, outcome: &Outcome) -> Result<Option<Outcome>, Unavailable> {
        let mut commands = self.commands().await?;
        let id = outcome.pay_record_id;
        let mut invocation = self.record.key(format!("{OUTCOME_KEY}{id}"));
        invocation
            .arg(encode_value(outcome))
            .arg(millis(self.outcome_ttl))
            .arg(CHANNEL)
            .arg(encode_message(outcome));
        let existing: Option<String> = with_timeout(invocation.invoke_async(&mut commands)).await?;
        existing
            .map(|value| {
                decode_value(id, &value)
                    .ok_or_else(|| Unavailable(format!("unreadable outcome in Redis for {id}")))
            })
            .transpose()
    }

    /// The outcome recorded for `id`, if any.
    async fn recorded(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        let mut commands = self.commands().await?;
        let value: Option<String> =
            with_timeout(commands.get(format!("{OUTCOME_KEY}{id}"))).await?;
        Ok(value.and_then(|value| decode_value(id, &value)))
    }

    /// Re-reads the outcomes of every payment waiting locally.
    async fn catch_up(&self, hub: &Hub) -> Result<usize, Unavailable> {
        let mut commands = self.commands().await?;
        let mut delivered = 0;
        for batch in hub.waiting_payments().chunks(CATCH_UP_BATCH) {
            let keys: Vec<String> = batch
                .iter()
                .map(|id| format!("{OUTCOME_KEY}{id}"))
                .collect();
            let values: Vec<Option<String>> = with_timeout(commands.mget(keys)).await?;
            for (id, value) in batch.iter().zip(values) {
                if let Some(outcome) = value.and_then(|v| decode_value(*id, &v)) {
                    if hub.deliver(outcome) > 0 {
                        delivered += 1;
                    }
                }
            }
        }
        Ok(delivered)
    }
}

/// The subscriber: listens to [`CHANNEL`], hands outcomes to the hub,
/// reconnects with backoff and catches up after every (re)connection. Logs
/// each loss and recovery once, not each attempt.
async fn subscribe_forever(redis: Arc<Redis>, hub: Hub) {
    let mut backoff = RECONNECT_BACKOFF.0;
    let mut reported = false;
    while !hub.is_shut_down() {
        let result = listen(&redis, &hub).await;
        redis.subscribed.store(false, Ordering::Relaxed);
        if hub.is_shut_down() {
            break;
        }
        match result {
            // It was connected: a new outage, worth a line.
            Ok(()) => {
                log::warn!("Redis subscriber connection lost; reconnecting");
                backoff = RECONNECT_BACKOFF.0;
                reported = true;
            }
            Err(Unavailable(e)) if !reported => {
                log::warn!("Redis subscriber cannot connect ({e}); retrying until it can");
                reported = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = hub.closed() => break,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
    }
}

/// One subscriber connection's life: subscribe, prove it, catch up, deliver
/// until it drops or the hub shuts down. `Err` when it never got going.
async fn listen(redis: &Redis, hub: &Hub) -> Result<(), Unavailable> {
    let mut pubsub = with_timeout(redis.client.get_async_pubsub()).await?;
    with_timeout(pubsub.subscribe(CHANNEL)).await?;
    let mut messages = pubsub.on_message();
    // A refused SUBSCRIBE (e.g. an ACL without the channel) is not always
    // reported as an error, so prove the subscription end to end: publish a
    // probe and wait for it to come back.
    let probe = format!("{PROBE_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut commands = redis.commands().await?;
    with_timeout(commands.publish::<_, _, ()>(CHANNEL, &probe)).await?;
    let proven = tokio::time::timeout(REDIS_TIMEOUT, async {
        while let Some(message) = messages.next().await {
            match message.get_payload::<String>() {
                Ok(payload) if payload == probe => return true,
                Ok(payload) => deliver(hub, &payload),
                Err(_) => {}
            }
        }
        false
    });
    if !proven.await.unwrap_or(false) {
        return Err(Unavailable(format!("no message arrives on {CHANNEL}")));
    }
    redis.subscribed.store(true, Ordering::Relaxed);
    let caught_up = redis.catch_up(hub).await?;
    log::info!("Redis subscriber listening on {CHANNEL}; caught up {caught_up} outcomes");
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return Ok(()) };
                redis.messages.inc();
                if let Ok(payload) = message.get_payload::<String>() {
                    deliver(hub, &payload);
                }
            }
            _ = hub.closed() => return Ok(()),
        }
    }
}

/// Hands a published outcome to the hub; probes and strangers are ignored.
fn deliver(hub: &Hub, payload: &str) {
    if payload.starts_with(PROBE_PREFIX) {
        return;
    }
    match decode_message(payload) {
        Some(outcome) => {
            hub.deliver(outcome);
        }
        None => log::warn!("ignored an unreadable pub/sub message"),
    }
}

async fn with_timeout<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(REDIS_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Unavailable(format!(
            "Redis did not answer within {REDIS_TIMEOUT:?}"
        ))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A recorded outcome's value: `STATUS:completedAtMillis`.
fn encode_value(outcome: &Outcome) -> String {
    let ms = outcome
        .completed_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}:{ms}", outcome.status)
}

fn decode_value(id: PayRecordId, value: &str) -> Option<Outcome> {
    let (status, ms) = value.split_once(':')?;
    Some(Outcome {
        pay_record_id: id,
        status: status.parse::<Status>().ok()?,
        completed_at: UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?),
    })
}

/// A published outcome: `payRecordId:STATUS:completedAtMillis`.
fn encode_message(outcome: &Outcome) -> String {
    format!("{}:{}", outcome.pay_record_id, encode_value(outcome))
}

fn decode_message(message: &str) -> Option<Outcome> {
    let (id, value) = message.split_once(':')?;
    decode_value(PayRecordId::parse(id).ok()?, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_trip_through_redis_values_and_messages() {
        let id = PayRecordId::parse("9223372036854775807").unwrap();
        let outcome = Outcome {
            pay_record_id: id,
            status: Status::Closed,
            completed_at: UNIX_EPOCH + Duration::from_millis(1_795_636_968_695),
        };
        assert_eq!(
            decode_value(id, &encode_value(&outcome)),
            Some(outcome.clone())
        );
        assert_eq!(decode_message(&encode_message(&outcome)), Some(outcome));
        assert_eq!(decode_message("x:SUCCESS:1"), None);
        assert_eq!(decode_value(id, "PAID:1"), None);
    }

    #[test]
    fn redis_urls_never_print() {
        let url: RedisUrl = "redis://:hunter2@127.0.0.1:6379/0".parse().unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!("not a url".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn the_event_id_survives_the_trip() {
        let outcome = Outcome::new(PayRecordId::parse("1").unwrap(), Status::Success);
        let back = decode_value(outcome.pay_record_id, &encode_value(&outcome)).unwrap();
        assert_eq!(back.event_id(), outcome.event_id());
    }
}
