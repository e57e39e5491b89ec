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
//!
//! The handshake is done here rather than by warp's `ws` filter, which
//! cannot size the socket's buffers: tungstenite's default read buffer
//! (128 KiB per socket, filled on the first read) made a waiting socket cost
//! about 17 times a waiting SSE stream. The server moves each upgrade
//! request's hyper `OnUpgrade` into an [`Upgrade`] extension
//! ([`take_upgrade`]), where the `/ws` route can reach it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use warp::http::header::{
    CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use warp::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use warp::reply::{Reply, Response};
use warp::Rejection;

use super::access::authorize;
use crate::app::App;
use crate::backplane::{Subscription, Transport, Waiting, Wake};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Outcome, PendingJson};

/// The largest client message ignored; a larger one closes with `1009`.
pub(crate) const MAX_CLIENT_MESSAGE_BYTES: usize = 1024;
/// What the WebSocket library buffers of one client message at most: a
/// bound on memory, above which the socket also closes with `1009`.
const MAX_READ_BYTES: usize = 64 * 1024;
/// The socket's read buffer: the server only reads small messages (and
/// drops them), so a waiting socket keeps this little.
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// How long the server waits for the client's answer to its close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one frame may take to write: a client that reads nothing (and
/// floods pings, whose pongs then queue) is dropped after it, instead of
/// holding the socket's task for ever.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The only WebSocket version there is (RFC 6455).
const WEBSOCKET_VERSION: &[u8] = b"13";

/// Close code: the socket did its job (outcome or timeout).
pub(crate) const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a client message over [`MAX_CLIENT_MESSAGE_BYTES`].
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;

/// How the server closes a socket: code and reason.
type Close = (u16, &'static str);

/// A server-side socket over a hyper upgrade.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The upgrade of a request that asked for one, moved out of the request's
/// extensions by [`take_upgrade`] (hyper's `OnUpgrade` is not `Clone`, which
/// warp's extension filter needs); the `/ws` handler takes it once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Upgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl Upgrade {
    fn take(&self) -> Option<OnUpgrade> {
        // Nothing can panic while this lock is held; a poisoned one is fine.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// For the server's service stack: moves the `OnUpgrade` of a request with
/// an `Upgrade` header into an [`Upgrade`] extension; other requests pass
/// untouched.
pub(crate) fn take_upgrade<B>(mut request: Request<B>) -> Request<B> {
    if request.headers().contains_key(UPGRADE) {
        if let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() {
            let slot = Upgrade(Arc::new(Mutex::new(Some(on_upgrade))));
            request.extensions_mut().insert(slot);
        }
    }
    request
}

/// `GET /ws?payRecordId=123[&token=...]`: refuses before the upgrade, then
/// hands the registered waiter (or the recorded outcome) to the socket.
pub(crate) async fn upgrade(
    query: Vec<(String, String)>,
    headers: HeaderMap,
    upgrade: Option<Upgrade>,
    app: App,
) -> Result<Response, Rejection> {
    let id = authorize(&app, &query)?;
    if let Some(origin) = headers.get(ORIGIN) {
        // An Origin that is not plain ASCII is no browser's: refused too.
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| origin_allowed(origin, header(&headers, HOST), &app));
        if !allowed {
            return Err(ApiError::ForbiddenOrigin.into());
        }
    }
    let (accept, on_upgrade) = handshake(&headers, upgrade).ok_or(ApiError::InvalidRequest(
        "GET /ws needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
    ))?;
    let subscription = app
        .backplane
        .subscribe(id, Transport::Ws, app.config.push_timeout)
        .await
        .map_err(|refused| ApiError::refused(refused, id))?;
    let keep_alive = app.config.keep_alive;
    let metrics = app.metrics.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let socket =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
                serve(socket, subscription, keep_alive, metrics).await;
            }
            // The client left before the 101 was written; dropping
            // `subscription` makes the hub forget the waiter.
            Err(e) => log::debug!("ws {id}: the upgrade failed: {e}"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    response_headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

/// A header's value, when it is visible ASCII.
fn header(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The answer's `Sec-WebSocket-Accept` and the connection's upgrade, when
/// the request is a WebSocket opening handshake (RFC 6455, version 13).
fn handshake(headers: &HeaderMap, upgrade: Option<Upgrade>) -> Option<(HeaderValue, OnUpgrade)> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version = headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes);
    if !has_token(CONNECTION, "upgrade")
        || !has_token(UPGRADE, "websocket")
        || version != Some(WEBSOCKET_VERSION)
    {
        return None;
    }
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()?;
    Some((accept, upgrade?.take()?))
}

/// The socket's settings: small buffers (see the module docs), each frame
/// written at once, client messages bounded.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_READ_BYTES))
        .max_frame_size(Some(MAX_READ_BYTES))
}

