//! Turns a subscription into its Server-Sent Events stream:
//! `retry:` + `event: pending`, keep-alive comments, then exactly one of the
//! outcome (unnamed, with `id:`), `event: timeout`, or a bare end on shutdown.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{future, stream, Stream, StreamExt, TryStream};
use warp::sse::Event;

use crate::hub::{Transport, Waiting, Wake};
use crate::metrics::Metrics;
use crate::model::{Outcome, PendingJson};

/// The `retry:` hint: how long EventSource waits before reconnecting.
pub const RECONNECT_HINT: Duration = Duration::from_secs(3);

/// The stream of a payment that already has an outcome: just the outcome.
pub fn recorded(
    outcome: Arc<Outcome>,
) -> impl Stream<Item = Result<Event, serde_json::Error>> + Send + 'static {
    stream::once(future::ready(outcome_event(&outcome)))
}

/// The stream of a registered, waiting subscription. Its end comes from
/// the hub (the outcome, the waiter's deadline, or shutdown), so a stream
/// keeps no timer of its own besides the keep-alive.
pub fn waiting(
    mut waiting: Waiting,
    keep_alive: Duration,
    metrics: Arc<Metrics>,
) -> impl TryStream<Ok = Event, Error = impl StdError + Send + Sync + 'static> + Send + 'static {
    let id = waiting.pay_record_id();
    let pending = Event::default()
        .retry(RECONNECT_HINT)
        .event("pending")
        .json_data(PendingJson::new(id));
    let end = stream::once(async move {
        match waiting.outcome().await {
            Wake::Outcome(outcome) => {
                metrics.delivered(&outcome, Transport::Sse);
                Some(outcome_event(&outcome))
            }
            Wake::Timeout => {
                metrics.timed_out(Transport::Sse);
                Some(
                    Event::default()
                        .event("timeout")
                        .json_data(PendingJson::new(id)),
                )
            }
            Wake::Shutdown => None,
        }
        // `waiting` is dropped here, so the hub forgets this stream before
        // the last event is even written.
    })
    .filter_map(future::ready);
    warp::sse::keep_alive()
        .interval(keep_alive)
        .stream(stream::once(future::ready(pending)).chain(end))
}

fn outcome_event(outcome: &Outcome) -> Result<Event, serde_json::Error> {
    Event::default()
        .id(outcome.event_id())
        .json_data(outcome.event_json())
}
