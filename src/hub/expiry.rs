//! Deadlines: outcomes and nonces leave at theirs, and waiters are released
//! at theirs (each told [`Wake::Timeout`] by the hub once the lock is let
//! go). Operations on the [`State`] alone; the purge task that calls them
//! lives with the hub handle.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::state::{Entry, State};
use super::types::Wake;
use crate::model::PayRecordId;

/// What passed its deadline, to be told outside the lock.
#[derive(Default)]
pub(super) struct Expired {
    /// Senders of the waiters released: tell each [`Wake::Timeout`].
    pub(super) timed_out: Vec<oneshot::Sender<Wake>>,
    /// Payments left without a waiter.
    pub(super) idle: Vec<PayRecordId>,
}

impl State {
    /// Removes the outcomes and nonces whose deadline is at or before
    /// `now`, and releases the waiters whose deadline is.
    pub(super) fn expire(&mut self, now: Instant) -> Expired {
        while let Some(&(at, id)) = self.outcome_deadlines.front().filter(|(at, _)| *at <= now) {
            self.outcome_deadlines.pop_front();
            // A payment decided again after it expired has a later deadline.
            let expired = matches!(self.payments.get(&id),
                Some(Entry::Done { expires_at, .. }) if *expires_at == at);
            if expired {
                self.payments.remove(&id);
                self.recorded_outcomes -= 1;
            }
        }
        while let Some((at, nonce)) = self.nonce_deadlines.front().filter(|(at, _)| *at <= now) {
            // A nonce forgotten and remembered again has a later deadline.
            if self.nonces.get(nonce) == Some(at) {
                self.nonces.remove(nonce);
            }
            self.nonce_deadlines.pop_front();
        }
        let mut expired = Expired::default();
        while let Some(entry) = self.waiter_deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, waiter), (id, transport)) = entry.remove_entry();
            let (sender, went_idle) = self.release(id, waiter, transport);
            expired.timed_out.extend(sender);
            if went_idle {
                expired.idle.push(id);
            }
        }
        expired
    }
}
