//! First outcome wins, with its durability handshake: a new outcome is
//! *storing* until the store says it is durable (waiters keep waiting, and
//! a callback repeating or contradicting it waits for the same write), then
//! *done*; a failed write puts the payment back as if never decided. Also
//! outcomes decided elsewhere (Redis) handed to local waiters, and what the
//! store gives back at start-up. Operations on the [`State`] alone.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::state::{Entry, State, Waiter};
use super::types::{Completion, Limits, Refusal};
use crate::model::{Outcome, PayRecordId};
use crate::store::{Record, StoreError};

/// What [`State::decide`] made of a callback.
pub(super) enum Decision {
    /// Decided at once (a duplicate or conflict of a done outcome).
    Settled(Completion),
    /// A new outcome, now storing: make it durable, then send it.
    Store(Arc<Outcome>),
    /// An outcome is storing already: wait for its write, then compare.
    Wait(Arc<Outcome>, oneshot::Receiver<Result<(), StoreError>>),
}

/// What became of a storing outcome once the store answered.
pub(super) enum Written {
    /// Done: its waiters and callers to tell, and whether the purge task
    /// must be woken for its deadline.
    Done {
        outcome: Arc<Outcome>,
        waiters: Vec<Waiter>,
        callers: Vec<oneshot::Sender<Result<(), StoreError>>>,
        wake_purge_task: bool,
    },
    /// Refused: back to waiting; its callers to tell.
    Failed {
        callers: Vec<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Nothing was storing (cannot happen: only the write's answer ends it).
    Gone,
}

impl State {
    /// First outcome wins: what a callback's outcome does to its payment.
    pub(super) fn decide(
        &mut self,
        outcome: Outcome,
        limits: &Limits,
    ) -> Result<Decision, Refusal> {
        let id = outcome.pay_record_id;
        let waiters = match self.payments.get_mut(&id) {
            Some(Entry::Done {
                outcome: recorded, ..
            }) => {
                return Ok(Decision::Settled(if recorded.status == outcome.status {
                    Completion::Duplicate(recorded.clone())
                } else {
                    Completion::Conflict(recorded.clone())
                }));
            }
            Some(Entry::Storing {
                outcome: recorded,
                callers,
                ..
            }) => {
                let (sender, receiver) = oneshot::channel();
                callers.push(sender);
                return Ok(Decision::Wait(recorded.clone(), receiver));
            }
            Some(Entry::Waiting(waiters)) => std::mem::take(waiters),
            None => Vec::new(),
        };
        if self.recorded_outcomes >= limits.max_outcomes {
            if !waiters.is_empty() {
                self.payments.insert(id, Entry::Waiting(waiters));
            }
            return Err(Refusal::Full);
        }
        let outcome = Arc::new(outcome);
        self.recorded_outcomes += 1;
        self.payments.insert(
            id,
            Entry::Storing {
                outcome: outcome.clone(),
                waiters,
                callers: Vec::new(),
            },
        );
        Ok(Decision::Store(outcome))
    }

    /// The store's answer for a storing outcome: done until `expires_at`,
    /// or (on failure) back to waiting, as if never decided.
    pub(super) fn written(
        &mut self,
        id: PayRecordId,
        failed: bool,
        expires_at: Instant,
    ) -> Written {
        let Some(Entry::Storing {
            outcome,
            waiters,
            callers,
        }) = self.payments.remove(&id)
        else {
            return Written::Gone;
        };
        if failed {
            self.recorded_outcomes -= 1;
            if !waiters.is_empty() {
                self.payments.insert(id, Entry::Waiting(waiters));
            }
            return Written::Failed { callers };
        }
        let wake_purge_task = self.set_done(id, outcome.clone(), expires_at);
        Written::Done {
            outcome,
            waiters,
            callers,
            wake_purge_task,
        }
    }

    /// An outcome decided elsewhere, kept only if a waiter waits here:
    /// the waiters to wake, and whether the purge task must be woken.
    pub(super) fn delivered(
        &mut self,
        outcome: Arc<Outcome>,
        expires_at: Instant,
    ) -> Option<(Vec<Waiter>, bool)> {
        let id = outcome.pay_record_id;
        let waiters = match self.payments.get_mut(&id) {
            Some(Entry::Waiting(waiters)) => std::mem::take(waiters),
            _ => return None,
        };
        self.recorded_outcomes += 1;
        let wake = self.set_done(id, outcome, expires_at);
        Some((waiters, wake))
    }

    /// Takes back what the store kept (oldest first): outcomes and nonces
    /// within their time, each until the deadline it had (counted from its
    /// first callback, not from now). A payment has one stored outcome,
    /// unless an earlier one expired from memory (a callback after the TTL)
    /// or was refused but reached the disk anyway: the latest wins, as the
    /// callbacks were answered. Returns how many outcomes and nonces.
    pub(super) fn restore(&mut self, records: Vec<Record>, limits: &Limits) -> (usize, usize) {
        let (now, system_now) = (Instant::now(), SystemTime::now());
        let (mut outcomes, mut nonces) = (0, 0);
        for record in records {
            let retention = match record {
                Record::Outcome(_) => limits.outcome_ttl,
                Record::Nonce { .. } => limits.nonce_memory,
            };
            let Ok(left) = (record.time() + retention).duration_since(system_now) else {
                continue;
            };
            let expires_at = now + left;
            match record {
                Record::Outcome(outcome) => {
                    let id = outcome.pay_record_id;
                    let entry = Entry::Done {
                        outcome: Arc::new(outcome),
                        expires_at,
                    };
                    if self.payments.insert(id, entry).is_none() {
                        self.recorded_outcomes += 1;
                        outcomes += 1;
                    }
                    self.outcome_deadlines.push_back((expires_at, id));
                }
                Record::Nonce { nonce, .. } => {
                    if self.nonces.insert(nonce.clone(), expires_at).is_none() {
                        self.nonce_deadlines.push_back((expires_at, nonce));
                        nonces += 1;
                    }
                }
            }
        }
        (outcomes, nonces)
    }
}
