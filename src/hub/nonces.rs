//! The nonce memory of signed callbacks: a nonce is remembered for the
//! nonce memory unless it is remembered already (a replay), at most
//! [`MAX_NONCES`] at once; one of a callback that was not recorded is
//! forgotten. Operations on the [`State`] alone.

use tokio::time::Instant;

use super::state::State;
use super::types::{NonceCheck, MAX_NONCES};

impl State {
    /// Remembers `nonce` until `expires_at` unless it is remembered already
    /// or the memory is full; true with `Fresh` when the purge task must be
    /// woken for its deadline.
    pub(super) fn remember_nonce(
        &mut self,
        nonce: &str,
        expires_at: Instant,
    ) -> (NonceCheck, bool) {
        if self.nonces.contains_key(nonce) {
            return (NonceCheck::Replayed, false);
        }
        if self.nonces.len() >= MAX_NONCES {
            return (NonceCheck::Full, false);
        }
        let wake = self.next_deadline().is_none_or(|next| expires_at < next);
        self.nonces.insert(nonce.to_string(), expires_at);
        self.nonce_deadlines
            .push_back((expires_at, nonce.to_string()));
        (NonceCheck::Fresh, wake)
    }

    /// Forgets a nonce (its deadline stays queued and is skipped then).
    pub(super) fn forget_nonce(&mut self, nonce: &str) {
        self.nonces.remove(nonce);
    }
}
