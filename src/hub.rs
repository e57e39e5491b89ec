//! The hub: the one registry of waiting streams and remembered outcomes, and
//! the only place in paypush that takes a lock.
//!
//! It is a cheap-clone handle around an `Arc<Mutex<HashMap>>` keyed by
//! [`PayRecordId`]. A payment is either *waiting*, with one oneshot sender per
//! open stream, or *done*, with its outcome remembered until the outcome TTL.
//! One background task purges expired outcomes (and the nonces of signed
//! callbacks): it sleeps until the next deadline or until woken, so no request
//! ever scans the map. Every outcome lives the same TTL and every nonce the
//! same memory, and deadlines are taken under the lock, so each kind's
//! deadlines are already in order in a FIFO queue: setting one and purging
//! one are O(1), with no tree to keep.
//!
//! With a [`Store`] (the default single-process mode), a new outcome is
//! *storing* until the store says it is durable: streams keep waiting, and a
//! callback repeating or contradicting it waits for the same write, so
//! nothing sees an outcome that a crash could still take back. Only then is
//! it *done* and sent.
//!
//! The lock is a `std::sync::Mutex`: nothing awaits while holding it, and it is
//! held for map operations only, released before any sender fires.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::model::{Outcome, PayRecordId};
use crate::store::{Record, Store, StoreError};

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
    /// Makes outcomes and nonces durable; none in memory and Redis modes.
    store: Option<Store>,
    /// Told each payment that stops having waiters here (its last one left
    /// or got its outcome), so a backplane can stop listening for it.
    idle: OnceLock<mpsc::UnboundedSender<PayRecordId>>,
}

#[derive(Debug, Default)]
struct State {
    payments: HashMap<PayRecordId, Entry>,
    /// Nonces of signed callbacks seen lately, for replay detection.
    nonces: HashMap<String, Instant>,
    /// Outcome deadlines, oldest first (see the module docs).
    outcome_deadlines: VecDeque<(Instant, PayRecordId)>,
    /// Nonce deadlines, oldest first.
    nonce_deadlines: VecDeque<(Instant, String)>,
    /// Every waiter's deadline, earliest first, keyed by deadline and
    /// waiter; removed when the waiter leaves, so it holds only live ones.
    waiter_deadlines: BTreeMap<(Instant, u64), (PayRecordId, Transport)>,
    /// Outcomes remembered now, storing ones included.
    recorded_outcomes: usize,
    /// Waiting streams alive now, across all payments.
    open_streams: usize,
    /// The same, by transport (indexed by [`Transport`]).
    open_by_transport: [usize; Transport::COUNT],
    /// Tells a stream's own sender apart from the other streams of its payment.
    next_waiter: u64,
    /// Set once; after it, nothing new waits and the purge task stops.
    shutdown: bool,
}

impl State {
    /// The earliest deadline of any kind.
    fn next_deadline(&self) -> Option<Instant> {
        let outcome = self.outcome_deadlines.front().map(|(at, _)| *at);
        let nonce = self.nonce_deadlines.front().map(|(at, _)| *at);
        let waiter = self
            .waiter_deadlines
            .first_key_value()
            .map(|((at, _), _)| *at);
        outcome.into_iter().chain(nonce).chain(waiter).min()
    }
}

