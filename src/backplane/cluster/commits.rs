//! Callbacks' record scripts, committed a batch at a time: the group commit
//! of replication. A worker per command connection takes scripts from one
//! queue: an idle worker sends a script at once; while every worker is
//! busy, scripts queue, and the next free one takes them all. It sends one
//! pipeline per shard, its scripts then one `WAIT 1` (where the shard has
//! a replica), so a replica's acknowledgement covers every script before
//! it, and a batch pays one round trip and one `WAIT` per shard, not one
//! of each per callback.
//!
//! A pipeline goes to one node whole, and the cluster client retries it
//! whole after a `MOVED`, so the `WAIT` always runs on the node that ran
//! the scripts before it: it never vouches for writes made elsewhere. A
//! pipeline that mixes a slot that moved (the shard map is a second old)
//! with others fails whole, and its callbacks are answered `503`.
//!
//! Imports `connections` and `topology` of `cluster/`, and the backplane's
//! leaves `common` and `errors`; never `cluster/mod.rs` nor the door.

use std::sync::Arc;

use futures_util::future::join_all;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::connections::Connections;
use super::topology::{acknowledged_by_replica, wait_command, Topology};
use crate::backplane::common::{next_batch, with_timeout};
use crate::backplane::errors::Unavailable;
use crate::hub::Hub;

/// Callbacks in one batch at most; more wait for the next.
const BATCH: usize = 256;

/// What Redis answered a callback's record script.
#[derive(Debug)]
pub(super) struct Committed {
    /// What the script returned: `None` when it recorded, else the value
    /// recorded before.
    pub(super) existing: Option<String>,
    /// Whether a replica has it (always, where the shard has none).
    pub(super) replicated: bool,
}

/// One callback's script, waiting for its batch.
struct Entry {
    slot: u16,
    script: redis::Cmd,
    answer: oneshot::Sender<Result<Committed, Unavailable>>,
}

/// The queue of callbacks' scripts, and the workers that commit them.
pub(super) struct Commits {
    queue: mpsc::UnboundedSender<Entry>,
}

impl Commits {
    /// The queue, and a worker per command connection that commits batches
    /// from it until `hub` shuts down.
    pub(super) fn start(
        connections: &Arc<Connections>,
        topology: &Arc<Topology>,
        hub: &Hub,
    ) -> Commits {
        let (queue, entries) = mpsc::unbounded_channel();
        let entries = Arc::new(tokio::sync::Mutex::new(entries));
        for turn in 0..connections.command_connections() {
            tokio::spawn(commit_forever(
                entries.clone(),
                connections.clone(),
                turn,
                topology.clone(),
                hub.clone(),
            ));
        }
        Commits { queue }
    }

    /// Runs `script` (keyed in `slot`) in the next batch a worker takes,
    /// and waits for a replica where `slot`'s shard has one. Cancel-safe:
    /// the batch runs whether or not this waits for it.
    pub(super) async fn commit(
        &self,
        slot: u16,
        script: redis::Cmd,
    ) -> Result<Committed, Unavailable> {
        let (answer, answered) = oneshot::channel();
        let shutting_down = || Unavailable("paypush is shutting down".into());
        self.queue
            .send(Entry {
                slot,
                script,
                answer,
            })
            .map_err(|_| shutting_down())?;
        answered.await.map_err(|_| shutting_down())?
    }
}

/// A worker on command connection `turn`: takes all that queued (while
/// every worker was busy) as one batch, commits it with a pipeline per
/// shard, and comes back for more.
async fn commit_forever(
    entries: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Entry>>>,
    connections: Arc<Connections>,
    turn: usize,
    topology: Arc<Topology>,
    hub: Hub,
) {
    loop {
        let batch = next_batch(&mut *entries.lock().await, BATCH, &hub).await;
        let Some(batch) = batch else { return };
        let connection = match connections.command_connection(turn).await {
            Ok(connection) => connection,
            Err(e) => {
                fail(batch, &e);
                continue;
            }
        };
        join_all(
            topology
                .by_shard(batch, |entry| entry.slot)
                .into_iter()
                .map(|entries| commit_on_shard(connection.clone(), &topology, entries)),
        )
        .await;
    }
}

/// Answers every entry with `e`.
fn fail(entries: Vec<Entry>, e: &Unavailable) {
    for entry in entries {
        let _ = entry.answer.send(Err(Unavailable(e.0.clone())));
    }
}

/// One pipeline: every entry's script, then `WAIT 1` where a replica is
/// needed; each entry is answered.
async fn commit_on_shard(
    mut connection: redis::cluster_async::ClusterConnection,
    topology: &Topology,
    entries: Vec<Entry>,
) {
    let Some(slot) = entries.first().map(|e| e.slot) else {
        return;
    };
    let wait = entries.iter().any(|e| topology.needs_replica(e.slot));
    let mut pipeline = redis::pipe();
    for entry in &entries {
        pipeline.add_command(entry.script.clone());
    }
    if wait {
        pipeline.add_command(wait_command());
    }
    let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
    let answers =
        with_timeout(connection.route_pipeline(&pipeline, 0, pipeline.len(), route)).await;
    let mut answers = match answers {
        Ok(answers) => answers,
        Err(e) => {
            fail(entries, &e);
            return;
        }
    };
    let replicated = !wait || answers.pop().is_some_and(|a| acknowledged_by_replica(&a));
    let mut answers = answers.into_iter();
    for entry in entries {
        let committed = match answers.next() {
            Some(Value::Nil) => Ok(Committed {
                existing: None,
                replicated,
            }),
            Some(value) => redis::from_redis_value::<String>(&value)
                .map(|existing| Committed {
                    existing: Some(existing),
                    replicated,
                })
                .map_err(Unavailable::from),
            None => Err(Unavailable("a record script went unanswered".into())),
        };
        let _ = entry.answer.send(committed);
    }
}
