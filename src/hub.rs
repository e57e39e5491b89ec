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
//! The lock is a `std::sync::Mutex`: nothing awaits while holding it, and it is
//! held for map operations only, released before any sender fires.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::model::{Outcome, PayRecordId};

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
    /// Outcomes remembered now.
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
        outcome.into_iter().chain(nonce).min()
    }
}

#[derive(Debug)]
enum Entry {
    Waiting(Vec<Waiter>),
    Done {
        outcome: Arc<Outcome>,
        expires_at: Instant,
    },
}

impl Entry {
    /// The senders of a waiting entry; none for a done one.
    fn into_waiters(self) -> Vec<Waiter> {
        match self {
            Entry::Waiting(waiters) => waiters,
            Entry::Done { .. } => Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    sender: oneshot::Sender<Arc<Outcome>>,
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
/// its sender from the hub at once.
#[derive(Debug)]
pub struct Waiting {
    receiver: oneshot::Receiver<Arc<Outcome>>,
    hub: Hub,
    pay_record_id: PayRecordId,
    waiter: u64,
    transport: Transport,
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
}

impl Hub {
    /// Creates a hub and spawns its purge task; must run inside a tokio runtime.
    pub fn new(limits: Limits) -> Hub {
        let hub = Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                purge_task: Notify::new(),
                closed: watch::Sender::new(false),
                limits,
            }),
        };
        tokio::spawn(purge_expired_outcomes(hub.clone()));
        hub
    }

    /// The hub's bounds.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Registers an SSE stream for `id`, or returns its recorded outcome.
    pub fn subscribe(&self, id: PayRecordId) -> Result<Subscription, SubscribeError> {
        self.subscribe_via(id, Transport::Sse)
    }

    /// Registers a waiter of this transport for `id`, or returns its recorded
    /// outcome. Every transport shares the same limits.
    pub fn subscribe_via(
        &self,
        id: PayRecordId,
        transport: Transport,
    ) -> Result<Subscription, SubscribeError> {
        let limits = self.shared.limits;
        let mut state = self.lock();
        if state.shutdown {
            return Err(SubscribeError::ShuttingDown);
        }
        match state.payments.get(&id) {
            Some(Entry::Done { outcome, .. }) => {
                return Ok(Subscription::Recorded(outcome.clone()))
            }
            Some(Entry::Waiting(waiters)) if waiters.len() >= limits.max_streams_per_payment => {
                return Err(SubscribeError::TooManyStreams);
            }
            _ => {}
        }
        if state.open_streams >= limits.max_streams {
            return Err(SubscribeError::OverCapacity);
        }
        let waiter = state.next_waiter;
        state.next_waiter += 1;
        state.open_streams += 1;
        state.open_by_transport[transport as usize] += 1;
        let (sender, receiver) = oneshot::channel();
        if let Entry::Waiting(waiters) = state
            .payments
            .entry(id)
            .or_insert_with(|| Entry::Waiting(Vec::new()))
        {
            waiters.push(Waiter { id: waiter, sender });
        }
        Ok(Subscription::Waiting(Waiting {
            receiver,
            hub: self.clone(),
            pay_record_id: id,
            waiter,
            transport,
        }))
    }

