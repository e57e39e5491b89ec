//! The cluster's shape: which shards there are and how many live replicas
//! each slot's shard has (read from `CLUSTER SHARDS` every
//! [`TOPOLOGY_INTERVAL`]), the `WAIT` for a replica that a recorded
//! outcome (or a probe) needs, and the per-shard readiness probes.
//!
//! Imports `connections` and `keys` of `cluster/`, and the backplane's
//! leaves `common` and `errors`; never `cluster/mod.rs` nor the door.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, Value};

use super::connections::Connections;
use super::keys::{probe_key, SLOTS};
use crate::backplane::common::{millis, with_timeout};
use crate::backplane::errors::Unavailable;
use crate::hub::Hub;

/// How long `WAIT` waits for a replica to acknowledge a recorded outcome
/// before the callback is answered `503`: under
/// [`REDIS_TIMEOUT`](crate::backplane::common::REDIS_TIMEOUT), far over a
/// healthy replica's acknowledgement (well under a millisecond on a LAN).
pub(super) const REPLICA_WAIT: Duration = Duration::from_millis(500);
/// How often the shards' replicas are re-read (`CLUSTER SHARDS`).
const TOPOLOGY_INTERVAL: Duration = Duration::from_secs(1);
/// How long a readiness probe's key lives: it only needs to be written.
const PROBE_TTL: Duration = Duration::from_secs(10);
/// Why paypush is not ready when a shard's primary does not answer.
const PRIMARY_UNREACHABLE: &str = "a Redis Cluster shard's primary cannot be reached";

/// What this instance knows of the cluster's shards.
pub(super) struct Topology {
    /// Live replicas of each slot's shard, from `CLUSTER SHARDS`; `None`
    /// until first read (then every callback waits for a replica).
    replicas: Mutex<Option<Arc<[u8]>>>,
    /// Which shard (an index into `CLUSTER SHARDS`) holds each slot, so
    /// callbacks bound for one primary go in one pipeline; empty until first
    /// read.
    shards: Mutex<Arc<[u16]>>,
    /// One slot of each shard (from `CLUSTER SHARDS`), where readiness
    /// probes each shard's primary and replica.
    shard_slots: Mutex<Arc<[u16]>>,
}

impl Topology {
    /// Nothing known yet.
    pub(super) fn new() -> Topology {
        Topology {
            replicas: Mutex::new(None),
            shards: Mutex::new(Arc::new([])),
            shard_slots: Mutex::new(Arc::new([])),
        }
    }

