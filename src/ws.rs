//! `GET /ws`: the WebSocket transport, for clients whose realtime API is a
//! WebSocket (`wx.connectSocket`, `my.connectSocket`, React Native, apps).
//!
//! Every refusal (bad id, token, origin, limits) happens before the `101`,
//! as the same JSON errors as `/push`. After it, the server writes text
//! frames holding the same JSON objects as the SSE events: the `PENDING`
//! object once the waiter is registered, then the outcome, then a close
//! `1000 outcome`. The hub's one [`Waiting`] handle drives it, so a waiting
//! socket shares the streams' limits and shutdown: `1000 timeout` at the
//! push timeout, `1001` when the hub shuts down. The server pings every
//! keep-alive interval and ignores what the client sends, up to
//! [`MAX_CLIENT_MESSAGE_BYTES`] (`1009` above).

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use warp::reply::{Reply, Response};
use warp::ws::{Message, WebSocket, Ws};
use warp::Rejection;

use crate::app::App;
use crate::error::ApiError;
use crate::handlers::{authorize, subscribe};
use crate::hub::{Subscription, Transport, Waiting};
use crate::metrics::Metrics;
use crate::model::{Outcome, PendingJson};

/// The largest client message ignored; a larger one closes with `1009`.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 1024;
/// What the WebSocket library buffers of one client message at most: a
/// bound on memory, above which the socket also closes with `1009`.
const MAX_READ_BYTES: usize = 64 * 1024;
/// How long the server waits for the client's answer to its close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close code: the socket did its job (outcome or timeout).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a client message over [`MAX_CLIENT_MESSAGE_BYTES`].
pub const CLOSE_TOO_BIG: u16 = 1009;

/// How the server closes a socket: code and reason.
type Close = (u16, &'static str);

/// What a socket needs of the configuration.
#[derive(Debug, Clone, Copy)]
struct Timing {
    push_timeout: Duration,
    keep_alive: Duration,
}

/// `GET /ws?payRecordId=123[&token=...]`: refuses before the upgrade, then
/// hands the registered waiter (or the recorded outcome) to the socket.
pub async fn upgrade(
    query: Vec<(String, String)>,
    origin: Option<String>,
    host: Option<String>,
    ws: Option<Ws>,
    app: App,
) -> Result<Response, Rejection> {
    let id = authorize(&app, &query)?;
    if let Some(origin) = origin {
        if !origin_allowed(&origin, host.as_deref(), &app.config.allow_origin) {
            return Err(ApiError::ForbiddenOrigin.into());
        }
    }
    let ws = ws.ok_or(ApiError::InvalidRequest(
        "GET /ws needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
    ))?;
    let subscription = subscribe(&app, id, Transport::Ws)
        .await
        .map_err(|refused| ApiError::refused(refused, id))?;
    let timing = Timing {
        push_timeout: app.config.push_timeout,
        keep_alive: app.config.keep_alive,
    };
    let metrics = app.metrics.clone();
    Ok(ws
        .max_message_size(MAX_READ_BYTES)
        .max_frame_size(MAX_READ_BYTES)
        .on_upgrade(move |socket| serve(socket, subscription, timing, metrics))
        .into_response())
}

/// Whether a browser page of `origin` may open a socket: the server's own
/// origin (same host and port as the request's `Host`, whatever the scheme
/// in front of a proxy) or an `--allow-origin` one.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.iter().any(|allowed| allowed == origin) {
        return true;
    }
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host))
}

/// One socket's life after the `101`.
async fn serve(
    socket: WebSocket,
    subscription: Subscription,
    timing: Timing,
    metrics: Arc<Metrics>,
) {
    let (mut sink, mut stream) = socket.split();
    let closed = match subscription {
        Subscription::Recorded(outcome) => {
            send(&mut sink, outcome_frame(&outcome)).await.is_some()
                && close(&mut sink, (CLOSE_NORMAL, "outcome")).await
        }
        Subscription::Waiting(mut waiting) => {
            let how = watch(&mut sink, &mut stream, &mut waiting, timing, &metrics).await;
            let closed = match how {
                Some(how) => close(&mut sink, how).await,
                None => false,
            };
            // The hub forgets the waiter only once its close frame is out,
            // so shutdown can wait for every socket's 1001.
            drop(waiting);
            closed
        }
    };
    if closed {
        // Let the client answer the close frame, then drop the connection.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            while let Some(Ok(message)) = stream.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Sends the close frame; false when the client is gone.
async fn close(sink: &mut SplitSink<WebSocket, Message>, (code, reason): Close) -> bool {
    send(sink, Message::close_with(code, reason))
        .await
        .is_some()
}

/// Sends `PENDING`, pings while waiting, and returns how to close: after the
/// outcome (sent here), at the timeout, on shutdown, or on a too-big client
/// message. `None` when the client went away or closed first.
async fn watch(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    waiting: &mut Waiting,
    timing: Timing,
    metrics: &Metrics,
) -> Option<Close> {
    send(sink, text(&PendingJson::new(waiting.pay_record_id()))).await?;
    let timeout = tokio::time::sleep(timing.push_timeout);
    tokio::pin!(timeout);
    let start = tokio::time::Instant::now() + timing.keep_alive;
    let mut pings = tokio::time::interval_at(start, timing.keep_alive);
    loop {
        tokio::select! {
            outcome = waiting.outcome() => {
                return match outcome {
                    Some(outcome) => {
                        metrics.delivered(&outcome, Transport::Ws);
                        send(sink, outcome_frame(&outcome)).await?;
                        Some((CLOSE_NORMAL, "outcome"))
                    }
                    None => Some((CLOSE_GOING_AWAY, "shutdown")),
                };
            }
            _ = &mut timeout => {
                metrics.timed_out(Transport::Ws);
                return Some((CLOSE_NORMAL, "timeout"));
            }
            _ = pings.tick() => send(sink, Message::ping(Bytes::new())).await?,
            message = stream.next() => match message {
                Some(Ok(message)) if message.is_close() => {
                    // tungstenite queued the answer; closing the sink sends it.
                    let _ = sink.close().await;
                    return None;
                }
                Some(Ok(message)) if message.as_bytes().len() > MAX_CLIENT_MESSAGE_BYTES => {
                    return Some((CLOSE_TOO_BIG, "message too big"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) if is_too_big(&e) => return Some((CLOSE_TOO_BIG, "message too big")),
                Some(Err(e)) => {
                    log::debug!("ws {}: {e}", waiting.pay_record_id());
                    return None;
                }
                None => return None,
            },
        }
    }
}

/// Whether a read failed because the client's message was over the
/// library's bound.
fn is_too_big(error: &warp::Error) -> bool {
    matches!(
        error
            .source()
            .and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Writes one message; `None` when the client is gone.
async fn send(sink: &mut SplitSink<WebSocket, Message>, message: Message) -> Option<()> {
    sink.send(message).await.ok()
}

/// A text frame holding `value` as JSON.
fn text(value: &impl serde::Serialize) -> Message {
    // These shapes are plain strings and numbers: serializing cannot fail.
    Message::text(serde_json::to_string(value).unwrap_or_default())
}

/// The outcome frame: exactly the SSE outcome event's data.
fn outcome_frame(outcome: &Outcome) -> Message {
    text(&outcome.event_json())
}