    /// The outcome recorded here for `id`, if any, without registering
    /// anything (so without counting against any limit).
    pub fn recorded(&self, id: PayRecordId) -> Option<Arc<Outcome>> {
        match self.lock().payments.get(&id) {
            Some(Entry::Done { outcome, .. }) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Records `outcome` unless its payment has one, then sends it to every
    /// waiting stream of the payment. First outcome wins.
    pub fn complete(&self, outcome: Outcome) -> Completion {
        self.settle(outcome, true)
    }

    /// Hands an outcome recorded elsewhere (another instance, via Redis) to
    /// the streams waiting here, and remembers it only if any waits: an
    /// instance does not keep every outcome of the cluster. Returns how many
    /// streams it reached.
    pub fn deliver(&self, outcome: Outcome) -> usize {
        match self.settle(outcome, false) {
            Completion::Recorded { notified, .. } => notified,
            Completion::Duplicate(_) | Completion::Conflict(_) => 0,
        }
    }

    /// `complete` and `deliver`: with `remember_unwatched` false, an outcome
    /// nobody waits for is not kept (and reported as reaching no stream).
    fn settle(&self, outcome: Outcome, remember_unwatched: bool) -> Completion {
        let id = outcome.pay_record_id;
        let outcome = Arc::new(outcome);
        let mut state = self.lock();
        let expires_at = Instant::now() + self.shared.limits.outcome_ttl;
        let done = Entry::Done {
            outcome: outcome.clone(),
            expires_at,
        };
        let waiters = match state.payments.get_mut(&id) {
            Some(Entry::Done {
                outcome: recorded, ..
            }) => {
                return if recorded.status == outcome.status {
                    Completion::Duplicate(recorded.clone())
                } else {
                    Completion::Conflict(recorded.clone())
                };
            }
            Some(entry) => std::mem::replace(entry, done).into_waiters(),
            None if !remember_unwatched => {
                return Completion::Recorded {
                    outcome,
                    notified: 0,
                }
            }
            None => {
                state.payments.insert(id, done);
                Vec::new()
            }
        };
        state.recorded_outcomes += 1;
        let wake = state.next_deadline().is_none_or(|next| expires_at < next);
        state.outcome_deadlines.push_back((expires_at, id));
        drop(state);
        self.wake_purge_task_if(wake);
        let notified = waiters
            .into_iter()
            .map(|waiter| waiter.sender.send(outcome.clone()).is_ok())
            .filter(|&sent| sent)
            .count();
        Completion::Recorded { outcome, notified }
    }

    /// Remembers a signed callback's nonce for the nonce memory, unless it is
    /// remembered already (a replay).
    pub fn remember_nonce(&self, nonce: &str) -> NonceCheck {
        let mut state = self.lock();
        if state.nonces.contains_key(nonce) {
            return NonceCheck::Replayed;
        }
        if state.nonces.len() >= MAX_NONCES {
            return NonceCheck::Full;
        }
        let expires_at = Instant::now() + self.shared.limits.nonce_memory;
        let wake = state.next_deadline().is_none_or(|next| expires_at < next);
        state.nonces.insert(nonce.to_string(), expires_at);
        state
            .nonce_deadlines
            .push_back((expires_at, nonce.to_string()));
        drop(state);
        self.wake_purge_task_if(wake);
        NonceCheck::Fresh
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
        let waiting: Vec<Entry> = state
            .payments
            .extract_if(|_, entry| matches!(entry, Entry::Waiting(_)))
            .map(|(_, entry)| entry)
            .collect();
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
            .filter(|(_, entry)| matches!(entry, Entry::Waiting(_)))
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

    /// Forgets one stream: called when its [`Waiting`] is dropped.
    fn forget(&self, id: PayRecordId, waiter: u64, transport: Transport) {
        let mut state = self.lock();
        state.open_streams -= 1;
        state.open_by_transport[transport as usize] -= 1;
        if let Some(Entry::Waiting(waiters)) = state.payments.get_mut(&id) {
            waiters.retain(|w| w.id != waiter);
            if waiters.is_empty() {
                state.payments.remove(&id);
            }
        }
    }

    /// Removes the outcomes and nonces whose deadline has passed; returns the next
    /// deadline, or `None` when there is none. On shutdown, `Err(())`.
    fn purge_expired(&self) -> Result<Option<Instant>, ()> {
        let mut state = self.lock();
        if state.shutdown {
            return Err(());
        }
        let now = Instant::now();
        let state = &mut *state;
        while let Some(&(at, id)) = state.outcome_deadlines.front().filter(|(at, _)| *at <= now) {
            state.outcome_deadlines.pop_front();
            let expired = matches!(state.payments.get(&id),
                Some(Entry::Done { expires_at, .. }) if *expires_at == at);
            if expired {
                state.payments.remove(&id);
                state.recorded_outcomes -= 1;
            }
        }
        while let Some((_, nonce)) = state.nonce_deadlines.front().filter(|(at, _)| *at <= now) {
            state.nonces.remove(nonce);
            state.nonce_deadlines.pop_front();
        }
        Ok(state.next_deadline())
    }
}

impl Waiting {
    /// Waits for the outcome; `None` when the hub shut down first.
    pub async fn outcome(&mut self) -> Option<Arc<Outcome>> {
        (&mut self.receiver).await.ok()
    }

    /// The payment this stream waits for.
    pub fn pay_record_id(&self) -> PayRecordId {
        self.pay_record_id
    }

    /// How this waiter waits.
    pub fn transport(&self) -> Transport {
        self.transport
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.hub
            .forget(self.pay_record_id, self.waiter, self.transport);
    }
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
    use crate::model::Status;

    fn hub(max_streams: usize, per_payment: usize) -> Hub {
        Hub::new(Limits {
            max_streams,
            max_streams_per_payment: per_payment,
            outcome_ttl: Duration::from_secs(60),
            nonce_memory: Duration::from_secs(600),
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
        let completion = hub.complete(Outcome::new(id(1), Status::Success));
        assert!(matches!(
            completion,
            Completion::Recorded { notified: 2, .. }
        ));
        assert_eq!(a.outcome().await.unwrap().status, Status::Success);
        assert_eq!(b.outcome().await.unwrap().status, Status::Success);
    }

    #[tokio::test]
    async fn delivered_outcomes_are_kept_only_where_streams_wait() {
        let hub = hub(10, 10);
        let mut a = waiting(hub.subscribe(id(1)));
        assert_eq!(hub.deliver(Outcome::new(id(1), Status::Success)), 1);
        assert_eq!(a.outcome().await.unwrap().status, Status::Success);
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
        hub.complete(Outcome::new(id(1), Status::Failed));
        assert!(matches!(
            hub.complete(Outcome::new(id(1), Status::Failed)),
            Completion::Duplicate(o) if o.status == Status::Failed
        ));
        assert!(matches!(
            hub.complete(Outcome::new(id(1), Status::Success)),
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
        let _sse = waiting(hub.subscribe_via(id(1), Transport::Sse));
        let _ws = waiting(hub.subscribe_via(id(1), Transport::Ws));
        assert_eq!(
            hub.subscribe_via(id(1), Transport::Poll).unwrap_err(),
            SubscribeError::TooManyStreams
        );
        let poll = waiting(hub.subscribe_via(id(2), Transport::Poll));
        assert_eq!(hub.stats().open_by_transport, [1, 1, 1]);
        assert_eq!(
            hub.subscribe_via(id(3), Transport::Ws).unwrap_err(),
            SubscribeError::OverCapacity
        );
        drop(poll);
        assert_eq!(hub.stats().open_by_transport, [1, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_expire_after_the_ttl() {
        let hub = hub(10, 10);
        hub.complete(Outcome::new(id(1), Status::Success));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(hub.stats().recorded_outcomes, 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(hub.stats(), Stats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn nonces_are_remembered_for_their_window_only() {
        let hub = hub(10, 10);
        assert_eq!(hub.remember_nonce("abcdefghijklmnop"), NonceCheck::Fresh);
        assert_eq!(hub.remember_nonce("abcdefghijklmnop"), NonceCheck::Replayed);
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(hub.remember_nonce("abcdefghijklmnop"), NonceCheck::Fresh);
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_streams_and_refuses_new_ones() {
        let hub = hub(10, 10);
        let mut a = waiting(hub.subscribe(id(1)));
        hub.shutdown();
        assert!(a.outcome().await.is_none());
        assert_eq!(
            hub.subscribe(id(2)).unwrap_err(),
            SubscribeError::ShuttingDown
        );
    }
}
