//! The hub's vocabulary: its bounds, how a waiter waits and how its wait
//! ends, and what the hub answers a callback, a nonce or a new waiter. Only
//! types; it imports nothing of the hub.

use std::sync::Arc;
use std::time::Duration;

use crate::model::Outcome;
use crate::store::StoreError;

/// The hub's bounds, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open waiting streams in the whole process (`503 over_capacity` above).
    pub max_streams: usize,
    /// Open waiting streams of one payment (`429 too_many_streams` above).
    pub max_streams_per_payment: usize,
    /// How long an outcome is remembered for late subscribers and duplicates.
    pub outcome_ttl: Duration,
    /// How long a signed callback's nonce is remembered, to refuse replays.
    pub nonce_memory: Duration,
    /// Outcomes remembered at once; a new one beyond it is refused, never
    /// making room by forgetting one.
    pub max_outcomes: usize,
    /// The longest a waiter waits: at this deadline the hub itself releases
    /// its slot and tells it [`Wake::Timeout`], whether or not its
    /// transport is polled (a client that reads nothing cannot keep it).
    pub push_timeout: Duration,
}

/// How a waiter's wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The payment's outcome.
    Outcome(Arc<Outcome>),
    /// Its deadline passed; its slot is free already.
    Timeout,
    /// The hub is shutting down.
    Shutdown,
}

impl Wake {
    /// The outcome, if that is what came.
    pub fn into_outcome(self) -> Option<Arc<Outcome>> {
        match self {
            Wake::Outcome(outcome) => Some(outcome),
            Wake::Timeout | Wake::Shutdown => None,
        }
    }
}

/// How a waiter waits: the wire format it turns its `Waiting` into. The
/// hub treats them all alike (same limits, same shutdown) and only counts
/// them apart, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `GET /push`, Server-Sent Events.
    Sse,
    /// `GET /status?wait=S`, a long-poll.
    Poll,
    /// `GET /ws`, a WebSocket.
    Ws,
}

impl Transport {
    /// How many transports there are.
    pub const COUNT: usize = 3;
    /// Every transport, in the order of the enum.
    pub const ALL: [Transport; Transport::COUNT] = [Transport::Sse, Transport::Poll, Transport::Ws];

    /// The `transport` label of the metrics: `sse`, `poll` or `ws`.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Ws => "ws",
        }
    }
}

/// Why a waiter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The payment has `max_streams_per_payment` waiters already.
    TooManyStreams,
    /// The process has `max_streams` waiters already.
    OverCapacity,
    /// The hub is shutting down.
    ShuttingDown,
}

/// What a callback did to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The outcome was recorded and sent to `notified` local waiters.
    Recorded {
        /// The outcome now remembered.
        outcome: Arc<Outcome>,
        /// How many waiters it was sent to.
        notified: usize,
    },
    /// The same status was already recorded; nothing was sent.
    Duplicate(Arc<Outcome>),
    /// A different status was already recorded; nothing changed.
    Conflict(Arc<Outcome>),
}

/// Why a callback's outcome was not recorded; the provider should retry.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// [`Limits::max_outcomes`] outcomes are remembered already.
    Full,
    /// The store could not make it durable.
    Store(StoreError),
}

/// What the hub found of a signed callback's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Not seen in the memory window; now remembered.
    Fresh,
    /// Seen in the memory window: a replay.
    Replayed,
    /// The memory holds [`MAX_NONCES`] already; the request should be retried.
    Full,
}

/// The most nonces remembered at once (about 150 MB at 64-character nonces):
/// a bound on what a flood of signed callbacks can make the hub hold.
pub const MAX_NONCES: usize = 1_000_000;

/// A snapshot of the hub's size, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Waiters alive now (every transport).
    pub open_streams: usize,
    /// Waiters alive now, by transport (indexed by [`Transport`]).
    pub open_by_transport: [usize; Transport::COUNT],
    /// Payments with at least one waiter.
    pub waiting_payments: usize,
    /// Outcomes remembered now.
    pub recorded_outcomes: usize,
    /// Bytes of the store's live segments (none without a store).
    pub store_bytes: Option<u64>,
}
