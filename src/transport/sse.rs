//! `GET /push`: the Server-Sent Events transport. A subscription becomes
//! its event stream: `retry:` + `event: pending`, keep-alive comments, then
//! exactly one of the outcome (unnamed, with `id:`), `event: timeout`, or a
//! bare end on shutdown.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{future, stream, Stream, StreamExt, TryStream};
use warp::sse::Event;

use warp::http::header::CONNECTION;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Rejection;

use super::access::authorize;
use crate::app::App;
use crate::backplane::{Subscription, Transport, Waiting, Wake};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Outcome, PendingJson};

/// The `retry:` hint: how long EventSource waits before reconnecting.
pub(crate) const RECONNECT_HINT: Duration = Duration::from_secs(3);

/// `GET /push`: the payment's event stream, its recorded outcome, or `204`
/// when the client already has that outcome (`Last-Event-ID`).
pub(crate) async fn push(
    query: Vec<(String, String)>,
    last_event_id: Option<String>,
    app: App,
) -> Result<Response, Rejection> {
    let id = authorize(&app, &query)?;
    let wait = app.config.push_timeout;
    let mut response = match app.backplane.subscribe(id, Transport::Sse, wait).await {
        Ok(Subscription::Recorded(outcome))
            if last_event_id.as_deref() == Some(&outcome.event_id()) =>
        {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Ok(Subscription::Recorded(outcome)) => warp::sse::reply(recorded(outcome)).into_response(),
        Ok(Subscription::Waiting(waiting)) => {
            let config = &app.config;
            let stream = waiting_stream(waiting, config.keep_alive, app.metrics.clone());
            warp::sse::reply(stream).into_response()
        }
        Err(refused) => return Err(ApiError::refused(refused, id).into()),
    };
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // A stream is its HTTP/1.1 connection's last answer: it ends only with
    // the payment's last event, after which the page closes or reconnects.
    // Closing at once spares a wake-up and a read per checkout (waiting for
    // the client's close); HTTP/2, whose streams share a connection, drops
    // the header (hyper strips connection-specific headers there).
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// The stream of a payment that already has an outcome: just the outcome.
fn recorded(
    outcome: Arc<Outcome>,
) -> impl Stream<Item = Result<Event, serde_json::Error>> + Send + 'static {
    stream::once(future::ready(outcome_event(&outcome)))
}

/// The stream of a registered, waiting subscription. Its end comes from
/// the hub (the outcome, the waiter's deadline, or shutdown), so a stream
/// keeps no timer of its own besides the keep-alive.
fn waiting_stream(
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
