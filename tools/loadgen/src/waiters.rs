//! What every waiter (SSE, h2c, long-poll or WebSocket) records: one
//! [`StreamSlot`] per payment in the run's [`Shared`] state, and the few
//! transitions they all use (subscribed, outcome, refused, failed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use tokio::time::Instant;

use crate::sse::SseEvent;

/// What one stream has become; stored in [`StreamSlot::state`].
pub(crate) mod state {
    pub const CONNECTING: u8 = 0;
    pub const READY: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const FAILED: u8 = 3;
    /// Was subscribed, then ended before its outcome.
    pub const ENDED_EARLY: u8 = 4;
    /// Got its outcome (and possibly the end of the stream).
    pub const DONE: u8 = 5;
}

/// What the tasks record about one payment.
#[derive(Default)]
pub(crate) struct StreamSlot {
    pub(crate) state: AtomicU8,
    /// Nanoseconds since the epoch of the run when the callback was written; 0: none.
    pub(crate) sent_at: AtomicU64,
    /// Nanoseconds since the epoch of the run when the outcome was read; 0: none.
    pub(crate) received_at: AtomicU64,
    /// Outcome events seen on the stream (more than 1: duplicates).
    pub(crate) outcomes: AtomicU32,
    /// `event: timeout` seen.
    pub(crate) timeouts: AtomicU32,
}

/// State shared by every task of a run.
pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    pub(crate) id_base: u64,
    pub(crate) streams: Vec<StreamSlot>,
    pub(crate) ready: AtomicUsize,
    pub(crate) refused: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    /// Why streams failed: `step: error kind` -> count.
    pub(crate) failures: std::sync::Mutex<BTreeMap<String, usize>>,
    /// Statuses of refused streams, e.g. 503 (index: status / 100).
    pub(crate) refused_statuses: [AtomicUsize; 6],
    /// Callbacks answered 2xx / otherwise / with a connection error.
    pub(crate) callbacks_ok: AtomicUsize,
    pub(crate) callbacks_rejected: AtomicUsize,
    pub(crate) callbacks_failed: AtomicUsize,
    /// Callback round trips, nanoseconds, one per answered callback.
    pub(crate) round_trips: std::sync::Mutex<Vec<u64>>,
    pub(crate) first_sent: AtomicU64,
    pub(crate) last_answered: AtomicU64,
}

impl Shared {
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// What an event read on a stream does to its slot.
pub(crate) fn on_sse_event(shared: &Shared, slot: &StreamSlot, ready: &mut bool, event: SseEvent) {
    match event {
        SseEvent::Pending => mark_ready(shared, slot, ready),
        SseEvent::Outcome => record_outcome(shared, slot),
        SseEvent::Timeout => {
            slot.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        SseEvent::Other => {}
    }
}

/// The stream's slot, moved to READY once.
pub(crate) fn mark_ready(shared: &Shared, slot: &StreamSlot, ready: &mut bool) {
    if !*ready {
        *ready = true;
        slot.state.store(state::READY, Ordering::Relaxed);
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records the first outcome of a stream (and counts any later one).
pub(crate) fn record_outcome(shared: &Shared, slot: &StreamSlot) {
    if slot.outcomes.fetch_add(1, Ordering::Relaxed) == 0 {
        slot.received_at.store(shared.now(), Ordering::Relaxed);
        slot.state.store(state::DONE, Ordering::Relaxed);
    }
}

/// Records a refused subscription by its status class.
pub(crate) fn refuse(shared: &Shared, slot: &StreamSlot, status: u16) {
    slot.state.store(state::REFUSED, Ordering::Relaxed);
    shared.refused.fetch_add(1, Ordering::Relaxed);
    let class = usize::from(status / 100).min(5);
    shared.refused_statuses[class].fetch_add(1, Ordering::Relaxed);
}

/// Records a stream that could not be subscribed, and why (`step: error kind`).
pub(crate) fn fail(shared: &Shared, slot: &StreamSlot, step: &str, error: &std::io::Error) {
    slot.state.store(state::FAILED, Ordering::Relaxed);
    shared.failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut reasons) = shared.failures.lock() {
        *reasons
            .entry(format!("{step}: {:?}", error.kind()))
            .or_default() += 1;
    }
}

pub(crate) fn count_state(shared: &Shared, wanted: u8) -> usize {
    shared
        .streams
        .iter()
        .filter(|slot| slot.state.load(Ordering::Relaxed) == wanted)
        .count()
}
