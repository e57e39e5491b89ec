//! The connections to the Redis Cluster, each opened on first use so
//! paypush starts (not ready) while Redis is down: the command connections
//! that callbacks take in turn, the RESP3 pub/sub connection whose pushes
//! go to the listener, and the readiness probes' own connection; and the
//! one plain read, of a payment's recorded outcome.
//!
//! Imports `nodes` and `keys` of `cluster/`, and the backplane's leaves
//! `common` and `errors`; never `cluster/mod.rs` nor the backplane's door.

use std::sync::atomic::{AtomicUsize, Ordering};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, ProtocolVersion, PushInfo};
use tokio::sync::{mpsc, OnceCell};

use super::keys::outcome_key;
use super::nodes::RedisNodes;
use crate::backplane::common::{decode_value, with_timeout, REDIS_TIMEOUT};
use crate::backplane::errors::Unavailable;
use crate::model::{Outcome, PayRecordId};

/// Command connections (each one per node) that callbacks take in turn: a
/// `WAIT` holds its connection until a replica acknowledges.
pub(super) const COMMAND_CONNECTIONS: usize = 8;
/// Retries of a command by the cluster client (after a `MOVED`, a refresh
/// of the slot map, a reconnection) before the request is answered `503`.
const RETRIES: u32 = 2;

/// Every connection to the cluster; shared by the parts of `cluster/`.
pub(super) struct Connections {
    commands_client: ClusterClient,
    /// Created on first use, so paypush starts (not ready) while Redis is down.
    commands: Vec<OnceCell<ClusterConnection>>,
    /// Which command connection the next callback takes.
    next_command: AtomicUsize,
    /// RESP3, with pushes (messages, disconnections) to the listener.
    pubsub_client: ClusterClient,
    pubsub: OnceCell<ClusterConnection>,
    /// The readiness probes' connection, so their `WAIT`s hold up no callback.
    probe: OnceCell<ClusterConnection>,
}

impl Connections {
    /// The clients for `nodes` (nothing connects yet) and the receiver of
    /// the pub/sub connection's pushes, for the listener.
    pub(super) fn new(
        nodes: &RedisNodes,
    ) -> Result<(Connections, mpsc::UnboundedReceiver<PushInfo>), Unavailable> {
        let builder = || {
            ClusterClientBuilder::new(nodes.urls().to_vec())
                .connection_timeout(REDIS_TIMEOUT)
                .response_timeout(REDIS_TIMEOUT)
                .retries(RETRIES)
        };
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let connections = Connections {
            commands_client: builder().build()?,
            commands: (0..COMMAND_CONNECTIONS).map(|_| OnceCell::new()).collect(),
            next_command: AtomicUsize::new(0),
            pubsub_client: builder()
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push_sender)
                .build()?,
            pubsub: OnceCell::new(),
            probe: OnceCell::new(),
        };
        Ok((connections, pushes))
    }

    /// How many command connections there are.
    pub(super) fn command_connections(&self) -> usize {
        self.commands.len()
    }

    /// A command connection, in turn; each reconnects by itself.
    pub(super) async fn commands(&self) -> Result<ClusterConnection, Unavailable> {
        let turn = self.next_command.fetch_add(1, Ordering::Relaxed) % self.commands.len();
        self.command_connection(turn).await
    }

    /// The command connection of `nonce`'s `SET` and `DEL`: always the same
    /// one, so its node runs a `DEL` after a `SET` still in flight (e.g.
    /// when the callback's client went away while it was).
    pub(super) async fn nonce_commands(
        &self,
        nonce: &str,
    ) -> Result<ClusterConnection, Unavailable> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(nonce, &mut hasher);
        let connections = u64::try_from(self.commands.len()).unwrap_or(1);
        let turn = usize::try_from(std::hash::Hasher::finish(&hasher) % connections).unwrap_or(0);
        self.command_connection(turn).await
    }

    /// Command connection `turn` (modulo their number).
    pub(super) async fn command_connection(
        &self,
        turn: usize,
    ) -> Result<ClusterConnection, Unavailable> {
        let connection = with_timeout(
            self.commands[turn % self.commands.len()]
                .get_or_try_init(|| self.commands_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    /// The pub/sub connection (one per node, RESP3).
    pub(super) async fn pubsub(&self) -> Result<ClusterConnection, Unavailable> {
        let connection = with_timeout(
            self.pubsub
                .get_or_try_init(|| self.pubsub_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    /// The readiness probes' connection.
    pub(super) async fn probe(&self) -> Result<ClusterConnection, Unavailable> {
        let connection = with_timeout(
            self.probe
                .get_or_try_init(|| self.commands_client.get_async_connection()),
        )
        .await?;
        Ok(connection.clone())
    }

    /// The outcome recorded for `id`, if any.
    pub(super) async fn read(&self, id: PayRecordId) -> Result<Option<Outcome>, Unavailable> {
        let mut commands = self.commands().await?;
        let value: Option<String> = with_timeout(commands.get(outcome_key(id))).await?;
        Ok(value.and_then(|value| decode_value(id, &value)))
    }
}
