//! Redis Cluster: per-payment channels over sharded pub/sub, so an outcome
//! travels only to the instances that hold a waiter for its payment.
//!
//! - A payment's outcome key `paypush:outcome:{id}` and its channel
//!   `paypush:outcomes:{id}` share a hash tag, hence a slot: one script
//!   records (`SET NX PX`) and `SPUBLISH`es atomically on the slot's primary.
//! - Where the shard has an online replica, a recorded outcome is answered
//!   only after `WAIT 1` says a replica has it (failover loses no `200`);
//!   a timeout is a `503`. `WAIT` blocks its connection on the Redis side,
//!   so callbacks spread over [`COMMAND_CONNECTIONS`] connections.
//! - A waiter registers in the hub first; then its payment's channel is
//!   `SSUBSCRIBE`d (confirmed: RESP3 gives the `ssubscribe` reply) unless
//!   it already is; only then is the outcome read, so no callback slips in
//!   between. The hub says when a payment has no waiter left; the channel
//!   is then `SUNSUBSCRIBE`d. Concurrent (un)subscriptions are pipelined on
//!   one connection per node, so a burst of checkouts costs few round trips.
//! - A dropped node connection, a failed subscription or a channel the
//!   server unsubscribed (its slot moved) marks the subscriber broken: every
//!   locally waiting payment is subscribed again (one `SSUBSCRIBE` per
//!   channel: one with many channels is `CROSSSLOT`, which is what breaks
//!   redis-rs's own resubscription) and its outcome re-read. `/readyz` is
//!   `503` until that is done, and until each shard takes a probe write
//!   that (where it has a replica) a replica acknowledges within the
//!   callbacks' `WAIT`: ready means a callback would be answered `200`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use prometheus::{IntCounter, IntGauge};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch, Notify, OnceCell};

use super::common::{
    decode_value, deliver, encode_message, encode_value, millis, with_timeout, CATCH_UP_BATCH,
    NONCE_KEY, RECONNECT_BACKOFF, REDIS_TIMEOUT,
};
use super::errors::{RecordError, Unavailable};
use crate::hub::Hub;
use crate::model::{Outcome, PayRecordId};

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;
/// How long `WAIT` waits for a replica to acknowledge a recorded outcome
/// before the callback is answered `503`: under [`REDIS_TIMEOUT`], far over
/// a healthy replica's acknowledgement (well under a millisecond on a LAN).
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);
/// Command connections (each one per node) that callbacks take in turn: a
/// `WAIT` holds its connection until a replica acknowledges.
pub const COMMAND_CONNECTIONS: usize = 8;
/// How often the shards' replicas are re-read (`CLUSTER SHARDS`).
const TOPOLOGY_INTERVAL: Duration = Duration::from_secs(1);
/// Retries of a command by the cluster client (after a `MOVED`, a refresh
/// of the slot map, a reconnection) before the request is answered `503`.
const RETRIES: u32 = 2;
/// Subscriptions, unsubscriptions or reads in flight at once.
const PIPELINE_DEPTH: usize = 256;
/// Prefix of outcome keys; the payment id follows as a hash tag.
const OUTCOME_KEY: &str = "paypush:outcome:";
/// Prefix of payment channels; the payment id follows as a hash tag.
const CHANNEL: &str = "paypush:outcomes:";
/// Prefix of the readiness probes' keys; a hash tag that picks the slot
/// follows.
const PROBE_KEY: &str = "paypush:ready:";
/// How long a readiness probe's key lives: it only needs to be written.
const PROBE_TTL: Duration = Duration::from_secs(10);
/// Why paypush is not ready when a shard's primary does not answer.
const PRIMARY_UNREACHABLE: &str = "a Redis Cluster shard's primary cannot be reached";

/// Records an outcome unless one exists and publishes it (sharded) only if
/// recorded. Returns nil when it recorded, else the value already recorded,
/// which it writes again unchanged so that `WAIT` also covers a duplicate:
/// `WAIT` only counts this connection's own writes.
const RECORD_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
  return false