    /// Whether a write in `slot` must wait for a replica: its shard has an
    /// online replica, or the shards are not known yet.
    pub(super) fn needs_replica(&self, slot: u16) -> bool {
        let replicas = self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|replicas| replicas.get(usize::from(slot)).copied());
        replicas != Some(0)
    }

    /// `items` in groups that each go to one primary in one pipeline: by
    /// shard, as last read; by slot while the shards are unknown.
    pub(super) fn by_shard<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        slot_of: impl Fn(&T) -> u16,
    ) -> Vec<Vec<T>> {
        // Held while grouping (no await, nothing slow): no copy of the
        // 16 384-slot map per batch.
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: HashMap<u32, Vec<T>> = HashMap::new();
        for item in items {
            let slot = slot_of(&item);
            // Slot keys start above every shard index.
            let group = shards
                .get(usize::from(slot))
                .map_or((u32::from(slot) + 1) << 16, |&shard| u32::from(shard));
            groups.entry(group).or_default().push(item);
        }
        groups.into_values().collect()
    }

    /// `WAIT 1` on the connection that wrote, where `slot`'s shard has an
    /// online replica: false when none acknowledged within [`REPLICA_WAIT`].
    pub(super) async fn wait_for_replica(
        &self,
        commands: &mut ClusterConnection,
        slot: u16,
    ) -> Result<bool, Unavailable> {
        if !self.needs_replica(slot) {
            return Ok(true);
        }
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let acknowledged = with_timeout(commands.route_command(&wait_command(), route)).await?;
        Ok(acknowledged_by_replica(&acknowledged))
    }

    /// Whether every shard is known and takes a probe write that (where it
    /// has a replica) a replica acknowledges, else why not.
    pub(super) async fn ready(&self, connections: &Connections) -> Result<(), &'static str> {
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
        let probes = futures_util::future::join_all(
            shard_slots
                .iter()
                .map(|&slot| self.probe_shard(connections, slot)),
        )
        .await;
        probes.into_iter().collect()
    }

    /// Writes a probe key in `slot` and waits for a replica as a recorded
    /// outcome does, on the probe connection.
    async fn probe_shard(&self, connections: &Connections, slot: u16) -> Result<(), &'static str> {
        let mut probe = connections.probe().await.map_err(|_| PRIMARY_UNREACHABLE)?;
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

    /// Reads `CLUSTER SHARDS` into the online replicas of every slot.
    async fn read(&self, connections: &Connections) -> Result<(), Unavailable> {
        let mut commands = connections.commands().await?;
        let mut shards_cmd = redis::cmd("CLUSTER");
        shards_cmd.arg("SHARDS");
        let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let shards = with_timeout(commands.route_command(&shards_cmd, random)).await?;
        let unreadable = || Unavailable("unreadable CLUSTER SHARDS".into());
        let replicas = replicas_per_slot(&shards).ok_or_else(unreadable)?;
        let shard_of_slot = shard_per_slot(&shards).ok_or_else(unreadable)?;
        let shard_slots = first_slots(&shards).ok_or_else(unreadable)?;
        *self.replicas.lock().unwrap_or_else(|p| p.into_inner()) = Some(replicas);
        *self.shards.lock().unwrap_or_else(|p| p.into_inner()) = shard_of_slot;
        *self.shard_slots.lock().unwrap_or_else(|p| p.into_inner()) = shard_slots;
        Ok(())
    }
}

/// Re-reads the shards' replicas every [`TOPOLOGY_INTERVAL`]; opens every
/// command connection on the way, so no callback pays for one. Runs until
/// `hub` shuts down.
pub(super) async fn read_forever(topology: Arc<Topology>, connections: Arc<Connections>, hub: Hub) {
    loop {
        for _ in 0..connections.command_connections() {
            if connections.commands().await.is_err() {
                break;
            }
        }
        if let Err(e) = topology.read(&connections).await {
            log::debug!("cannot read the cluster's shards: {}", e.0);
        }
        tokio::select! {
            _ = tokio::time::sleep(TOPOLOGY_INTERVAL) => {}
            _ = hub.closed() => return,
        }
    }
}

/// `WAIT 1` for [`REPLICA_WAIT`]: until one replica has every write this
/// connection made on its node.
pub(super) fn wait_command() -> redis::Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(millis(REPLICA_WAIT));
    wait
}

/// Whether a `WAIT 1`'s answer says a replica acknowledged.
pub(super) fn acknowledged_by_replica(answer: &Value) -> bool {
    matches!(answer, Value::Int(n) if *n >= 1)
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

/// From `CLUSTER SHARDS`: the shard (its index there) of every slot;
/// `u16::MAX` for a slot no shard serves.
fn shard_per_slot(shards: &Value) -> Option<Arc<[u16]>> {
    let Value::Array(shards) = shards else {
        return None;
    };
    let mut of_slot = vec![u16::MAX; SLOTS];
    for (index, shard) in shards.iter().enumerate() {
        let shard = fields(shard);
        let slots: Vec<usize> = redis::from_redis_value(field(&shard, "slots")?).ok()?;
        let index = u16::try_from(index).ok()?;
        for range in slots.chunks(2) {
            if let [start, end] = range {
                of_slot.get_mut(*start..=*end)?.fill(index);
            }
        }
    }
    Some(of_slot.into())
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
