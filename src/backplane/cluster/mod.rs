//! Redis Cluster: per-payment channels over sharded pub/sub, so an outcome
//! travels only to the instances that hold a waiter for its payment.
//!
//! - A payment's outcome key `paypush:outcome:{id}` and its channel
//!   `paypush:outcomes:{id}` share a hash tag, hence a slot: one script
//!   records (`SET NX PX`) and `SPUBLISH`es atomically on the slot's primary.
//! - Where the shard has an online replica, a recorded outcome is answered
//!   only after `WAIT 1` says a replica has it (failover loses no `200`);
//!   a timeout is a `503`. Callbacks are committed in batches (the group
//!   commit of replication): a worker per command connection
//!   ([`COMMAND_CONNECTIONS`](connections::COMMAND_CONNECTIONS)) takes
//!   every script that queued while all were busy, and sends them as one
//!   pipeline per shard that ends with one `WAIT`, so that `WAIT` runs on
//!   the node that ran them (see `commits`).
//! - A waiter registers in the hub first; then its payment's channel is
//!   `SSUBSCRIBE`d (confirmed: RESP3 gives the `ssubscribe` reply) unless
//!   it already is, with a `GET` of its outcome key in the same pipeline
//!   right after, so no callback slips in between. The hub says when a
//!   payment has no waiter left; the channel is then `SUNSUBSCRIBE`d, the
//!   channels that went idle together in one pipeline per shard.
//! - A dropped node connection, a failed subscription or a channel the
//!   server unsubscribed (its slot moved) marks the subscriber broken: every
//!   locally waiting payment is subscribed again (one `SSUBSCRIBE` per
//!   channel: one with many channels is `CROSSSLOT`, which is what breaks
//!   redis-rs's own resubscription) and its outcome re-read. `/readyz` is
//!   `503` until that is done, and until each shard takes a probe write
//!   that (where it has a replica) a replica acknowledges within the
//!   callbacks' `WAIT`: ready means a callback would be answered `200`.
//!
//! # Layout
//!
//! This file holds the [`Cluster`] handle the backplane's door uses (the
//! record script, nonces, readiness) and composes the parts, each a room
//! of its own that imports only the ones listed before it (and the
//! backplane's leaves `common` and `errors`), never this file:
//!
//! - `nodes`: [`RedisNodes`], the seed nodes given on the command line;
//! - `keys`: names in Redis (outcome keys, channels, probe keys) and
//!   their hash slots;
//! - `connections`: the command, pub/sub and probe connections, opened on
//!   first use, and the read of a recorded outcome;
//! - `topology`: the shards, the slots each holds and their live replicas
//!   (`CLUSTER SHARDS`), the `WAIT` for a replica, the per-shard readiness
//!   probes;
//! - `commits`: the callbacks' record scripts, committed in batches with
//!   one `WAIT` per shard;
//! - `channels`: the per-payment channel map and its gauge, `SSUBSCRIBE`
//!   (with the read of the outcome) and `SUNSUBSCRIBE`;
//! - `recovery`: the push listener, breaks, and the resubscription and
//!   catch-up after each.

mod channels;
mod commits;
mod connections;
mod keys;
mod nodes;
mod recovery;
mod topology;

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use redis::{AsyncCommands, PushInfo};
use tokio::sync::mpsc;

use super::common::{
    decode_value, encode_message, encode_value, millis, remember_nonce_in, with_timeout, NONCE_KEY,
};
use super::errors::{RecordError, Unavailable};
use crate::hub::Hub;
use crate::model::{Outcome, PayRecordId};
use channels::{Channels, Subscribed};
use commits::Commits;
use connections::Connections;
use keys::{channel, outcome_key, slot};
pub(crate) use nodes::RedisNodes;
use recovery::Recovery;
use topology::Topology;

/// Records an outcome unless one exists and publishes it (sharded) only if
/// recorded. Returns nil when it recorded, else the value already recorded,
/// which it writes again unchanged so that `WAIT` also covers a duplicate:
/// `WAIT` only counts this connection's own writes. Sent with `EVAL`, so a
/// pipeline never meets `NOSCRIPT` (Redis caches it by its digest all the
/// same).
const RECORD_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
  return false
end
local recorded = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], recorded, 'XX', 'KEEPTTL')
return recorded
";

/// The Redis Cluster side of the backplane: its parts, each shared with
/// the tasks that [`Cluster::start`] spawns.
pub(super) struct Cluster {
    nodes: usize,
    connections: Arc<Connections>,
    /// Taken by the listener task when it starts.
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    /// The callbacks' batches; set by [`Cluster::start`].
    commits: OnceLock<Commits>,
    outcome_ttl: Duration,
    channels: Arc<Channels>,
    recovery: Arc<Recovery>,
    topology: Arc<Topology>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("healthy", &self.recovery.is_healthy())
            .finish_non_exhaustive()
    }
}

/// The pub/sub metrics the cluster keeps.
#[derive(Debug, Clone)]
pub(crate) struct PubSubMetrics {
    /// Channels subscribed now.
    pub channels: IntGauge,
    /// Messages received.
    pub messages: IntCounter,
}