/// Whether a browser page of `origin` may open a socket: the server's own
/// origin (same host and port as the request's `Host`, whatever the scheme
/// in front of a proxy, or the origin of `--public-url`) or an
/// `--allow-origin` one.
fn origin_allowed(origin: &str, host: Option<&str>, app: &App) -> bool {
    if app
        .config
        .allow_origin
        .iter()
        .any(|allowed| allowed == origin)
    {
        return true;
    }
    let public = app.config.public_url.as_deref().map(origin_of);
    if public.is_some_and(|public| public.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host))
}

/// The origin of a URL: `https://pay.example.com/checkout` gives
/// `https://pay.example.com`.
fn origin_of(url: &str) -> &str {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    match url[authority_start..].find('/') {
        Some(path) => &url[..authority_start + path],
        None => url,
    }
}

/// One socket's life after the `101`.
async fn serve(
    socket: Socket,
    subscription: Subscription,
    keep_alive: Duration,
    metrics: Arc<Metrics>,
) {
    let (mut sink, mut stream) = socket.split();
    let closed = match subscription {
        Subscription::Recorded(outcome) => {
            send(&mut sink, outcome_frame(&outcome)).await.is_some()
                && close(&mut sink, (CLOSE_NORMAL, "outcome")).await
        }
        Subscription::Waiting(mut waiting) => {
            let how = watch(&mut sink, &mut stream, &mut waiting, keep_alive, &metrics).await;
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
async fn close(sink: &mut SplitSink<Socket, Message>, (code, reason): Close) -> bool {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    send(sink, Message::Close(Some(frame))).await.is_some()
}

/// Sends `PENDING`, pings while waiting, and returns how to close: after the
/// outcome (sent here), at the timeout, on shutdown, or on a too-big client
/// message. `None` when the client went away or closed first.
async fn watch(
    sink: &mut SplitSink<Socket, Message>,
    stream: &mut SplitStream<Socket>,
    waiting: &mut Waiting,
    keep_alive: Duration,
    metrics: &Metrics,
) -> Option<Close> {
    send(sink, text(&PendingJson::new(waiting.pay_record_id()))).await?;
    let start = tokio::time::Instant::now() + keep_alive;
    let mut pings = tokio::time::interval_at(start, keep_alive);
    loop {
        tokio::select! {
            wake = waiting.outcome() => {
                return match wake {
                    Wake::Outcome(outcome) => {
                        metrics.delivered(&outcome, Transport::Ws);
                        send(sink, outcome_frame(&outcome)).await?;
                        Some((CLOSE_NORMAL, "outcome"))
                    }
                    Wake::Timeout => {
                        metrics.timed_out(Transport::Ws);
                        Some((CLOSE_NORMAL, "timeout"))
                    }
                    Wake::Shutdown => Some((CLOSE_GOING_AWAY, "shutdown")),
                };
            }
            _ = pings.tick() => send(sink, Message::Ping(Bytes::new())).await?,
            message = stream.next() => match message {
                Some(Ok(message)) if message.is_close() => {
                    // tungstenite queued the answer; closing the sink sends it.
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
                    return None;
                }
                Some(Ok(message)) if message.len() > MAX_CLIENT_MESSAGE_BYTES => {
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
fn is_too_big(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Capacity(_))
}

/// Writes one message; `None` when the client is gone or has not taken it
/// within [`WRITE_TIMEOUT`].
async fn send(sink: &mut SplitSink<Socket, Message>, message: Message) -> Option<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
        Ok(sent) => sent.ok(),
        Err(_) => {
            log::debug!("ws: a frame was not taken within {WRITE_TIMEOUT:?}; dropping the socket");
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_of_a_url_drops_its_path() {
        assert_eq!(
            origin_of("https://pay.example.com"),
            "https://pay.example.com"
        );
        assert_eq!(
            origin_of("https://pay.example.com:8443/checkout/x"),
            "https://pay.example.com:8443"
        );
    }
}
