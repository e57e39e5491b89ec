//! Waiters: registering one within the limits, with its deadline; releasing
//! one (it left, or its deadline passed); waking them with an outcome.
//! Operations on the [`State`] alone, under the hub's lock.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::state::{Entry, State, Waiter};
use super::types::{Limits, SubscribeError, Transport, Wake};
use crate::model::{Outcome, PayRecordId};

/// What [`State::register`] did.
pub(super) enum Registered {
    /// The payment already has an outcome.
    Recorded(Arc<Outcome>),
    /// A new waiter: its number, its end, and whether the purge task must
    /// be woken for its deadline.
    Waiting {
        waiter: u64,
        receiver: oneshot::Receiver<Wake>,
        wake_purge_task: bool,
    },
}

impl State {
    /// Registers a waiter of `transport` for `id` until `deadline`, within
    /// the limits, unless the payment has an outcome already.
    pub(super) fn register(
        &mut self,
        id: PayRecordId,
        transport: Transport,
        deadline: Instant,
        limits: &Limits,
    ) -> Result<Registered, SubscribeError> {
        if self.shutdown {
            return Err(SubscribeError::ShuttingDown);
        }
        let open_streams = self.open_streams;
        let waiter = self.next_waiter;
        let entry = self
            .payments
            .entry(id)
            .or_insert_with(|| Entry::Waiting(Vec::new()));
        let waiters = match entry {
            Entry::Done { outcome, .. } => return Ok(Registered::Recorded(outcome.clone())),
            Entry::Waiting(waiters) | Entry::Storing { waiters, .. } => waiters,
        };
        let refused = if waiters.len() >= limits.max_streams_per_payment {
            Some(SubscribeError::TooManyStreams)
        } else if open_streams >= limits.max_streams {
            Some(SubscribeError::OverCapacity)
        } else {
            None
        };
        if let Some(refused) = refused {
            if matches!(entry, Entry::Waiting(waiters) if waiters.is_empty()) {
                self.payments.remove(&id);
            }
            return Err(refused);
        }
        let (sender, receiver) = oneshot::channel();
        waiters.push(Waiter { id: waiter, sender });
        self.next_waiter += 1;
        self.open_streams += 1;
        self.open_by_transport[transport as usize] += 1;
        let wake_purge_task = self.next_deadline().is_none_or(|next| deadline < next);
        self.waiter_deadlines
            .insert((deadline, waiter), (id, transport));
        Ok(Registered::Waiting {
            waiter,
            receiver,
            wake_purge_task,
        })
    }

    /// Forgets a waiter that left; true when its payment went idle. Nothing
    /// when its deadline released it already.
    pub(super) fn forget(&mut self, id: PayRecordId, waiter: u64, deadline: Instant) -> bool {
        let Some((_, transport)) = self.waiter_deadlines.remove(&(deadline, waiter)) else {
            return false;
        };
        self.release(id, waiter, transport).1
    }

    /// Frees one waiter's slot and removes its sender from its payment, which
    /// it returns (`None` once the outcome took it); true when the payment
    /// has no waiter left and nothing else to keep, so it leaves the map.
    pub(super) fn release(
        &mut self,
        id: PayRecordId,
        waiter: u64,
        transport: Transport,
    ) -> (Option<oneshot::Sender<Wake>>, bool) {
        self.open_streams -= 1;
        self.open_by_transport[transport as usize] -= 1;
        let Some(entry) = self.payments.get_mut(&id) else {
            return (None, false);
        };
        let Some(waiters) = entry.waiters_mut() else {
            return (None, false);
        };
        let sender = waiters
            .iter()
            .position(|w| w.id == waiter)
            .map(|at| waiters.swap_remove(at).sender);
        let idle = waiters.is_empty() && matches!(entry, Entry::Waiting(_));
        if idle {
            self.payments.remove(&id);
        }
        (sender, idle)
    }
}

/// Sends `outcome` to `waiters`; returns how many were still there.
pub(super) fn notify(waiters: Vec<Waiter>, outcome: &Arc<Outcome>) -> usize {
    waiters
        .into_iter()
        .map(|waiter| waiter.sender.send(Wake::Outcome(outcome.clone())).is_ok())
        .filter(|&sent| sent)
        .count()
}
