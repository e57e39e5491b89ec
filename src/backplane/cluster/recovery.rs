//! Breaks and recovery: the listener that hands every push of the pub/sub
//! connection on (a message to the hub; a dropped node connection or a
//! channel the server unsubscribed, its slot moved, marks the subscriber
//! broken), and the task that, after every break, subscribes again to the
//! channel of every locally waiting payment (one `SSUBSCRIBE` per channel:
//! one with many channels is `CROSSSLOT`, which is what breaks redis-rs's
//! own resubscription) and re-reads its outcome, with backoff.
//!
//! Imports `channels`, `connections` and `keys` of `cluster/`, and the
//! backplane's leaves `common` and `errors`; never `cluster/mod.rs` nor
//! the door.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use prometheus::IntCounter;
use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, Notify};

use super::channels::{Channels, PIPELINE_DEPTH};
use super::connections::Connections;
use super::keys::payment_of_channel;
use crate::backplane::common::{deliver, CATCH_UP_BATCH, RECONNECT_BACKOFF};
use crate::backplane::errors::Unavailable;
use crate::hub::Hub;
use crate::model::{Outcome, PayRecordId};

/// Whether the subscriber is whole, and what wakes its recovery.
pub(super) struct Recovery {
    /// Every channel of a locally waiting payment is subscribed and its
    /// outcome was read since the last break.
    healthy: AtomicBool,
    /// Counts breaks, so a recovery that a new break overtook does not
    /// declare the subscriber healthy.
    breaks: AtomicU64,
    /// Wakes the recovery task.
    broken: Notify,
    /// Messages received.
    messages: IntCounter,
}

impl Recovery {
    /// Not healthy until a first recovery; `messages` counts what the
    /// listener receives.
    pub(super) fn new(messages: IntCounter) -> Recovery {
        Recovery {
            healthy: AtomicBool::new(false),
            breaks: AtomicU64::new(0),
            broken: Notify::new(),
            messages,
        }
    }

    /// Every channel of a locally waiting payment is subscribed and its
    /// outcome read since the last break.
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Something was lost: resubscribe and catch up.
    pub(super) fn mark_broken(&self) {
        self.breaks.fetch_add(1, Ordering::SeqCst);
        self.healthy.store(false, Ordering::SeqCst);
        self.broken.notify_one();
    }

    /// Starts a first recovery (nothing is subscribed yet).
    pub(super) fn start(&self) {
        self.broken.notify_one();
    }

    /// Handles a push from a node: a message, a dropped connection, or a
    /// channel the server unsubscribed us from.
    fn on_push(&self, channels: &Channels, hub: &Hub, push: PushInfo) {
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
                let ours = id.is_some_and(|id| channels.is_subscribed(id));
                if ours {
                    log::warn!("Redis Cluster unsubscribed a channel (slot moved); resubscribing");
                    self.mark_broken();
                }
            }
            _ => {}
        }
    }
}

/// Subscribes again to the channel of every locally waiting payment and
/// re-reads their outcomes; returns how many it delivered.
async fn recover(
    channels: &Arc<Channels>,
    connections: &Connections,
    hub: &Hub,
) -> Result<usize, Unavailable> {
    connections.pubsub().await?;
    let waiting = hub.waiting_payments();
    let subscribed: Vec<Result<(), Unavailable>> = stream::iter(waiting.clone())
        .map(|id| async move { channels.subscribe(id, true).await.map(drop) })
        .buffer_unordered(PIPELINE_DEPTH)
        .collect()
        .await;
    subscribed.into_iter().collect::<Result<(), _>>()?;
    let mut delivered = 0;
    for batch in waiting.chunks(CATCH_UP_BATCH) {
        let outcomes: Vec<Result<Option<Outcome>, Unavailable>> = stream::iter(batch.to_vec())
            .map(|id: PayRecordId| connections.read(id))
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

/// Hands every push to the recovery until the hub shuts down.
pub(super) async fn listen(
    recovery: Arc<Recovery>,
    channels: Arc<Channels>,
    hub: Hub,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(push) => recovery.on_push(&channels, &hub, push),
                None => return,
            },
            _ = hub.closed() => return,
        }
    }
}

/// After every break: resubscribe and catch up, with backoff, logging each
/// outage and recovery once.
pub(super) async fn recover_forever(
    recovery: Arc<Recovery>,
    channels: Arc<Channels>,
    connections: Arc<Connections>,
    hub: Hub,
) {
    loop {
        tokio::select! {
            _ = recovery.broken.notified() => {}
            _ = hub.closed() => return,
        }
        let mut backoff = RECONNECT_BACKOFF.0;
        let mut reported = false;
        loop {
            let breaks = recovery.breaks.load(Ordering::SeqCst);
            match recover(&channels, &connections, &hub).await {
                Ok(caught_up) => {
                    if recovery.breaks.load(Ordering::SeqCst) == breaks {
                        recovery.healthy.store(true, Ordering::SeqCst);
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
