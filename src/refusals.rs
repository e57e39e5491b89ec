//! Logging of refused requests, at most one line per second per kind.
//!
//! Every refusal (a bad signature, a wrong token, a full payment, ...) is
//! worth a WARN line, but one line per request lets a flood of bad requests
//! flood the log too (5 000 bad signatures once wrote 5 000 lines in half a
//! second). So the first refusal of a kind (its error code) is logged at
//! once, and the refusals of that kind in the following second are only
//! counted: one summary line with their number (and the last one's message)
//! comes when the second is over, and the next second counts again. A
//! sustained flood thus writes one line per second per kind, and every
//! refusal is accounted for.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// At most one line per kind of refusal in this time.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The refusals of one kind since its last line.
#[derive(Debug)]
struct Window {
    /// When the last line of this kind was written.
    logged_at: Instant,
    /// Refusals counted but not yet written.
    unlogged: u64,
    /// The message of the last of them.
    last_message: String,
}

/// Every kind's window, by error code. A `BTreeMap` (constant to build, so
/// a plain `static`); a handful of codes; nothing awaits under the lock.
static WINDOWS: Mutex<BTreeMap<&'static str, Window>> = Mutex::new(BTreeMap::new());

fn windows() -> MutexGuard<'static, BTreeMap<&'static str, Window>> {
    // A panic elsewhere while holding it leaves counters that are still usable.
    WINDOWS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs the refusal `code` with `message`, or counts it when a line of that
/// kind was written less than [`LOG_INTERVAL`] ago. The summary of counted
/// refusals is written by a timer task on the current tokio runtime.
pub(crate) fn refused(code: &'static str, message: String) {
    let now = Instant::now();
    let mut windows = windows();
    match windows.get_mut(code) {
        Some(window) if now < window.logged_at + LOG_INTERVAL => {
            window.unlogged += 1;
            window.last_message = message;
            if window.unlogged == 1 {
                let at = window.logged_at + LOG_INTERVAL;
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(write_summary(code, at))),
                    // No runtime to wait on: the next line of this kind
                    // reports the count instead.
                    Err(_) => log::debug!("refused: {code}: no runtime for the summary"),
                }
            }
        }
        _ => {
            // Refusals counted just before, whose summary timer has not run yet.
            let earlier = windows
                .insert(
                    code,
                    Window {
                        logged_at: now,
                        unlogged: 0,
                        last_message: String::new(),
                    },
                )
                .map_or(0, |window| window.unlogged);
            drop(windows);
            if earlier == 0 {
                log::warn!("refused: {code} ({message})");
            } else {
                log::warn!(
                    "refused: {code} ({message}), and {earlier} more before it, not logged one by one"
                );
            }
        }
    }
}

/// At `at`, writes how many refusals of `code` were counted since its last
/// line, and starts the next window.
async fn write_summary(code: &'static str, at: Instant) {
    tokio::time::sleep_until(at).await;
    let summary = {
        let mut windows = windows();
        windows.get_mut(code).and_then(|window| {
            // A timer that ran late, after a refusal past its window logged
            // a line itself and started the next window, is stale: that
            // window has its own timer.
            if window.unlogged == 0 || window.logged_at + LOG_INTERVAL != at {
                return None;
            }
            window.logged_at = Instant::now();
            let unlogged = std::mem::take(&mut window.unlogged);
            Some((unlogged, std::mem::take(&mut window.last_message)))
        })
    };
    if let Some((unlogged, last_message)) = summary {
        log::warn!(
            "refused: {code}, {unlogged} more in the last second, not logged one by one \
             (the last: {last_message})"
        );
    }
}