end
local recorded = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], recorded, 'XX', 'KEEPTTL')
return recorded
";

/// Some nodes of a Redis Cluster, checked at start-up; they may hold a
/// password, so they never print whole.
#[derive(Clone)]
pub struct RedisNodes(Vec<String>);

impl FromStr for RedisNodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nodes: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        if nodes.is_empty() {
            return Err("no node given".into());
        }
        for (n, node) in nodes.iter().enumerate() {
            // Which one, by place: the node itself may hold a password.
            redis::Client::open(node.as_str())
                .map_err(|e| format!("node {} is not a Redis URL: {e}", n + 1))?;
        }
        Ok(RedisNodes(nodes))
    }
}

impl fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisNodes({} nodes, [redacted])", self.0.len())
    }
}

/// A payment's channel as this instance sees it.
#[derive(Debug)]
enum Channel {
    /// Confirmed by Redis.
    Subscribed,
    /// An `SSUBSCRIBE` or `SUNSUBSCRIBE` is in flight; its sender drops
    /// when it is answered.
    Pending(watch::Receiver<()>),
}

/// The Redis Cluster side of the backplane.
pub struct Cluster {
    nodes: usize,
    commands_client: ClusterClient,
    /// Created on first use, so paypush starts (not ready) while Redis is down.
    commands: Vec<OnceCell<ClusterConnection>>,
    /// Which command connection the next callback takes.
    next_command: AtomicUsize,
    /// RESP3, with pushes (messages, disconnections) to the listener.
    pubsub_client: ClusterClient,
    pubsub: OnceCell<ClusterConnection>,
    /// Taken by the listener task when it starts.
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    record: redis::Script,
    outcome_ttl: Duration,
    /// Channels subscribed or being (un)subscribed. Locked for map
    /// operations only, never across an await; the hub's lock may be taken
    /// under it, never the reverse.
    channels: Mutex<HashMap<PayRecordId, Channel>>,
    /// Every channel of a locally waiting payment is subscribed and its
    /// outcome was read since the last break.
    healthy: AtomicBool,
    /// Counts breaks, so a recovery that a new break overtook does not
    /// declare the subscriber healthy.
    breaks: AtomicU64,
    /// Wakes the recovery task.
    broken: Notify,
    /// Live replicas of each slot's shard, from `CLUSTER SHARDS`; `None`
    /// until first read (then every callback waits for a replica).
    replicas: Mutex<Option<Arc<[u8]>>>,
    /// One slot of each shard (from `CLUSTER SHARDS`), where readiness
    /// probes each shard's primary and replica.
    shard_slots: Mutex<Arc<[u16]>>,
    /// The readiness probes' connection, so their `WAIT`s hold up no callback.
    probe: OnceCell<ClusterConnection>,
    channels_gauge: IntGauge,
    messages: IntCounter,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

/// The pub/sub metrics the cluster keeps.
#[derive(Debug, Clone)]
pub struct PubSubMetrics {
    /// Channels subscribed now.
    pub channels: IntGauge,
    /// Messages received.
    pub messages: IntCounter,
}

impl Cluster {
    /// A cluster backplane for `nodes`; connects on first use.
    pub fn new(
        nodes: &RedisNodes,
        outcome_ttl: Duration,
        metrics: PubSubMetrics,
    ) -> Result<Cluster, Unavailable> {
        let builder = || {
            ClusterClientBuilder::new(nodes.0.clone())
                .connection_timeout(REDIS_TIMEOUT)
                .response_timeout(REDIS_TIMEOUT)
                .retries(RETRIES)
        };
        let (push_sender, pushes) = mpsc::unbounded_channel();
        Ok(Cluster {
            nodes: nodes.0.len(),
            commands_client: builder().build()?,
            commands: (0..COMMAND_CONNECTIONS).map(|_| OnceCell::new()).collect(),
            next_command: AtomicUsize::new(0),
            pubsub_client: builder()
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push_sender)
                .build()?,
            pubsub: OnceCell::new(),
            pushes: Mutex::new(Some(pushes)),
            record: redis::Script::new(RECORD_SCRIPT),
            outcome_ttl,
            channels: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            breaks: AtomicU64::new(0),
            broken: Notify::new(),
            replicas: Mutex::new(None),
            shard_slots: Mutex::new(Arc::new([])),
            probe: OnceCell::new(),
            channels_gauge: metrics.channels,
            messages: metrics.messages,
        })
    }

