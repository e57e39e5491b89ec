//! Redis mode: any number of instances act as one over one Redis.
//!
//! - a callback records its outcome with one Lua script that does
//!   `SET key value NX PX ttl` and, only when that set it, `PUBLISH`es it on
//!   one channel, so duplicates and conflicts are decided once, cluster-wide,
//!   and nothing is published that is not recorded. Only then is it answered
//!   `200`; a Redis error is a `503`, so the provider retries;
//! - every instance keeps one subscriber connection on that channel and hands
//!   each published outcome to its hub; the receiving instance also hands its
//!   own outcome to its hub at once, so local delivery costs no round trip;
//! - when the subscriber connection comes back after a drop, it re-reads the
//!   outcomes of every payment waiting locally, so nothing published while it
//!   was away is missed;
//! - nonces of signed callbacks live in Redis (`SET NX PX`), so a replay to
//!   another instance is caught.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use super::common::{
    decode_value, deliver, encode_message, encode_value, millis, remember_nonce_in, with_timeout,
    CATCH_UP_BATCH, NONCE_KEY, PROBE_PREFIX, RECONNECT_BACKOFF, REDIS_TIMEOUT, REDIS_UNREACHABLE,
};
use super::errors::Unavailable;
use crate::hub::Hub;
use crate::model::{Outcome, PayRecordId};

/// The channel every instance publishes outcomes on and listens to.
pub(crate) const CHANNEL: &str = "paypush:outcomes";
/// Key prefix of recorded outcomes: `paypush:outcome:<payRecordId>`.
const OUTCOME_KEY: &str = "paypush:outcome:";

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

/// The Redis side of the backplane.
pub(crate) struct Redis {
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

impl Redis {
    /// The Redis mode for `url`; connects on first use.
    pub(super) fn new(
        url: &RedisUrl,
        outcome_ttl: Duration,
        messages: prometheus::IntCounter,
    ) -> Result<Redis, Unavailable> {
        Ok(Redis {
            client: redis::Client::open(url.0.as_str())?,
            commands: OnceCell::new(),
            record: redis::Script::new(RECORD_SCRIPT),
            outcome_ttl,
            subscribed: AtomicBool::new(false),
            messages,
        })
    }

    /// Says where it runs, without credentials.
    pub(super) fn describe(&self) -> String {
        format!("Redis mode at {}", self.client.get_connection_info().addr)
    }

    /// Starts the subscriber task; it runs until `hub` shuts down.
    pub(super) fn start(self: &Arc<Self>, hub: &Hub) {
        tokio::spawn(subscribe_forever(self.clone(), hub.clone()));
    }

    /// `SET NX PX` of a signed callback's nonce: true when it is new.
    pub(super) async fn remember_nonce(
        &self,
        nonce: &str,
        memory: Duration,
    ) -> Result<bool, Unavailable> {
        let mut commands = self.commands().await?;
        remember_nonce_in(&mut commands, nonce, memory).await
    }

    /// `DEL`s a nonce, on the one multiplexed connection that sent its
    /// `SET`: Redis runs it after that, even when the `SET` is in flight.
    pub(super) async fn forget_nonce(&self, nonce: &str) -> Result<(), Unavailable> {
        let mut commands = self.commands().await?;
        with_timeout(commands.del::<_, ()>(format!("{NONCE_KEY}{nonce}"))).await
    }

    /// Whether callbacks can be recorded: the subscriber connection is up
    /// and Redis answers.
    pub(super) async fn ready(&self) -> Result<(), &'static str> {
        if !self.subscribed.load(Ordering::Relaxed) {
            return Err("the Redis subscriber connection is down");
        }
        let mut commands = self.commands().await.map_err(|_| REDIS_UNREACHABLE)?;
        with_timeout(redis::cmd("PING").query_async::<String>(&mut commands))
            .await
            .map_err(|_| REDIS_UNREACHABLE)?;
        Ok(())
    }

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
    pub(super) async fn record(&self, outcome: &Outcome) -> Result<Option<Outcome>, Unavailable> {
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
    pub(super) async fn recorded(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_never_print() {
        let url: RedisUrl = "redis://:hunter2@127.0.0.1:6379/0".parse().unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!("not a url".parse::<RedisUrl>().is_err());
    }
}
