//! The per-payment channels this instance is subscribed to: the map of
//! [`Channel`]s (subscribed, or an (un)subscription in flight), the gauge
//! of subscribed channels, `SSUBSCRIBE` (confirmed, in a task of its own)
//! and the pipelined `SUNSUBSCRIBE` of channels no local waiter needs.
//!
//! Lock order: the map's lock is taken for map operations only, never
//! across an await; the hub's lock may be taken under it, never the
//! reverse.
//!
//! Imports `connections`, `keys` and `topology` of `cluster/`, and the
//! backplane's leaves `common` and `errors`; never `cluster/mod.rs` nor
//! the door.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{stream, StreamExt};
use prometheus::IntGauge;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use tokio::sync::{mpsc, watch};

use super::connections::Connections;
use super::keys::{channel, outcome_key, slot};
use super::topology::Topology;
use crate::backplane::common::{next_batch, with_timeout};
use crate::backplane::errors::Unavailable;
use crate::hub::Hub;
use crate::model::PayRecordId;

/// Subscriptions, unsubscriptions or reads in flight at once.
pub(super) const PIPELINE_DEPTH: usize = 256;

/// A payment's channel as this instance sees it.
#[derive(Debug)]
enum Channel {
    /// Confirmed by Redis.
    Subscribed,
    /// An `SSUBSCRIBE` or `SUNSUBSCRIBE` is in flight; its sender drops
    /// when it is answered.
    Pending(watch::Receiver<()>),
}

/// What [`Channels::subscribe`] did.
#[derive(Debug)]
pub(super) enum Subscribed {
    /// Subscribed now, and read the payment's outcome key in the same
    /// pipeline, right after the subscription: what the key held.
    AndRead(Option<String>),
    /// Subscribed already: the outcome is yet to be read.
    Already,
}

/// The channels subscribed or being (un)subscribed, and their gauge.
pub(super) struct Channels {
    /// Locked for map operations only, never across an await; the hub's
    /// lock may be taken under it, never the reverse.
    map: Mutex<HashMap<PayRecordId, Channel>>,
    /// Channels subscribed now.
    gauge: IntGauge,
    /// Whose pub/sub connection (un)subscribes; held here so a spawned
    /// subscription needs nothing else.
    connections: Arc<Connections>,
    /// Which shard each slot is on: unsubscriptions go a pipeline per shard.
    topology: Arc<Topology>,
}