impl Cluster {
    /// A cluster backplane for `nodes`; connects on first use.
    pub(super) fn new(
        nodes: &RedisNodes,
        outcome_ttl: Duration,
        metrics: PubSubMetrics,
    ) -> Result<Cluster, Unavailable> {
        let (connections, pushes) = Connections::new(nodes)?;
        let connections = Arc::new(connections);
        let topology = Arc::new(Topology::new());
        Ok(Cluster {
            nodes: nodes.urls().len(),
            channels: Arc::new(Channels::new(
                connections.clone(),
                topology.clone(),
                metrics.channels,
            )),
            connections,
            pushes: Mutex::new(Some(pushes)),
            commits: OnceLock::new(),
            outcome_ttl,
            recovery: Arc::new(Recovery::new(metrics.messages)),
            topology,
        })
    }

    /// Says what it runs on, without credentials.
    pub(super) fn describe(&self) -> String {
        format!("Redis Cluster mode ({} seed nodes)", self.nodes)
    }

    /// Starts the listener, the recovery and unsubscribe tasks, and the
    /// topology reader; they run until `hub` shuts down.
    pub(super) fn start(self: &Arc<Self>, hub: &Hub) {
        let _ = self
            .commits
            .set(Commits::start(&self.connections, &self.topology, hub));
        let (idle_sender, idle) = mpsc::unbounded_channel();
        hub.notify_idle(idle_sender.clone());
        let pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pushes) = pushes {
            tokio::spawn(recovery::listen(
                self.recovery.clone(),
                self.channels.clone(),
                hub.clone(),
                pushes,
            ));
        }
        tokio::spawn(recovery::recover_forever(
            self.recovery.clone(),
            self.channels.clone(),
            self.connections.clone(),
            hub.clone(),
        ));
        tokio::spawn(channels::unsubscribe_forever(
            self.channels.clone(),
            hub.clone(),
            idle,
            idle_sender,
        ));
        tokio::spawn(topology::read_forever(
            self.topology.clone(),
            self.connections.clone(),
            hub.clone(),
        ));
        self.recovery.start();
    }

    /// Runs the record script in the next batch of a command connection,
    /// which (where the shard has a replica) ends with a `WAIT` for one,
    /// then hands what Redis now holds to this instance's waiters (the
    /// instances with a waiter, this one too, got it by `SPUBLISH` already).
    /// Returns the outcome already recorded (`None`: this call recorded
    /// `outcome`) and how many local waiters it reached.
    pub(super) async fn record(
        &self,
        hub: &Hub,
        outcome: &Outcome,
    ) -> Result<(Option<Outcome>, usize), RecordError> {
        let commits = self
            .commits
            .get()
            .ok_or_else(|| Unavailable("the Redis Cluster backplane is not started".into()))?;
        let id = outcome.pay_record_id;
        let mut script = redis::cmd("EVAL");
        script
            .arg(RECORD_SCRIPT)
            .arg(1)
            .arg(outcome_key(id))
            .arg(encode_value(outcome))
            .arg(millis(self.outcome_ttl))
            .arg(channel(id))
            .arg(encode_message(outcome));
        let committed = commits.commit(slot(id), script).await?;
        let existing = committed
            .existing
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
        if !conflict && !committed.replicated {
            return Err(RecordError::NoReplica);
        }
        Ok((existing, notified))
    }

    /// Subscribes to `id`'s channel (confirmed) unless it is already, then
    /// reads its recorded outcome (in the subscription's pipeline if it
    /// sent one).
    pub(super) async fn recorded(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        match self.channels.subscribe(id, false).await {
            Ok(Subscribed::AndRead(value)) => Ok(value.and_then(|v| decode_value(id, &v))),
            Ok(Subscribed::Already) => self.connections.read(id).await,
            Err(e) => {
                self.recovery.mark_broken();
                Err(e)
            }
        }
    }

    /// The outcome recorded for `id`, if any, without subscribing.
    pub(super) async fn lookup(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        self.connections.read(id).await
    }

    /// `SET NX PX` of a signed callback's nonce: true when it is new.
    pub(super) async fn remember_nonce(
        &self,
        nonce: &str,
        memory: Duration,
    ) -> Result<bool, Unavailable> {
        let mut commands = self.connections.nonce_commands(nonce).await?;
        remember_nonce_in(&mut commands, nonce, memory).await
    }

    /// `DEL` of a nonce remembered for a callback that was not recorded,
    /// on the command connection that set it.
    pub(super) async fn forget_nonce(&self, nonce: &str) -> Result<(), Unavailable> {
        let mut commands = self.connections.nonce_commands(nonce).await?;
        with_timeout(commands.del::<_, ()>(format!("{NONCE_KEY}{nonce}"))).await
    }

    /// Whether a callback for a new payment would be answered `200`, else
    /// why not: subscribed and caught up, the shards known, and on each
    /// shard a probe write that its primary takes and, where the shard has
    /// a replica, one acknowledges (`WAIT`) as a callback's outcome must be.
    pub(super) async fn ready(&self) -> Result<(), &'static str> {
        if !self.recovery.is_healthy() {
            return Err("the Redis Cluster subscriber is not subscribed and caught up");
        }
        self.topology.ready(&self.connections).await
    }
}
