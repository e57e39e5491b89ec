//! The hub: each instance's one registry of waiters and remembered
//! outcomes. In memory mode it also decides (first outcome wins), with the
//! store below it; in Redis modes it only hands outcomes decided there to
//! its own waiters.
//!
//! [`Hub`] is a cheap-clone handle around one `Mutex<State>` keyed by
//! [`PayRecordId`]: a payment is *waiting* (one oneshot sender per waiter),
//! *storing* (decided, being made durable) or *done* (its outcome
//! remembered until the outcome TTL). The parts, each a set of operations
//! on the state alone (no await, no I/O), are siblings that import only
//! `types` and `state`:
//!
//! - `types`: the vocabulary (limits, transports, wakes, answers);
//! - `state`: the data under the lock;
//! - `waiters`: registering within the limits, releasing, waking;
//! - `decision`: first outcome wins and its durability handshake;
//! - `nonces`: the replay memory of signed callbacks;
//! - `expiry`: outcomes, nonces and waiters at their deadlines.
//!
//! This file is the handle: it takes the lock, calls a part, lets the lock
//! go, and only then sends (wakes waiters, answers callers), appends to the
//! store, or wakes the one purge task, which sleeps until the next deadline
//! of any kind (as mini-redis's `db.rs`). The lock is a `std::sync::Mutex`:
//! nothing awaits while holding it. Other locks in paypush (the Redis
//! Cluster's channel map, the refusal log's windows, a WebSocket's upgrade
//! slot) guard their own small maps the same way; the cluster's may take
//! the hub's under it, never the reverse.

mod decision;
mod expiry;
mod nonces;
mod state;
#[cfg(test)]
mod tests;
mod types;
mod waiters;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::model::{Outcome, PayRecordId};
use crate::store::{Record, Store, StoreError};
use decision::{Decision, Written};
use state::State;
use waiters::{notify, Registered};

pub use types::{
    Completion, Limits, NonceCheck, Refusal, Stats, SubscribeError, Transport, Wake, MAX_NONCES,
};

/// A handle to the hub; clones share the same state.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the purge task when an earlier deadline appears or on shutdown.
    purge_task: Notify,
    /// Flips to true once, on shutdown, for tasks that outlive requests.
    closed: watch::Sender<bool>,
    limits: Limits,
    /// Makes outcomes and nonces durable; none in memory-only and Redis modes.
    store: Option<Store>,
    /// Told each payment that stops having waiters here (its last one left
    /// or got its outcome), so a backplane can stop listening for it.
    idle: OnceLock<mpsc::UnboundedSender<PayRecordId>>,
}

/// What [`Hub::subscribe_via`] gives a new waiter.
#[derive(Debug)]
pub enum Subscription {
    /// The payment already has an outcome: send it at once.
    Recorded(Arc<Outcome>),
    /// The waiter is registered and waits for the outcome.
    Waiting(Waiting),
}

/// A registered waiter. Dropping it (client gone, answered, shutdown)
/// removes its sender from the hub at once; its deadline removes it too,
/// even if it is never dropped.
#[derive(Debug)]
pub struct Waiting {
    receiver: oneshot::Receiver<Wake>,
    hub: Hub,
    pay_record_id: PayRecordId,
    waiter: u64,
    deadline: Instant,
}

/// Resolves once a record handed to the store is durable (at once without a store).
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// Nothing to wait for.
    pub fn now() -> Durable {
        Durable(None)
    }

    /// Waits until the record is durable, or could not be stored.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or_else(|_| Err(writer_gone())),
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::from("the store's writer has stopped")
}

impl Hub {
    /// Creates a hub without a store (in-memory and Redis modes) and spawns
    /// its purge task; must run inside a tokio runtime.
    pub fn new(limits: Limits) -> Hub {
        Hub::build(limits, None)
    }