    /// Says what it runs on, without credentials.
    pub fn describe(&self) -> String {
        format!("Redis Cluster mode ({} seed nodes)", self.nodes)
    }

    /// Starts the listener, the recovery and unsubscribe tasks, and the
    /// topology reader; they run until `hub` shuts down.
    pub fn start(self: &Arc<Self>, hub: &Hub) {
        let (idle_sender, idle) = mpsc::unbounded_channel();
        hub.notify_idle(idle_sender.clone());
        let pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pushes) = pushes {
            tokio::spawn(listen(self.clone(), hub.clone(), pushes));
        }
        tokio::spawn(recover_forever(self.clone(), hub.clone()));
        tokio::spawn(unsubscribe_forever(
            self.clone(),
            hub.clone(),
            idle,
            idle_sender,
        ));
        tokio::spawn(read_topology_forever(self.clone(), hub.clone()));
        self.broken.notify_one();
    }

    /// A command connection, in turn; each reconnects by itself.
    async fn commands(&self) -> Result<ClusterConnection, Unavailable> {
        let turn = self.next_command.fetch_add(1, Ordering::Relaxed) % self.commands.len();
        let connection = with_timeout(
            self.commands[turn].get_or_try_init(|| self.commands_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    async fn pubsub(&self) -> Result<ClusterConnection, Unavailable> {
        let connection = with_timeout(
            self.pubsub
                .get_or_try_init(|| self.pubsub_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    /// Runs the record script and hands what Redis now holds to this
    /// instance's waiters at once (the other instances' got it by `SPUBLISH`
    /// already: neither waits for the replica), then, where the shard has a
    /// replica, waits until one has it before the callback may be answered.
    /// Returns the outcome already recorded (`None`: this call recorded
    /// `outcome`) and how many local waiters it reached.
    pub async fn record(
        &self,
        hub: &Hub,
        outcome: &Outcome,
    ) -> Result<(Option<Outcome>, usize), RecordError> {
        let mut commands = self.commands().await?;
        let id = outcome.pay_record_id;
        let mut invocation = self.record.key(outcome_key(id));
        invocation
            .arg(encode_value(outcome))
            .arg(millis(self.outcome_ttl))
            .arg(channel(id))
            .arg(encode_message(outcome));
        let existing: Option<String> = with_timeout(invocation.invoke_async(&mut commands)).await?;
        let existing = existing
            .map(|value| {
                decode_value(id, &value)
                    .ok_or_else(|| Unavailable(format!("unreadable outcome in Redis for {id}")))
            })
            .transpose()?;
        let notified = hub.deliver(existing.clone().unwrap_or_else(|| outcome.clone()));
        // A conflict answers 409, which promises nothing: no need to wait.
        let conflict = existing
            .as_ref()
            .is_some_and(|e| e.status != outcome.status);
        if !conflict && !self.wait_for_replica(&mut commands, slot(id)).await? {
            return Err(RecordError::NoReplica);
        }
        Ok((existing, notified))
    }

    /// `WAIT 1` on the connection that wrote, where `slot`'s shard has an
    /// online replica: false when none acknowledged within [`REPLICA_WAIT`].
    async fn wait_for_replica(
        &self,
        commands: &mut ClusterConnection,
        slot: u16,
    ) -> Result<bool, Unavailable> {
        let replicas = self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|replicas| replicas[usize::from(slot)]);
        if replicas == Some(0) {
            return Ok(true);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(millis(REPLICA_WAIT));
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let acknowledged = with_timeout(commands.route_command(&wait, route)).await?;
        Ok(matches!(acknowledged, Value::Int(n) if n >= 1))
    }

    /// Subscribes to `id`'s channel (confirmed) unless it is already, then
    /// reads its recorded outcome.
    pub async fn recorded(
        self: &Arc<Self>,
        id: PayRecordId,
    ) -> Result<Option<Outcome>, Unavailable> {
        if let Err(e) = self.subscribe(id, false).await {
            self.mark_broken();
            return Err(e);
        }
        self.read(id).await
    }

    /// The outcome recorded for `id`, if any, without subscribing.
    pub async fn lookup(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        self.read(id).await
    }

    async fn read(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        let mut commands = self.commands().await?;
        let value: Option<String> = with_timeout(commands.get(outcome_key(id))).await?;
        Ok(value.and_then(|value| decode_value(id, &value)))
    }

    /// `SET NX PX` of a signed callback's nonce: true when it is new.
    pub async fn remember_nonce(&self, nonce: &str, memory: Duration) -> Result<bool, Unavailable> {
        let mut commands = self.nonce_commands(nonce).await?;
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(millis(memory)));
        let set: Option<String> =
            with_timeout(commands.set_options(format!("{NONCE_KEY}{nonce}"), 1, options)).await?;
        Ok(set.is_some())
    }

    /// `DEL` of a nonce remembered for a callback that was not recorded.
    pub async fn forget_nonce(&self, nonce: &str) -> Result<(), Unavailable> {
        let mut commands = self.nonce_commands(nonce).await?;
        with_timeout(commands.del::<_, ()>(format!("{NONCE_KEY}{nonce}"))).await
    }

    /// The command connection of `nonce`'s `SET` and `DEL`: always the same
    /// one, so its node runs a `DEL` after a `SET` still in flight (e.g.
    /// when the callback's client went away while it was).
    async fn nonce_commands(&self, nonce: &str) -> Result<ClusterConnection, Unavailable> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(nonce, &mut hasher);
        let connections = u64::try_from(self.commands.len()).unwrap_or(1);
        let turn = usize::try_from(std::hash::Hasher::finish(&hasher) % connections).unwrap_or(0);
        let connection = with_timeout(
            self.commands[turn].get_or_try_init(|| self.commands_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    /// Whether a callback for a new payment would be answered `200`, else
    /// why not: subscribed and caught up, the shards known, and on each
    /// shard a probe write that its primary takes and, where the shard has
    /// a replica, one acknowledges (`WAIT`) as a callback's outcome must be.
    pub async fn ready(&self) -> Result<(), &'static str> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err("the Redis Cluster subscriber is not subscribed and caught up");
        }
        let known = self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let shard_slots = self
            .shard_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !known || shard_slots.is_empty() {
            return Err("the Redis Cluster's shards are not known yet");
        }
        let probes =
            futures_util::future::join_all(shard_slots.iter().map(|&slot| self.probe_shard(slot)))
                .await;
        probes.into_iter().collect()
    }

    /// Writes a probe key in `slot` and waits for a replica as
    /// [`Cluster::record`] does, on the probe connection.
    async fn probe_shard(&self, slot: u16) -> Result<(), &'static str> {
        let mut probe = with_timeout(
            self.probe
                .get_or_try_init(|| self.commands_client.get_async_connection()),
        )
        .await
        .map_err(|_| PRIMARY_UNREACHABLE)?
        .clone();
        let options =
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis(PROBE_TTL)));
        with_timeout(probe.set_options::<_, _, ()>(probe_key(slot), 1, options))
            .await
            .map_err(|_| PRIMARY_UNREACHABLE)?;
        match self.wait_for_replica(&mut probe, slot).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("no replica of a Redis Cluster shard acknowledges writes in time"),
            Err(_) => Err(PRIMARY_UNREACHABLE),
        }
    }

    fn lock_channels(&self) -> MutexGuard<'_, HashMap<PayRecordId, Channel>> {
        // Every update leaves the map consistent: poisoning is ignored.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `SSUBSCRIBE`s to `id`'s channel, confirmed on return; unless it is
    /// subscribed already and `again` is false. Waits for an (un)subscription
    /// of the same channel in flight first.
    ///
    /// The `SSUBSCRIBE` runs in a task of its own, which records its answer
    /// in the map before it drops the entry's `done` sender: a request
    /// cancelled here (its client went away) leaves no `Pending` entry
    /// behind. One whose sender is gone all the same is stale, and taken
    /// over, never waited on (it would answer at once, for ever).
    async fn subscribe(self: &Arc<Self>, id: PayRecordId, again: bool) -> Result<(), Unavailable> {
        loop {
            let next = {
                let mut channels = self.lock_channels();
                match channels.get(&id) {
                    Some(Channel::Subscribed) if !again => return Ok(()),
                    Some(Channel::Pending(in_flight)) if in_flight.has_changed().is_ok() => {
                        Err(in_flight.clone())
                    }
                    _ => {
                        let (done, pending) = watch::channel(());
                        channels.insert(id, Channel::Pending(pending));
                        Ok(done)
                    }
                }
            };
            match next {
                // Ours to send: `done` drops once it is answered.
                Ok(done) => {
                    let cluster = self.clone();
                    let task = tokio::spawn(async move { cluster.subscribe_now(id, done).await });
                    return task
                        .await
                        .unwrap_or_else(|e| Err(Unavailable(format!("subscription failed: {e}"))));
                }
                // Fails once that is answered: its sender is gone.
                Err(mut in_flight) => {
                    let _ = in_flight.changed().await;
                }
            }
        }
    }

    async fn subscribe_now(
        &self,
        id: PayRecordId,
        done: watch::Sender<()>,
    ) -> Result<(), Unavailable> {
        let result = self.send_subscribe(id).await;
        {
            let mut channels = self.lock_channels();
            match result {
                Ok(()) => channels.insert(id, Channel::Subscribed),
                Err(_) => channels.remove(&id),
            };
            self.update_gauge(&channels);
        }
        drop(done);
        result
    }

    async fn send_subscribe(&self, id: PayRecordId) -> Result<(), Unavailable> {
        let mut pubsub = self.pubsub().await?;
        with_timeout(pubsub.ssubscribe(channel(id))).await
    }

    /// `SUNSUBSCRIBE`s the channels of `ids` that no local waiter needs,
    /// pipelined. A channel with an (un)subscription in flight is retried
    /// through `retry` once that is answered.
    async fn unsubscribe(
        &self,
        hub: &Hub,
        ids: Vec<PayRecordId>,
        retry: &mpsc::UnboundedSender<PayRecordId>,
    ) {
        let mut leaving = Vec::new();
        {
            let mut channels = self.lock_channels();
            for id in ids {
                if hub.is_waiting(id) {
                    continue;
                }
                match channels.get(&id) {
                    // A pending entry whose sender is gone is stale: its
                    // state on Redis is unknown, so unsubscribe to be sure.
                    Some(Channel::Subscribed) => {
                        let (done, pending) = watch::channel(());
                        channels.insert(id, Channel::Pending(pending));
                        leaving.push((id, done));
                    }
                    Some(Channel::Pending(done)) if done.has_changed().is_err() => {
                        let (done, pending) = watch::channel(());
                        channels.insert(id, Channel::Pending(pending));
                        leaving.push((id, done));
                    }
                    Some(Channel::Pending(done)) => {
                        let mut done = done.clone();
                        let retry = retry.clone();
                        tokio::spawn(async move {
                            let _ = done.changed().await;
                            let _ = retry.send(id);
                        });
                    }
                    None => {}
                }
            }
        }
        let Ok(pubsub) = self.pubsub().await else {
            self.forget_channels(leaving.into_iter().map(|(id, _)| id));
            return;
        };
        let left: Vec<PayRecordId> = stream::iter(leaving)
            .map(|(id, done)| {
                let mut pubsub = pubsub.clone();
                async move {
                    // A failure leaves it on a connection that is gone, or
                    // subscribed with nobody waiting: harmless, and
                    // counted out either way.
                    if let Err(e) = with_timeout(pubsub.sunsubscribe(channel(id))).await {
                        log::debug!("cannot unsubscribe from {id}: {}", e.0);
                    }
                    drop(done);
                    id
                }
            })
            .buffer_unordered(PIPELINE_DEPTH)
            .collect()
            .await;
        self.forget_channels(left.into_iter());
    }

    /// Drops the entries of channels whose unsubscription was answered
    /// (their `Pending` senders are gone already).
    fn forget_channels(&self, ids: impl Iterator<Item = PayRecordId>) {
        let mut channels = self.lock_channels();
        for id in ids {
            if matches!(channels.get(&id), Some(Channel::Pending(done)) if done.has_changed().is_err())
            {
                channels.remove(&id);
            }
        }
        self.update_gauge(&channels);
    }

    fn update_gauge(&self, channels: &HashMap<PayRecordId, Channel>) {
        let subscribed = channels
            .values()
            .filter(|c| matches!(c, Channel::Subscribed))
            .count();
        self.channels_gauge
            .set(i64::try_from(subscribed).unwrap_or(i64::MAX));
    }

    /// Something was lost: resubscribe and catch up.
    fn mark_broken(&self) {
        self.breaks.fetch_add(1, Ordering::SeqCst);
        self.healthy.store(false, Ordering::SeqCst);
        self.broken.notify_one();
    }

    /// Subscribes again to the channel of every locally waiting payment and
    /// re-reads their outcomes; returns how many it delivered.
    async fn recover(self: &Arc<Self>, hub: &Hub) -> Result<usize, Unavailable> {
        self.pubsub().await?;
        let waiting = hub.waiting_payments();
        let subscribed: Vec<Result<(), Unavailable>> = stream::iter(waiting.clone())
            .map(|id| self.subscribe(id, true))
            .buffer_unordered(PIPELINE_DEPTH)
            .collect()
            .await;
        subscribed.into_iter().collect::<Result<(), _>>()?;
        let mut delivered = 0;
        for batch in waiting.chunks(CATCH_UP_BATCH) {
            let outcomes: Vec<Result<Option<Outcome>, Unavailable>> = stream::iter(batch.to_vec())
                .map(|id| self.read(id))
                .buffer_unordered(PIPELINE_DEPTH)
                .collect()
                .await;
            for outcome in outcomes {
                if let Some(outcome) = outcome? {
                    if hub.deliver(outcome) > 0 {
                        delivered += 1;
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// Handles a push from a node: a message, a dropped connection, or a
    /// channel the server unsubscribed us from.
    fn on_push(&self, hub: &Hub, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                self.messages.inc();
                match push.data.get(1).map(redis::from_redis_value::<String>) {
                    Some(Ok(payload)) => deliver(hub, &payload),
                    _ => log::warn!("ignored an unreadable sharded message"),
                }
            }
            PushKind::Disconnection => {
                log::warn!("a Redis Cluster node's connection dropped; resubscribing");
                self.mark_broken();
            }
            PushKind::SUnsubscribe => {
                // Our own unsubscriptions are echoed here too; only one of a
                // channel we still count as subscribed is the server's doing.
                let id = push
                    .data
                    .first()
                    .and_then(|c| redis::from_redis_value::<String>(c).ok())
                    .and_then(|c| payment_of_channel(&c));
                let ours = id.is_some_and(|id| {
                    matches!(self.lock_channels().get(&id), Some(Channel::Subscribed))
                });
                if ours {
                    log::warn!("Redis Cluster unsubscribed a channel (slot moved); resubscribing");
                    self.mark_broken();
                }
            }
            _ => {}
        }
    }

    /// Reads `CLUSTER SHARDS` into the online replicas of every slot.
    async fn read_topology(&self) -> Result<(), Unavailable> {
        let mut commands = self.commands().await?;
        let mut shards_cmd = redis::cmd("CLUSTER");
        shards_cmd.arg("SHARDS");
        let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let shards = with_timeout(commands.route_command(&shards_cmd, random)).await?;
        let replicas = replicas_per_slot(&shards)
            .ok_or_else(|| Unavailable("unreadable CLUSTER SHARDS".into()))?;
        let shard_slots =
            first_slots(&shards).ok_or_else(|| Unavailable("unreadable CLUSTER SHARDS".into()))?;
        *self.replicas.lock().unwrap_or_else(|p| p.into_inner()) = Some(replicas);
        *self.shard_slots.lock().unwrap_or_else(|p| p.into_inner()) = shard_slots;
        Ok(())
    }
}

/// Hands every push to the cluster until the hub shuts down.
async fn listen(cluster: Arc<Cluster>, hub: Hub, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(push) => cluster.on_push(&hub, push),
                None => return,
            },
            _ = hub.closed() => return,
        }
    }
}

