//! `GET /status`: the long-poll transport, for clients without
//! `EventSource` (mini-programs, native apps, buffering proxies).
//!
//! One JSON answer: the outcome object (the SSE outcome event's data) when
//! there is one or one arrives within `wait` seconds, else the `PENDING`
//! object. A waiting long-poll is the hub's one [`Waiting`] handle, like a
//! stream: same limits, same wake-up by a callback on any instance, and on
//! shutdown it answers `PENDING` at once (the hub drops its sender).
//!
//! A waiting long-poll's response head goes out at once and its JSON body
//! (chunked) once known, as an SSE stream's events do: the request's routing
//! state is then freed while it waits, which keeps a waiting long-poll
//! cheaper than a waiting stream, and proxies see the answer start.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::HeaderValue;
use warp::reply::{Reply, Response};
use warp::Rejection;

use super::access::authorize;
use crate::app::App;
use crate::backplane::{SubscribeError, Subscription, Transport, Waiting, Wake};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{single, Outcome, PayRecordId, PendingJson};

/// `wait` when the query has none: answer at once.
pub(crate) const DEFAULT_WAIT_SECS: u64 = 0;
/// The longest wait: larger values are treated as this, under the 30-60 s
/// idle limits of proxies and mini-program requests.
pub(crate) const MAX_WAIT_SECS: u64 = 25;

/// `GET /status?payRecordId=123[&wait=25][&token=...]`: the outcome, or
/// `PENDING` once `wait` has passed.
pub(crate) async fn status(query: Vec<(String, String)>, app: App) -> Result<Response, Rejection> {
    let id = authorize(&app, &query)?;
    // Never longer than a stream would wait.
    let wait = parse_wait(&query)?.min(app.config.push_timeout);
    let outcome = if wait.is_zero() {
        app.backplane
            .lookup(id)
            .await
            .map_err(ApiError::unavailable)?
    } else {
        match app.backplane.subscribe(id, Transport::Poll, wait).await {
            Ok(Subscription::Recorded(outcome)) => Some(outcome),
            Ok(Subscription::Waiting(waiting)) => {
                return Ok(waiting_reply(waiting, app.metrics.clone()));
            }
            // Shutting down: answer now, so the client asks another instance.
            Err(SubscribeError::ShuttingDown) => app.backplane.recorded_here(id),
            Err(refused) => return Err(ApiError::refused(refused, id).into()),
        }
    };
    Ok(reply(id, outcome.as_deref()))
}

/// The answer of a registered long-poll: the head now, the JSON once the
/// outcome comes, the wait ends or the hub shuts down.
fn waiting_reply(waiting: Waiting, metrics: Arc<Metrics>) -> Response {
    let id = waiting.pay_record_id();
    let body = stream::once(async move {
        let outcome = long_poll(waiting, &metrics).await;
        Ok::<_, Infallible>(json_bytes(id, outcome.as_deref()))
    });
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The JSON of an answer: the outcome object or the `PENDING` one.
fn json_bytes(id: PayRecordId, outcome: Option<&Outcome>) -> Vec<u8> {
    // Plain strings and numbers: serializing them cannot fail.
    match outcome {
        Some(outcome) => serde_json::to_vec(&outcome.event_json()),
        None => serde_json::to_vec(&PendingJson::new(id)),
    }
    .unwrap_or_default()
}

/// Waits for the outcome until the waiter's deadline (its `wait`, set when
/// it registered); `None` at the deadline or on shutdown. The waiter leaves
/// the hub when this returns, when the client goes away and the answer is
/// dropped, or at its deadline whatever the client does.
pub(crate) async fn long_poll(mut waiting: Waiting, metrics: &Metrics) -> Option<Arc<Outcome>> {
    match waiting.outcome().await {
        Wake::Outcome(outcome) => {
            metrics.delivered(&outcome, Transport::Poll);
            Some(outcome)
        }
        Wake::Timeout => {
            metrics.timed_out(Transport::Poll);
            None
        }
        Wake::Shutdown => None,
    }
}

/// The answer: the outcome object or the `PENDING` one, never cached.
pub(crate) fn reply(id: PayRecordId, outcome: Option<&Outcome>) -> Response {
    let mut response = match outcome {
        Some(outcome) => warp::reply::json(&outcome.event_json()).into_response(),
        None => warp::reply::json(&PendingJson::new(id)).into_response(),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `wait`: whole seconds, absent meaning [`DEFAULT_WAIT_SECS`], above
/// [`MAX_WAIT_SECS`] meaning that; anything else (a sign, a fraction, a
/// word, a repeat) is refused.
fn parse_wait(query: &[(String, String)]) -> Result<Duration, ApiError> {
    const INVALID: ApiError =
        ApiError::InvalidRequest("wait must be given once, as whole seconds from 0 to 25");
    let secs = match single(query, "wait").map_err(|_| INVALID)? {
        None => DEFAULT_WAIT_SECS,
        Some(raw) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            // All digits but too large for a u64 is still "larger than 25".
            raw.parse::<u64>().unwrap_or(MAX_WAIT_SECS)
        }
        Some(_) => return Err(INVALID),
    };
    Ok(Duration::from_secs(secs.min(MAX_WAIT_SECS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(raw: &str) -> Result<Duration, ApiError> {
        parse_wait(&[("wait".to_string(), raw.to_string())])
    }

    #[test]
    fn wait_is_whole_seconds_capped_at_25() {
        assert_eq!(parse_wait(&[]).unwrap(), Duration::ZERO);
        assert_eq!(wait("0").unwrap(), Duration::ZERO);
        assert_eq!(wait("7").unwrap(), Duration::from_secs(7));
        assert_eq!(wait("60").unwrap(), Duration::from_secs(25));
        assert_eq!(
            wait("99999999999999999999999").unwrap(),
            Duration::from_secs(25)
        );
    }

    #[test]
    fn anything_else_is_an_invalid_wait() {
        for raw in ["", "-1", "+1", "1.5", "abc", " 1", "1s"] {
            assert!(wait(raw).is_err(), "{raw:?}");
        }
        let repeated = [
            ("wait".to_string(), "1".to_string()),
            ("wait".to_string(), "1".to_string()),
        ];
        assert!(parse_wait(&repeated).is_err());
    }
}