#[derive(Debug)]
enum Entry {
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
    /// The streams waiting on this entry; none once it is done.
    fn waiters_mut(&mut self) -> Option<&mut Vec<Waiter>> {
        match self {
            Entry::Waiting(waiters) | Entry::Storing { waiters, .. } => Some(waiters),
            Entry::Done { .. } => None,
        }
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    sender: oneshot::Sender<Wake>,
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

/// What [`Hub::subscribe`] gives a new stream.
#[derive(Debug)]
pub enum Subscription {
    /// The payment already has an outcome: send it at once.
    Recorded(Arc<Outcome>),
    /// The stream is registered and waits for the outcome.
    Waiting(Waiting),
}

/// A registered stream. Dropping it (client gone, timeout, shutdown) removes
/// its sender from the hub at once; its deadline removes it too, even if it
/// is never dropped.
#[derive(Debug)]
pub struct Waiting {
    receiver: oneshot::Receiver<Wake>,
    hub: Hub,
    pay_record_id: PayRecordId,
    waiter: u64,
    deadline: Instant,
}

/// How a waiter waits: the wire format it turns its [`Waiting`] into. The
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

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The payment has `max_streams_per_payment` waiting streams already.
    TooManyStreams,
    /// The process has `max_streams` waiting streams already.
    OverCapacity,
    /// The hub is shutting down.
    ShuttingDown,
}

/// What a callback did to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The outcome was recorded and sent to `notified` local streams.
    Recorded {
        /// The outcome now remembered.
        outcome: Arc<Outcome>,
        /// How many waiting streams it was sent to.
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

/// Resolves once a record handed to the store is durable (at once without a store).
#[derive(Debug)]
pub struct Stored(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Stored {
    /// Nothing to wait for.
    pub fn now() -> Stored {
        Stored(None)
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

/// What [`Hub::decide`] made of a callback.
enum Decision {
    /// Decided at once (a duplicate or conflict of a done outcome).
    Settled(Completion),
    /// A new outcome, now storing: make it durable, then send it.
    Store(Arc<Outcome>),
    /// An outcome is storing already: wait for its write, then compare.
    Wait(Arc<Outcome>, oneshot::Receiver<Result<(), StoreError>>),
}

/// What [`Hub::remember_nonce`] found.
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
    /// Waiting streams alive now (every transport).
    pub open_streams: usize,
    /// Waiters alive now, by transport (indexed by [`Transport`]).
    pub open_by_transport: [usize; Transport::COUNT],
    /// Payments with at least one waiting stream.
    pub waiting_payments: usize,
    /// Outcomes remembered now.
    pub recorded_outcomes: usize,
    /// Bytes of the store's live segments (none without a store).
    pub store_bytes: Option<u64>,
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
        hub.restore(records);
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
        tokio::spawn(purge_expired_outcomes(hub.clone()));
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
            Some(Entry::Waiting(_) | Entry::Storing { .. })
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
        let mut state = self.lock();
        if state.shutdown {
            return Err(SubscribeError::ShuttingDown);
        }
        let open_streams = state.open_streams;
        let waiter = state.next_waiter;
        let entry = state
            .payments
            .entry(id)
            .or_insert_with(|| Entry::Waiting(Vec::new()));
        let waiters = match entry {
            Entry::Done { outcome, .. } => return Ok(Subscription::Recorded(outcome.clone())),
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
                state.payments.remove(&id);
            }
            return Err(refused);
        }
        let (sender, receiver) = oneshot::channel();
        waiters.push(Waiter { id: waiter, sender });
        state.next_waiter += 1;
        state.open_streams += 1;
        state.open_by_transport[transport as usize] += 1;
        let wake = state.next_deadline().is_none_or(|next| deadline < next);
        state
            .waiter_deadlines
            .insert((deadline, waiter), (id, transport));
        drop(state);
        self.wake_purge_task_if(wake);
        Ok(Subscription::Waiting(Waiting {
            receiver,
            hub: self.clone(),
            pay_record_id: id,
            waiter,
            deadline,
        }))
    }

    /// The outcome recorded here for `id`, if any (durable, with a store),
    /// without registering anything (so without counting against any limit).
    pub fn recorded(&self, id: PayRecordId) -> Option<Arc<Outcome>> {
        match self.lock().payments.get(&id) {
            Some(Entry::Done { outcome, .. }) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Records `outcome` unless its payment has one (first outcome wins),
    /// makes it durable (with a store), then sends it to every waiting
    /// stream of the payment. A callback repeating or contradicting an
    /// outcome still being stored waits for that write before it answers.
    pub async fn complete(&self, outcome: Outcome) -> Result<Completion, Refusal> {
        let status = outcome.status;
        match self.decide(outcome)? {
            Decision::Settled(completion) => Ok(completion),
            Decision::Store(outcome) => {
                let notified = self.store_outcome(outcome.clone()).await?;
                Ok(Completion::Recorded { outcome, notified })
            }
            Decision::Wait(recorded, stored) => {
                stored
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
    /// the streams waiting here, and remembers it only if any waits: an
    /// instance does not keep every outcome of the cluster, and Redis, not
    /// this hub's store, keeps it. Returns how many streams it reached.
    pub fn deliver(&self, outcome: Outcome) -> usize {
        let id = outcome.pay_record_id;
        let mut state = self.lock();
        let waiters = match state.payments.get_mut(&id) {
            Some(Entry::Waiting(waiters)) => std::mem::take(waiters),
            _ => return 0,
        };
        let outcome = Arc::new(outcome);
        state.recorded_outcomes += 1;
        let wake = self.set_done(&mut state, id, outcome.clone());
        drop(state);
        self.wake_purge_task_if(wake);
        self.went_idle(id);
        notify(waiters, &outcome)
    }

    /// First outcome wins: what a callback's outcome does to its payment.
    fn decide(&self, outcome: Outcome) -> Result<Decision, Refusal> {
        let id = outcome.pay_record_id;
        let mut state = self.lock();
        let waiters = match state.payments.get_mut(&id) {
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
        if state.recorded_outcomes >= self.shared.limits.max_outcomes {
            if !waiters.is_empty() {
                state.payments.insert(id, Entry::Waiting(waiters));
            }
            return Err(Refusal::Full);
        }
        let outcome = Arc::new(outcome);
        state.recorded_outcomes += 1;
        state.payments.insert(
            id,
            Entry::Storing {
                outcome: outcome.clone(),
                waiters,
                callers: Vec::new(),
            },
        );
        Ok(Decision::Store(outcome))
    }

    /// Makes a storing outcome durable, then done; returns how many streams
    /// it reached.
    async fn store_outcome(&self, outcome: Arc<Outcome>) -> Result<usize, Refusal> {
        let id = outcome.pay_record_id;
        let Some(store) = self.store() else {
            return self.stored(id, Ok(()));
        };
        let (sender, receiver) = oneshot::channel();
        let hub = self.clone();
        // The hub moves on from the writer thread, whether or not this
        // callback's request is still there to see it.
        store.append(Record::Outcome((*outcome).clone()), move |result| {
            let _ = sender.send(hub.stored(id, result));
        });
        receiver
            .await
            .unwrap_or_else(|_| Err(Refusal::Store(writer_gone())))
    }

    /// The store's answer for a storing outcome: done and sent to its
    /// streams, or (on failure) back to waiting, as if never decided.
    fn stored(&self, id: PayRecordId, result: Result<(), StoreError>) -> Result<usize, Refusal> {
        let mut state = self.lock();
        let Some(Entry::Storing {
            outcome,
            waiters,
            callers,
        }) = state.payments.remove(&id)
        else {
            // Only this function ends a storing entry.
            return result.map(|()| 0).map_err(Refusal::Store);
        };
        if let Err(e) = result {
            state.recorded_outcomes -= 1;
            if !waiters.is_empty() {
                state.payments.insert(id, Entry::Waiting(waiters));
            }
            drop(state);
            for caller in callers {
                let _ = caller.send(Err(e.clone()));
            }
            return Err(Refusal::Store(e));
        }
        let wake = self.set_done(&mut state, id, outcome.clone());
        drop(state);
        self.wake_purge_task_if(wake);
        let notified = notify(waiters, &outcome);
        for caller in callers {
            let _ = caller.send(Ok(()));
        }
        Ok(notified)
    }

    /// Marks `id` done with `outcome` until the TTL; true when the purge
    /// task must be woken for its deadline.
    fn set_done(&self, state: &mut State, id: PayRecordId, outcome: Arc<Outcome>) -> bool {
        let expires_at = Instant::now() + self.shared.limits.outcome_ttl;
        state.payments.insert(
            id,
            Entry::Done {
                outcome,
                expires_at,
            },
        );
        let wake = state.next_deadline().is_none_or(|next| expires_at < next);
        state.outcome_deadlines.push_back((expires_at, id));
        wake
    }

    /// Takes back what the store kept (oldest first): outcomes and nonces
    /// within their time, each until the deadline it had (counted from its
    /// first callback, not from now). A payment has one stored outcome,
    /// unless an earlier one expired from memory (a callback after the TTL)
    /// or was refused but reached the disk anyway: the latest wins, as the
    /// callbacks were answered.
    fn restore(&self, records: Vec<Record>) {
        let limits = self.shared.limits;
        let (now, system_now) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
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
                    let outcome = Arc::new(outcome);
                    let entry = Entry::Done {
                        outcome,
                        expires_at,
                    };
                    if state.payments.insert(id, entry).is_none() {
                        state.recorded_outcomes += 1;
                        outcomes += 1;
                    }
                    state.outcome_deadlines.push_back((expires_at, id));
                }
                Record::Nonce { nonce, .. } => {
                    if state.nonces.insert(nonce.clone(), expires_at).is_none() {
                        state.nonce_deadlines.push_back((expires_at, nonce));
                        nonces += 1;
                    }
                }
            }
        }
        drop(state);
        self.shared.purge_task.notify_one();
        log::info!("store: restored {outcomes} outcomes and {nonces} nonces");
    }

    /// Remembers a signed callback's nonce for the nonce memory, unless it is
    /// remembered already (a replay). With a store, the nonce is made
    /// durable too: wait for the returned [`Stored`] before answering.
    pub fn remember_nonce(&self, nonce: &str) -> (NonceCheck, Stored) {
        let mut state = self.lock();
        if state.nonces.contains_key(nonce) {
            return (NonceCheck::Replayed, Stored::now());
        }
        if state.nonces.len() >= MAX_NONCES {
            return (NonceCheck::Full, Stored::now());
        }
        let expires_at = Instant::now() + self.shared.limits.nonce_memory;
        let wake = state.next_deadline().is_none_or(|next| expires_at < next);
        state.nonces.insert(nonce.to_string(), expires_at);
        state
            .nonce_deadlines
            .push_back((expires_at, nonce.to_string()));
        drop(state);
        self.wake_purge_task_if(wake);
        let Some(store) = self.store() else {
            return (NonceCheck::Fresh, Stored::now());
        };
        let (sender, receiver) = oneshot::channel();
        let record = Record::Nonce {
            nonce: nonce.to_string(),
            seen: SystemTime::now(),
        };
        store.append(record, move |result| {
            let _ = sender.send(result);
        });
        (NonceCheck::Fresh, Stored(Some(receiver)))
    }

    /// Forgets a nonce remembered for a callback that was then not recorded
    /// (answered `503`), so the provider's retry of that request is accepted.
    pub fn forget_nonce(&self, nonce: &str) {
        self.lock().nonces.remove(nonce);
    }

    /// Wakes the purge task when a new deadline is earlier than any it knew.
    fn wake_purge_task_if(&self, earlier: bool) {
        if earlier {
            self.shared.purge_task.notify_one();
        }
    }

    /// Ends every waiting stream (each sees no outcome and closes), refuses new
    /// ones, and stops the purge task.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shutdown = true;
        let mut waiting: Vec<Waiter> = state
            .payments
            .extract_if(|_, entry| matches!(entry, Entry::Waiting(_)))
            .flat_map(|(_, mut entry)| entry.waiters_mut().map(std::mem::take))
            .flatten()
            .collect();
        for entry in state.payments.values_mut() {
            if let Entry::Storing { waiters, .. } = entry {
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

    /// The payments with waiting streams now (a copy, for catching up after
    /// a backplane outage; not for the request path).
    pub fn waiting_payments(&self) -> Vec<PayRecordId> {
        let state = self.lock();
        state
            .payments
            .iter()
            .filter(|(_, entry)| !matches!(entry, Entry::Done { .. }))
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

    /// Forgets one stream: called when its [`Waiting`] is dropped. Its
    /// slot is released here unless its deadline released it already.
    fn forget(&self, id: PayRecordId, waiter: u64, deadline: Instant) {
        let mut state = self.lock();
        let Some((_, transport)) = state.waiter_deadlines.remove(&(deadline, waiter)) else {
            return;
        };
        let (_, idle) = release(&mut state, id, waiter, transport);
        drop(state);
        if idle {
            self.went_idle(id);
        }
    }

    /// Removes the outcomes and nonces whose deadline has passed, and
    /// releases the waiters whose deadline has passed (each is told
    /// [`Wake::Timeout`]); returns the next
    /// deadline, or `None` when there is none. On shutdown, `Err(())`.
    fn purge_expired(&self) -> Result<Option<Instant>, ()> {
        let mut guard = self.lock();
        if guard.shutdown {
            return Err(());
        }
        let now = Instant::now();
        let state = &mut *guard;
        while let Some(&(at, id)) = state.outcome_deadlines.front().filter(|(at, _)| *at <= now) {
            state.outcome_deadlines.pop_front();
            let expired = matches!(state.payments.get(&id),
                Some(Entry::Done { expires_at, .. }) if *expires_at == at);
            if expired {
                state.payments.remove(&id);
                state.recorded_outcomes -= 1;
            }
        }
        while let Some((at, nonce)) = state.nonce_deadlines.front().filter(|(at, _)| *at <= now) {
            // A nonce forgotten and remembered again has a later deadline.
            if state.nonces.get(nonce) == Some(at) {
                state.nonces.remove(nonce);
            }
            state.nonce_deadlines.pop_front();
        }
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        while let Some(entry) = state.waiter_deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, waiter), (id, transport)) = entry.remove_entry();
            let (sender, went_idle) = release(state, id, waiter, transport);
            timed_out.extend(sender);
            if went_idle {
                idle.push(id);
            }
        }
        let next = state.next_deadline();
        drop(guard);
        for sender in timed_out {
            // Its transport may be gone already: nothing to tell then.
            let _ = sender.send(Wake::Timeout);
        }
        for id in idle {
            self.went_idle(id);
        }
        Ok(next)
    }
}

impl Waiting {
    /// Waits for the outcome, the deadline or shutdown, whichever is first.
    pub async fn outcome(&mut self) -> Wake {
        (&mut self.receiver).await.unwrap_or(Wake::Shutdown)
    }

    /// The payment this stream waits for.
    pub fn pay_record_id(&self) -> PayRecordId {
        self.pay_record_id
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.hub
            .forget(self.pay_record_id, self.waiter, self.deadline);
    }
}

/// Frees one waiter's slot and removes its sender from its payment, which
/// it returns (`None` once the outcome took it); true when the payment has
/// no waiter left and nothing else to keep, so it leaves the map.
fn release(
    state: &mut State,
    id: PayRecordId,
    waiter: u64,
    transport: Transport,
) -> (Option<oneshot::Sender<Wake>>, bool) {
    state.open_streams -= 1;
    state.open_by_transport[transport as usize] -= 1;
    let Some(entry) = state.payments.get_mut(&id) else {
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
        state.payments.remove(&id);
    }
    (sender, idle)
}

/// Sends `outcome` to `waiters`; returns how many were still there.
fn notify(waiters: Vec<Waiter>, outcome: &Arc<Outcome>) -> usize {
    waiters
        .into_iter()
        .map(|waiter| waiter.sender.send(Wake::Outcome(outcome.clone())).is_ok())
        .filter(|&sent| sent)
        .count()
}

/// The purge task: one per hub, until shutdown.
async fn purge_expired_outcomes(hub: Hub) {
    while let Ok(next) = hub.purge_expired() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The waiters' deadline in these tests.
    const PUSH_TIMEOUT: Duration = Duration::from_secs(300);
    use crate::model::Status;

    fn hub(max_streams: usize, per_payment: usize) -> Hub {
        Hub::new(Limits {
            max_streams,
            max_streams_per_payment: per_payment,
            outcome_ttl: Duration::from_secs(60),
            nonce_memory: Duration::from_secs(600),
            max_outcomes: 1_000,
            push_timeout: PUSH_TIMEOUT,
        })
    }

    fn id(n: u64) -> PayRecordId {
        PayRecordId::from_u64(n).unwrap()
    }

    fn waiting(sub: Result<Subscription, SubscribeError>) -> Waiting {
        match sub {
            Ok(Subscription::Waiting(w)) => w,
            other => panic!("expected a waiting subscription, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_waiting_stream_gets_the_outcome() {
        let hub = hub(10, 10);
        let mut a = waiting(hub.subscribe(id(1)));
        let mut b = waiting(hub.subscribe(id(1)));
        let completion = hub
            .complete(Outcome::new(id(1), Status::Success))
            .await
            .unwrap();
        assert!(matches!(
            completion,
            Completion::Recorded { notified: 2, .. }
        ));
        assert_eq!(
            a.outcome().await.into_outcome().unwrap().status,
            Status::Success
        );
        assert_eq!(
            b.outcome().await.into_outcome().unwrap().status,
            Status::Success
        );
    }

    #[tokio::test]
    async fn delivered_outcomes_are_kept_only_where_streams_wait() {
        let hub = hub(10, 10);
        let mut a = waiting(hub.subscribe(id(1)));
        assert_eq!(hub.deliver(Outcome::new(id(1), Status::Success)), 1);
        assert_eq!(
            a.outcome().await.into_outcome().unwrap().status,
            Status::Success
        );
        assert_eq!(hub.deliver(Outcome::new(id(2), Status::Success)), 0);
        assert_eq!(hub.stats().recorded_outcomes, 1, "payment 2 is not kept");
    }

    #[tokio::test]
    async fn dropped_streams_leave_nothing_behind() {
        let hub = hub(10, 10);
        for _ in 0..100 {
            drop(waiting(hub.subscribe(id(7))));
        }
        assert_eq!(hub.stats(), Stats::default());
    }

    #[tokio::test]
    async fn first_outcome_wins() {
        let hub = hub(10, 10);
        hub.complete(Outcome::new(id(1), Status::Failed))
            .await
            .unwrap();
        assert!(matches!(
            hub.complete(Outcome::new(id(1), Status::Failed)).await.unwrap(),
            Completion::Duplicate(o) if o.status == Status::Failed
        ));
        assert!(matches!(
            hub.complete(Outcome::new(id(1), Status::Success)).await.unwrap(),
            Completion::Conflict(o) if o.status == Status::Failed
        ));
        assert!(
            matches!(hub.subscribe(id(1)), Ok(Subscription::Recorded(o)) if o.status == Status::Failed)
        );
    }

    #[tokio::test]
    async fn limits_refuse_extra_streams() {
        let hub = hub(3, 2);
        let _a = waiting(hub.subscribe(id(1)));
        let _b = waiting(hub.subscribe(id(1)));
        assert_eq!(
            hub.subscribe(id(1)).unwrap_err(),
            SubscribeError::TooManyStreams
        );
        let _c = waiting(hub.subscribe(id(2)));
        assert_eq!(
            hub.subscribe(id(3)).unwrap_err(),
            SubscribeError::OverCapacity
        );
    }

    #[tokio::test]
    async fn every_transport_counts_against_the_same_limits() {
        let hub = hub(3, 2);
        let _sse = waiting(hub.subscribe_via(id(1), Transport::Sse, PUSH_TIMEOUT));
        let _ws = waiting(hub.subscribe_via(id(1), Transport::Ws, PUSH_TIMEOUT));
        assert_eq!(
            hub.subscribe_via(id(1), Transport::Poll, PUSH_TIMEOUT)
                .unwrap_err(),
            SubscribeError::TooManyStreams
        );
        let poll = waiting(hub.subscribe_via(id(2), Transport::Poll, PUSH_TIMEOUT));
        assert_eq!(hub.stats().open_by_transport, [1, 1, 1]);
        assert_eq!(
            hub.subscribe_via(id(3), Transport::Ws, PUSH_TIMEOUT)
                .unwrap_err(),
            SubscribeError::OverCapacity
        );
        drop(poll);
        assert_eq!(hub.stats().open_by_transport, [1, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_expire_after_the_ttl() {
        let hub = hub(10, 10);
        hub.complete(Outcome::new(id(1), Status::Success))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(hub.stats().recorded_outcomes, 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(hub.stats(), Stats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn nonces_are_remembered_for_their_window_only() {
        let hub = hub(10, 10);
        assert_eq!(hub.remember_nonce("abcdefghijklmnop").0, NonceCheck::Fresh);
        assert_eq!(
            hub.remember_nonce("abcdefghijklmnop").0,
            NonceCheck::Replayed
        );
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(hub.remember_nonce("abcdefghijklmnop").0, NonceCheck::Fresh);
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_streams_and_refuses_new_ones() {
        let hub = hub(10, 10);
        let mut a = waiting(hub.subscribe(id(1)));
        hub.shutdown();
        assert_eq!(a.outcome().await, Wake::Shutdown);
        assert_eq!(
            hub.subscribe(id(2)).unwrap_err(),
            SubscribeError::ShuttingDown
        );
    }

    #[tokio::test]
    async fn new_outcomes_beyond_the_bound_are_refused_and_duplicates_still_answered() {
        let hub = Hub::new(Limits {
            max_outcomes: 2,
            ..hub(10, 10).limits()
        });
        for n in 1..=2 {
            hub.complete(Outcome::new(id(n), Status::Success))
                .await
                .unwrap();
        }
        assert!(matches!(
            hub.complete(Outcome::new(id(3), Status::Success)).await,
            Err(Refusal::Full)
        ));
        assert!(matches!(
            hub.complete(Outcome::new(id(1), Status::Success)).await,
            Ok(Completion::Duplicate(_))
        ));
        assert_eq!(hub.stats().recorded_outcomes, 2);
    }

    #[tokio::test]
    async fn a_stream_waiting_through_a_refusal_stays_registered() {
        let hub = Hub::new(Limits {
            max_outcomes: 0,
            ..hub(10, 10).limits()
        });
        let _a = waiting(hub.subscribe(id(1)));
        assert!(hub
            .complete(Outcome::new(id(1), Status::Success))
            .await
            .is_err());
        assert_eq!(hub.stats().open_streams, 1);
        assert_eq!(hub.waiting_payments(), vec![id(1)]);
    }

    /// A hub whose store writes to a fresh folder (kept alive by the caller).
    fn hub_with_store() -> (Hub, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::store::StoreConfig {
            dir: dir.path().to_path_buf(),
            durability: crate::store::Durability::Disk,
            outcome_ttl: Duration::from_secs(60),
            nonce_memory: Duration::from_secs(600),
        };
        let sync = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s"));
        let (store, replay) = Store::open(config, sync.unwrap()).unwrap();
        assert!(replay.records.is_empty());
        (
            Hub::with_store(hub(10, 10).limits(), store, Vec::new()),
            dir,
        )
    }

    /// Whether the folder's segments hold the outcome of payment `n`.
    fn on_disk(dir: &std::path::Path, n: u64) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let mut record = Vec::new();
            Record::Outcome(Outcome {
                pay_record_id: id(n),
                status: Status::Success,
                completed_at: SystemTime::UNIX_EPOCH,
            })
            .encode(&mut record);
            // The id's bytes, right after the record's 8-byte header and tag.
            let id_bytes = &record[9..17];
            bytes.windows(8).any(|w| w == id_bytes)
        })
    }

    #[tokio::test]
    async fn streams_and_duplicates_see_an_outcome_only_once_it_is_on_disk() {
        let (hub, dir) = hub_with_store();
        let mut stream = waiting(hub.subscribe(id(1)));
        let first = tokio::spawn({
            let hub = hub.clone();
            async move { hub.complete(Outcome::new(id(1), Status::Success)).await }
        });
        let again = tokio::spawn({
            let hub = hub.clone();
            async move { hub.complete(Outcome::new(id(1), Status::Success)).await }
        });
        let again = again.await.unwrap();
        assert!(on_disk(dir.path(), 1), "answered before it was stored");
        let outcome = stream.outcome().await.into_outcome().unwrap();
        assert_eq!(outcome.status, Status::Success);
        let results = [first.await.unwrap(), again];
        let recorded = results
            .iter()
            .filter(|r| matches!(r, Ok(Completion::Recorded { notified: 1, .. })))
            .count();
        let duplicates = results
            .iter()
            .filter(|r| matches!(r, Ok(Completion::Duplicate(_))))
            .count();
        assert_eq!((recorded, duplicates), (1, 1), "{results:?}");
    }

    #[tokio::test]
    async fn a_restored_payment_keeps_its_latest_outcome() {
        let hub = hub(10, 10);
        let at = |seconds_ago: u64, status| {
            Record::Outcome(Outcome {
                pay_record_id: id(1),
                status,
                completed_at: SystemTime::now() - Duration::from_secs(seconds_ago),
            })
        };
        // Oldest first, as the store replays them: a refused outcome that
        // reached the disk anyway, then the one answered 200 after it.
        hub.restore(vec![at(2, Status::Failed), at(1, Status::Success)]);
        assert_eq!(hub.recorded(id(1)).unwrap().status, Status::Success);
        assert_eq!(hub.lock().recorded_outcomes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_released_at_its_deadline_even_if_never_polled() {
        let hub = hub(1, 1);
        let (idle, mut went_idle) = mpsc::unbounded_channel();
        hub.notify_idle(idle);
        // Registered, then never polled: as a stream whose client reads nothing.
        let mut stalled = waiting(hub.subscribe(id(1)));
        assert_eq!(
            hub.subscribe(id(2)).unwrap_err(),
            SubscribeError::OverCapacity
        );
        tokio::time::sleep(PUSH_TIMEOUT + Duration::from_millis(1)).await;
        assert_eq!(
            hub.stats().open_streams,
            0,
            "the slot is free at the deadline"
        );
        assert_eq!(hub.stats().waiting_payments, 0);
        assert_eq!(went_idle.try_recv().ok(), Some(id(1)));
        let _next = waiting(hub.subscribe(id(2)));
        // The stalled transport, polled at last, learns it timed out, and
        // dropping it releases nothing twice.
        assert_eq!(stalled.outcome().await, Wake::Timeout);
        drop(stalled);
        assert_eq!(hub.stats().open_streams, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_wait_ends_first_and_others_keep_waiting() {
        let hub = hub(10, 10);
        let mut long = waiting(hub.subscribe(id(1)));
        let start = Instant::now();
        let poll = hub.subscribe_via(id(1), Transport::Poll, Duration::from_secs(5));
        let mut poll = waiting(poll);
        assert_eq!(poll.outcome().await, Wake::Timeout);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(hub.stats().open_by_transport, [1, 0, 0]);
        hub.complete(Outcome::new(id(1), Status::Success))
            .await
            .unwrap();
        assert!(long.outcome().await.into_outcome().is_some());
    }
}