    /// Creates a hub whose outcomes and nonces `store` makes durable, holding
    /// `records` read back from it at start-up.
    pub fn with_store(limits: Limits, store: Store, records: Vec<Record>) -> Hub {
        let hub = Hub::build(limits, Some(store));
        let (outcomes, nonces) = hub.lock().restore(records, &limits);
        hub.shared.purge_task.notify_one();
        log::info!("store: restored {outcomes} outcomes and {nonces} nonces");
        hub
    }

    fn build(limits: Limits, store: Option<Store>) -> Hub {
        let hub = Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                purge_task: Notify::new(),
                closed: watch::Sender::new(false),
                limits,
                store,
                idle: OnceLock::new(),
            }),
        };
        tokio::spawn(purge_expired(hub.clone()));
        hub
    }

    /// From now on, sends `sender` every payment that stops having waiters
    /// here (its last waiter left or got its outcome). Set once; later calls
    /// are ignored.
    pub fn notify_idle(&self, sender: mpsc::UnboundedSender<PayRecordId>) {
        let _ = self.shared.idle.set(sender);
    }

    /// Whether `id` has waiters here now.
    pub fn is_waiting(&self, id: PayRecordId) -> bool {
        let state = self.lock();
        matches!(
            state.payments.get(&id),
            Some(state::Entry::Waiting(_) | state::Entry::Storing { .. })
        )
    }

    fn went_idle(&self, id: PayRecordId) {
        if let Some(idle) = self.shared.idle.get() {
            // The receiver is gone only once the backplane stopped: nothing to tell.
            let _ = idle.send(id);
        }
    }

    /// The hub's bounds.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The store, if outcomes are kept on disk.
    pub fn store(&self) -> Option<&Store> {
        self.shared.store.as_ref()
    }

    /// Whether new outcomes can be made durable: always without a store,
    /// else while the store writes; if not, why.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.store().is_none_or(Store::is_healthy) {
            Ok(())
        } else {
            Err("the outcome store (the data folder) cannot write")
        }
    }

    /// Whether [`Limits::max_outcomes`] outcomes are remembered, so that
    /// [`Hub::complete`] refuses every new one. Meaningful only where this
    /// hub decides outcomes (memory mode): in Redis modes it only counts
    /// what its waiters were handed.
    pub fn is_full(&self) -> bool {
        self.lock().recorded_outcomes >= self.shared.limits.max_outcomes
    }

    /// Registers an SSE stream for `id`, or returns its recorded outcome.
    pub fn subscribe(&self, id: PayRecordId) -> Result<Subscription, SubscribeError> {
        self.subscribe_via(id, Transport::Sse, self.shared.limits.push_timeout)
    }

    /// Registers a waiter of this transport for `id` that waits at most
    /// `wait` (never longer than the push timeout), or returns its recorded
    /// outcome. Every transport shares the same limits.
    pub fn subscribe_via(
        &self,
        id: PayRecordId,
        transport: Transport,
        wait: Duration,
    ) -> Result<Subscription, SubscribeError> {
        let limits = self.shared.limits;
        let deadline = Instant::now() + wait.min(limits.push_timeout);
        let registered = self.lock().register(id, transport, deadline, &limits)?;
        match registered {
            Registered::Recorded(outcome) => Ok(Subscription::Recorded(outcome)),
            Registered::Waiting {
                waiter,
                receiver,
                wake_purge_task,
            } => {
                self.wake_purge_task_if(wake_purge_task);
                Ok(Subscription::Waiting(Waiting {
                    receiver,
                    hub: self.clone(),
                    pay_record_id: id,
                    waiter,
                    deadline,
                }))
            }
        }
    }

    /// The outcome recorded here for `id`, if any (durable, with a store),
    /// without registering anything (so without counting against any limit).
    pub fn recorded(&self, id: PayRecordId) -> Option<Arc<Outcome>> {
        match self.lock().payments.get(&id) {
            Some(state::Entry::Done { outcome, .. }) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Records `outcome` unless its payment has one (first outcome wins),
    /// makes it durable (with a store), then sends it to every waiter of
    /// the payment. A callback repeating or contradicting an outcome still
    /// being stored waits for that write before it answers.
    pub async fn complete(&self, outcome: Outcome) -> Result<Completion, Refusal> {
        let status = outcome.status;
        let decision = self.lock().decide(outcome, &self.shared.limits)?;
        match decision {
            Decision::Settled(completion) => Ok(completion),
            Decision::Store(outcome) => {
                let notified = self.make_durable(outcome.clone()).await?;
                Ok(Completion::Recorded { outcome, notified })
            }
            Decision::Wait(recorded, written) => {
                written
                    .await
                    .unwrap_or_else(|_| Err(writer_gone()))
                    .map_err(Refusal::Store)?;
                Ok(if recorded.status == status {
                    Completion::Duplicate(recorded)
                } else {
                    Completion::Conflict(recorded)
                })
            }
        }
    }

    /// Hands an outcome recorded elsewhere (another instance, via Redis) to
    /// the waiters here, and remembers it only if any waits: an instance
    /// does not keep every outcome of the cluster, and Redis, not this
    /// hub's store, keeps it. Returns how many waiters it reached.
    pub fn deliver(&self, outcome: Outcome) -> usize {
        let id = outcome.pay_record_id;
        let outcome = Arc::new(outcome);
        let expires_at = Instant::now() + self.shared.limits.outcome_ttl;
        let Some((waiters, wake)) = self.lock().delivered(outcome.clone(), expires_at) else {
            return 0;
        };
        self.wake_purge_task_if(wake);
        self.went_idle(id);
        notify(waiters, &outcome)
    }

    /// Makes a storing outcome durable, then done; returns how many waiters
    /// it reached.
    async fn make_durable(&self, outcome: Arc<Outcome>) -> Result<usize, Refusal> {
        let id = outcome.pay_record_id;
        let Some(store) = self.store() else {
            return self.on_written(id, Ok(()));
        };
        let (sender, receiver) = oneshot::channel();
        let hub = self.clone();
        // The hub moves on from the writer thread, whether or not this
        // callback's request is still there to see it.
        store.append(Record::Outcome((*outcome).clone()), move |result| {
            let _ = sender.send(hub.on_written(id, result));
        });
        receiver
            .await
            .unwrap_or_else(|_| Err(Refusal::Store(writer_gone())))
    }

    /// The store's answer for a storing outcome: done and sent to its
    /// waiters, or (on failure) back to waiting, as if never decided.
    fn on_written(
        &self,
        id: PayRecordId,
        result: Result<(), StoreError>,
    ) -> Result<usize, Refusal> {
        let expires_at = Instant::now() + self.shared.limits.outcome_ttl;
        let written = self.lock().written(id, result.is_err(), expires_at);
        match (written, result) {
            (
                Written::Done {
                    outcome,
                    waiters,
                    callers,
                    wake_purge_task,
                },
                _,
            ) => {
                self.wake_purge_task_if(wake_purge_task);
                let notified = notify(waiters, &outcome);
                for caller in callers {
                    let _ = caller.send(Ok(()));
                }
                Ok(notified)
            }
            (Written::Failed { callers }, Err(e)) => {
                for caller in callers {
                    let _ = caller.send(Err(e.clone()));
                }
                Err(Refusal::Store(e))
            }
            // Only this function ends a storing entry.
            (_, result) => result.map(|()| 0).map_err(Refusal::Store),
        }
    }

    /// Remembers a signed callback's nonce for the nonce memory, unless it is
    /// remembered already (a replay). With a store, the nonce is made
    /// durable too: wait for the returned [`Durable`] before answering.
    pub fn remember_nonce(&self, nonce: &str) -> (NonceCheck, Durable) {
        let expires_at = Instant::now() + self.shared.limits.nonce_memory;
        let (check, wake) = self.lock().remember_nonce(nonce, expires_at);
        self.wake_purge_task_if(wake);
        let (NonceCheck::Fresh, Some(store)) = (check, self.store()) else {
            return (check, Durable::now());
        };
        let (sender, receiver) = oneshot::channel();
        let record = Record::Nonce {
            nonce: nonce.to_string(),
            seen: SystemTime::now(),
        };
        store.append(record, move |result| {
            let _ = sender.send(result);
        });
        (check, Durable(Some(receiver)))
    }

    /// Forgets a nonce remembered for a callback that was then not recorded
    /// (answered `503`), so the provider's retry of that request is accepted.
    pub fn forget_nonce(&self, nonce: &str) {
        self.lock().forget_nonce(nonce);
    }

    /// Wakes the purge task when a new deadline is earlier than any it knew.
    fn wake_purge_task_if(&self, earlier: bool) {
        if earlier {
            self.shared.purge_task.notify_one();
        }
    }

    /// Ends every waiter (each is told [`Wake::Shutdown`]), refuses new
    /// ones, and stops the purge task.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shutdown = true;
        let mut waiting: Vec<state::Waiter> = state
            .payments
            .extract_if(|_, entry| matches!(entry, state::Entry::Waiting(_)))
            .flat_map(|(_, mut entry)| entry.waiters_mut().map(std::mem::take))
            .flatten()
            .collect();
        for entry in state.payments.values_mut() {
            if let state::Entry::Storing { waiters, .. } = entry {
                waiting.append(waiters);
            }
        }
        drop(state);
        drop(waiting);
        self.shared.purge_task.notify_one();
        self.shared.closed.send_replace(true);
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Completes once [`Hub::shutdown`] has been called.
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.subscribe();
        // The sender lives as long as the hub, so this cannot fail early.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// The payments with waiters now (a copy, for catching up after a
    /// backplane outage; not for the request path).
    pub fn waiting_payments(&self) -> Vec<PayRecordId> {
        let state = self.lock();
        state
            .payments
            .iter()
            .filter(|(_, entry)| !matches!(entry, state::Entry::Done { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The hub's size now.
    pub fn stats(&self) -> Stats {
        let state = self.lock();
        Stats {
            open_streams: state.open_streams,
            open_by_transport: state.open_by_transport,
            waiting_payments: state.payments.len().saturating_sub(state.recorded_outcomes),
            recorded_outcomes: state.recorded_outcomes,
            store_bytes: self.store().map(Store::bytes_on_disk),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in
        // a way later requests could not live with, so poisoning is ignored.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Waiting {
    /// Waits for the outcome, the deadline or shutdown, whichever is first.
    pub async fn outcome(&mut self) -> Wake {
        (&mut self.receiver).await.unwrap_or(Wake::Shutdown)
    }

    /// The payment this waiter waits for.
    pub fn pay_record_id(&self) -> PayRecordId {
        self.pay_record_id
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let hub = &self.hub;
        let idle = hub
            .lock()
            .forget(self.pay_record_id, self.waiter, self.deadline);
        if idle {
            hub.went_idle(self.pay_record_id);
        }
    }
}

/// The purge task, one per hub until shutdown: removes what passed its
/// deadline, tells the released waiters, then sleeps until the next
/// deadline or until woken.
async fn purge_expired(hub: Hub) {
    loop {
        let (expired, next) = {
            let mut state = hub.lock();
            if state.shutdown {
                break;
            }
            let expired = state.expire(Instant::now());
            (expired, state.next_deadline())
        };
        for sender in expired.timed_out {
            // Its transport may be gone already: nothing to tell then.
            let _ = sender.send(Wake::Timeout);
        }
        for id in expired.idle {
            hub.went_idle(id);
        }
        match next {
            Some(when) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(when) => {}
                    _ = hub.shared.purge_task.notified() => {}
                }
            }
            None => hub.shared.purge_task.notified().await,
        }
    }
    log::debug!("outcome purge task stopped");
}