impl Channels {
    /// No channel yet; `gauge` counts the subscribed ones.
    pub(super) fn new(
        connections: Arc<Connections>,
        topology: Arc<Topology>,
        gauge: IntGauge,
    ) -> Channels {
        Channels {
            map: Mutex::new(HashMap::new()),
            gauge,
            connections,
            topology,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PayRecordId, Channel>> {
        // Every update leaves the map consistent: poisoning is ignored.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets (or with `None` removes) `id`'s entry in `channels`, the map
    /// this holds locked, and keeps the gauge of subscribed ones.
    fn set(
        &self,
        channels: &mut HashMap<PayRecordId, Channel>,
        id: PayRecordId,
        channel: Option<Channel>,
    ) {
        let now = matches!(channel, Some(Channel::Subscribed));
        let before = match channel {
            Some(channel) => channels.insert(id, channel),
            None => channels.remove(&id),
        };
        match (matches!(before, Some(Channel::Subscribed)), now) {
            (false, true) => self.gauge.inc(),
            (true, false) => self.gauge.dec(),
            _ => {}
        }
    }

    /// Whether `id`'s channel counts as subscribed (confirmed, nothing in
    /// flight).
    pub(super) fn is_subscribed(&self, id: PayRecordId) -> bool {
        matches!(self.lock().get(&id), Some(Channel::Subscribed))
    }

    /// `SSUBSCRIBE`s to `id`'s channel, confirmed on return, and reads its
    /// outcome key right after in the same pipeline; unless it is
    /// subscribed already and `again` is false. Waits for an
    /// (un)subscription of the same channel in flight first.
    ///
    /// The `SSUBSCRIBE` runs in a task of its own, which records its answer
    /// in the map before it drops the entry's `done` sender: a request
    /// cancelled here (its client went away) leaves no `Pending` entry
    /// behind. One whose sender is gone all the same is stale, and taken
    /// over, never waited on (it would answer at once, for ever).
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        id: PayRecordId,
        again: bool,
    ) -> Result<Subscribed, Unavailable> {
        loop {
            let next = {
                let mut channels = self.lock();
                match channels.get(&id) {
                    Some(Channel::Subscribed) if !again => return Ok(Subscribed::Already),
                    Some(Channel::Pending(in_flight)) if in_flight.has_changed().is_ok() => {
                        Err(in_flight.clone())
                    }
                    _ => {
                        let (done, pending) = watch::channel(());
                        self.set(&mut channels, id, Some(Channel::Pending(pending)));
                        Ok(done)
                    }
                }
            };
            match next {
                // Ours to send: `done` drops once it is answered.
                Ok(done) => {
                    let channels = self.clone();
                    let task = tokio::spawn(async move { channels.subscribe_now(id, done).await });
                    return task
                        .await
                        .unwrap_or_else(|e| Err(Unavailable(format!("subscription failed: {e}"))))
                        .map(Subscribed::AndRead);
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
    ) -> Result<Option<String>, Unavailable> {
        let result = self.send_subscribe(id).await;
        {
            let mut channels = self.lock();
            match result {
                Ok(_) => self.set(&mut channels, id, Some(Channel::Subscribed)),
                Err(_) => self.set(&mut channels, id, None),
            }
        }
        drop(done);
        result
    }

    /// `SSUBSCRIBE` then `GET` of the outcome key, one pipeline to the
    /// slot's primary: the read sees every outcome not published to us.
    async fn send_subscribe(&self, id: PayRecordId) -> Result<Option<String>, Unavailable> {
        let mut pubsub = self.connections.pubsub().await?;
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SSUBSCRIBE")
            .arg(channel(id))
            .ignore()
            .cmd("GET")
            .arg(outcome_key(id));
        let (value,): (Option<String>,) = with_timeout(pipeline.query_async(&mut pubsub)).await?;
        Ok(value)
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
            let mut channels = self.lock();
            for id in ids {
                if hub.is_waiting(id) {
                    continue;
                }
                match channels.get(&id) {
                    // A pending entry whose sender is gone is stale: its
                    // state on Redis is unknown, so unsubscribe to be sure.
                    Some(Channel::Subscribed) => {
                        let (done, pending) = watch::channel(());
                        self.set(&mut channels, id, Some(Channel::Pending(pending)));
                        leaving.push((id, done));
                    }
                    Some(Channel::Pending(done)) if done.has_changed().is_err() => {
                        let (done, pending) = watch::channel(());
                        self.set(&mut channels, id, Some(Channel::Pending(pending)));
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
        let Ok(pubsub) = self.connections.pubsub().await else {
            self.forget(leaving.into_iter().map(|(id, _)| id));
            return;
        };
        let groups = self.topology.by_shard(leaving, |(id, _)| slot(*id));
        let left: Vec<Vec<PayRecordId>> = stream::iter(groups)
            .map(|group| {
                let mut pubsub = pubsub.clone();
                async move {
                    let mut pipeline = redis::pipe();
                    for (id, _) in &group {
                        pipeline.cmd("SUNSUBSCRIBE").arg(channel(*id)).ignore();
                    }
                    let first = group.first().map_or(0, |(id, _)| slot(*id));
                    let route =
                        SingleNodeRoutingInfo::SpecificNode(Route::new(first, SlotAddr::Master));
                    // A failure leaves them on a connection that is gone, or
                    // subscribed with nobody waiting: harmless, and counted
                    // out either way.
                    let sent = pubsub.route_pipeline(&pipeline, 0, pipeline.len(), route);
                    if let Err(e) = with_timeout(sent).await {
                        log::debug!("cannot unsubscribe from {} channels: {}", group.len(), e.0);
                    }
                    group.into_iter().map(|(id, _done)| id).collect()
                }
            })
            .buffer_unordered(PIPELINE_DEPTH)
            .collect()
            .await;
        self.forget(left.into_iter().flatten());
    }

    /// Drops the entries of channels whose unsubscription was answered
    /// (their `Pending` senders are gone already).
    fn forget(&self, ids: impl Iterator<Item = PayRecordId>) {
        let mut channels = self.lock();
        for id in ids {
            if matches!(channels.get(&id), Some(Channel::Pending(done)) if done.has_changed().is_err())
            {
                self.set(&mut channels, id, None);
            }
        }
    }
}

/// Unsubscribes from the channels of payments that went idle, a batch at a
/// time (all that queued while the previous batch was in flight), until
/// `hub` shuts down.
pub(super) async fn unsubscribe_forever(
    channels: Arc<Channels>,
    hub: Hub,
    mut idle: mpsc::UnboundedReceiver<PayRecordId>,
    retry: mpsc::UnboundedSender<PayRecordId>,
) {
    while let Some(batch) = next_batch(&mut idle, PIPELINE_DEPTH, &hub).await {
        channels.unsubscribe(&hub, batch, &retry).await;
    }
}
