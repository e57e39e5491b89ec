//! What the hub holds under its one lock: each payment (waiting, storing or
//! done), the nonces, and every deadline. Plain data and the few operations
//! the other parts share; nothing here awaits, sends or locks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::types::{Transport, Wake};
use crate::model::{Outcome, PayRecordId};
use crate::store::StoreError;

/// The hub's state; see the module docs of each part for what it does to it.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) payments: HashMap<PayRecordId, Entry>,
    /// Nonces of signed callbacks seen lately, for replay detection.
    pub(super) nonces: HashMap<String, Instant>,
    /// Outcome deadlines, oldest first: every outcome lives the same TTL and
    /// deadlines are taken under the lock, so they arrive in order.
    pub(super) outcome_deadlines: VecDeque<(Instant, PayRecordId)>,
    /// Nonce deadlines, oldest first (the same reasoning).
    pub(super) nonce_deadlines: VecDeque<(Instant, String)>,
    /// Every waiter's deadline, earliest first, keyed by deadline and
    /// waiter (waits differ: a long-poll's is shorter); removed when the
    /// waiter leaves, so it holds only live ones.
    pub(super) waiter_deadlines: BTreeMap<(Instant, u64), (PayRecordId, Transport)>,
    /// Outcomes remembered now, storing ones included.
    pub(super) recorded_outcomes: usize,
    /// Waiters alive now, across all payments.
    pub(super) open_streams: usize,
    /// The same, by transport (indexed by [`Transport`]).
    pub(super) open_by_transport: [usize; Transport::COUNT],
    /// Tells a waiter's own sender apart from the other waiters of its payment.
    pub(super) next_waiter: u64,
    /// Set once; after it, nothing new waits and the purge task stops.
    pub(super) shutdown: bool,
}

impl State {
    /// The earliest deadline of any kind.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let outcome = self.outcome_deadlines.front().map(|(at, _)| *at);
        let nonce = self.nonce_deadlines.front().map(|(at, _)| *at);
        let waiter = self
            .waiter_deadlines
            .first_key_value()
            .map(|((at, _), _)| *at);
        outcome.into_iter().chain(nonce).chain(waiter).min()
    }

    /// Marks `id` done with `outcome` until `expires_at`; true when the
    /// purge task must be woken for its deadline.
    pub(super) fn set_done(
        &mut self,
        id: PayRecordId,
        outcome: Arc<Outcome>,
        expires_at: Instant,
    ) -> bool {
        self.payments.insert(
            id,
            Entry::Done {
                outcome,
                expires_at,
            },
        );
        let wake = self.next_deadline().is_none_or(|next| expires_at < next);
        self.outcome_deadlines.push_back((expires_at, id));
        wake
    }
}

/// One payment, as this hub knows it.
#[derive(Debug)]
pub(super) enum Entry {
    Waiting(Vec<Waiter>),
    /// Decided, and being made durable by the store.
    Storing {
        outcome: Arc<Outcome>,
        waiters: Vec<Waiter>,
        /// Callbacks repeating or contradicting it, waiting for the same write.
        callers: Vec<oneshot::Sender<Result<(), StoreError>>>,
    },
    Done {
        outcome: Arc<Outcome>,
        expires_at: Instant,
    },
}

impl Entry {
    /// The waiters of this entry; none once it is done.
    pub(super) fn waiters_mut(&mut self) -> Option<&mut Vec<Waiter>> {
        match self {
            Entry::Waiting(waiters) | Entry::Storing { waiters, .. } => Some(waiters),
            Entry::Done { .. } => None,
        }
    }
}

/// A waiter's end in the hub: what wakes it.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) sender: oneshot::Sender<Wake>,
}