/// After every break: resubscribe and catch up, with backoff, logging each
/// outage and recovery once.
async fn recover_forever(cluster: Arc<Cluster>, hub: Hub) {
    loop {
        tokio::select! {
            _ = cluster.broken.notified() => {}
            _ = hub.closed() => return,
        }
        let mut backoff = RECONNECT_BACKOFF.0;
        let mut reported = false;
        loop {
            let breaks = cluster.breaks.load(Ordering::SeqCst);
            match cluster.recover(&hub).await {
                Ok(caught_up) => {
                    if cluster.breaks.load(Ordering::SeqCst) == breaks {
                        cluster.healthy.store(true, Ordering::SeqCst);
                    }
                    log::info!("Redis Cluster subscriber ready; caught up {caught_up} outcomes");
                    break;
                }
                Err(Unavailable(e)) if !reported => {
                    log::warn!(
                        "Redis Cluster subscriber cannot recover ({e}); retrying until it can"
                    );
                    reported = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = hub.closed() => return,
            }
            backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
        }
    }
}

/// Unsubscribes from the channels of payments that went idle, a batch at a
/// time (all that queued while the previous batch was in flight).
async fn unsubscribe_forever(
    cluster: Arc<Cluster>,
    hub: Hub,
    mut idle: mpsc::UnboundedReceiver<PayRecordId>,
    retry: mpsc::UnboundedSender<PayRecordId>,
) {
    loop {
        let first = tokio::select! {
            id = idle.recv() => id,
            _ = hub.closed() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < PIPELINE_DEPTH {
            match idle.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        cluster.unsubscribe(&hub, batch, &retry).await;
    }
}

/// Re-reads the shards' replicas every [`TOPOLOGY_INTERVAL`]; opens every
/// command connection on the way, so no callback pays for one.
async fn read_topology_forever(cluster: Arc<Cluster>, hub: Hub) {
    loop {
        for _ in 0..cluster.commands.len() {
            if cluster.commands().await.is_err() {
                break;
            }
        }
        if let Err(e) = cluster.read_topology().await {
            log::debug!("cannot read the cluster's shards: {}", e.0);
        }
        tokio::select! {
            _ = tokio::time::sleep(TOPOLOGY_INTERVAL) => {}
            _ = hub.closed() => return,
        }
    }
}

fn outcome_key(id: PayRecordId) -> String {
    format!("{OUTCOME_KEY}{{{id}}}")
}

fn channel(id: PayRecordId) -> String {
    format!("{CHANNEL}{{{id}}}")
}

fn payment_of_channel(channel: &str) -> Option<PayRecordId> {
    let id = channel.strip_prefix(CHANNEL)?.strip_prefix('{')?;
    PayRecordId::parse(id.strip_suffix('}')?).ok()
}

/// The hash slot of `id`'s key and channel.
fn slot(id: PayRecordId) -> u16 {
    hash_slot(&id.to_string())
}

/// A readiness probe's key in `slot`, from a table of one hash tag per
/// slot, built on first use (some 170 000 CRCs, milliseconds, once).
fn probe_key(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n = 0u32;
        while missing > 0 && n < u32::MAX {
            let tag = &mut tags[usize::from(hash_slot(&n.to_string()))];
            if *tag == u32::MAX {
                *tag = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    let tag = tags.get(usize::from(slot)).copied().unwrap_or_default();
    format!("{PROBE_KEY}{{{tag}}}")
}

/// The hash slot of a key whose hash tag is `tag`: CRC16 (XMODEM) of the
/// tag, modulo the slot count, as Redis Cluster computes it.
fn hash_slot(tag: &str) -> u16 {
    let crc = tag.bytes().fold(0u16, |mut crc, byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    // SLOTS is a power of two: the remainder fits in 14 bits.
    crc & (SLOTS as u16 - 1)
}

/// A map's fields, whether RESP3 sent a map or RESP2 a flat array.
fn fields(value: &Value) -> Vec<(String, &Value)> {
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((redis::from_redis_value::<String>(k).ok()?, v)))
        .collect()
}

fn field<'a>(fields: &[(String, &'a Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

/// From `CLUSTER SHARDS`: the first slot of each shard that has slots.
fn first_slots(shards: &Value) -> Option<Arc<[u16]>> {
    let Value::Array(shards) = shards else {
        return None;
    };
    let mut first = Vec::new();
    for shard in shards {
        let shard = fields(shard);
        let slots: Vec<u16> = redis::from_redis_value(field(&shard, "slots")?).ok()?;
        if let Some(&slot) = slots.first() {
            first.push(slot);
        }
    }
    Some(first.into())
}

/// From `CLUSTER SHARDS`: how many replicas of each slot's shard are not
/// known to have failed.
fn replicas_per_slot(shards: &Value) -> Option<Arc<[u8]>> {
    let Value::Array(shards) = shards else {
        return None;
    };
    let mut replicas = vec![0u8; SLOTS];
    for shard in shards {
        let shard = fields(shard);
        let slots: Vec<usize> = redis::from_redis_value(field(&shard, "slots")?).ok()?;
        let Value::Array(nodes) = field(&shard, "nodes")? else {
            return None;
        };
        let online = nodes
            .iter()
            .filter(|node| {
                let node = fields(node);
                let text = |name| {
                    field(&node, name).and_then(|v| redis::from_redis_value::<String>(v).ok())
                };
                // Redis 7.0 reports a replica whose offset it has not yet
                // heard of as `loading`: only `failed` ones do not count.
                text("role").as_deref() == Some("replica")
                    && text("health").as_deref() != Some("failed")
            })
            .count();
        for range in slots.chunks(2) {
            if let [start, end] = range {
                for slot in replicas.get_mut(*start..=*end)? {
                    *slot = u8::try_from(online).unwrap_or(u8::MAX);
                }
            }
        }
    }
    Some(replicas.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // CRC16/XMODEM's check value is 0x31C3 for "123456789".
        let id = PayRecordId::parse("123456789").unwrap();
        assert_eq!(slot(id), 0x31C3);
        // `CLUSTER KEYSLOT paypush:outcome:{1}` says 9842.
        assert_eq!(slot(PayRecordId::parse("1").unwrap()), 9842);
    }

    #[test]
    fn probe_keys_land_in_their_slot() {
        for slot in [0, 1, 9842, 16_383] {
            let key = probe_key(slot);
            let tag = key.split_once('{').and_then(|(_, t)| t.strip_suffix('}'));
            assert_eq!(tag.map(hash_slot), Some(slot), "{key}");
        }
    }

    #[test]
    fn channels_name_their_payment_and_share_its_slot() {
        let id = PayRecordId::parse("42").unwrap();
        assert_eq!(payment_of_channel(&channel(id)), Some(id));
        assert!(outcome_key(id).ends_with("{42}") && channel(id).ends_with("{42}"));
        assert_eq!(payment_of_channel("paypush:outcomes:42"), None);
    }

    #[test]
    fn node_lists_never_print() {
        let nodes: RedisNodes = "redis://:hunter2@127.0.0.1:7000, redis://127.0.0.1:7001"
            .parse()
            .unwrap();
        assert_eq!(nodes.0.len(), 2);
        assert!(!format!("{nodes:?}").contains("hunter2"));
        assert!("".parse::<RedisNodes>().is_err());
        assert!("redis://127.0.0.1:7000,nope".parse::<RedisNodes>().is_err());
    }
}
