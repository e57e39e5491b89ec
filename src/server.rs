//! The HTTP server loop.
//!
//! warp's own `serve` exposes no connection settings, so paypush serves
//! `warp::service(routes)` with hyper's connection builders: one listener
//! speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what a proxy such
//! as HAProxy or Envoy sends upstream), told apart by peeking at the HTTP/2
//! preface. Each protocol's settings (head size limits, timeouts, buffers,
//! stream counts, flow-control windows) live here. [`run`] takes an
//! already-bound listener, so tests bind port 0 and the binary stays thin.
//!
//! Not hyper-util's `auto` builder: its connection is one enum of both
//! protocols' connections, so every HTTP/1.1 connection's task was as large
//! as an HTTP/2 one (measured: 21.5 instead of 10.1 KiB per waiting stream).
//! Here each connection's task holds only its own protocol's state.
//!
//! An HTTP/1.1 connection may upgrade to a WebSocket (`/ws`): the socket
//! then leaves hyper, so the graceful wait does not see it; it ends itself
//! when the hub shuts down (close `1001`), and [`run`] also waits for the hub
//! to hold no waiter (a socket keeps its waiter until its close frame is out).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use warp::http::{header, HeaderValue};

use crate::app::App;
use crate::cors::ListedOrigins;
use crate::hub::Hub;
use crate::{routes, ws};

/// Request line and headers above this size get `431`: hyper reads at most
/// this much before the headers are complete.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 receive window of each stream: what a client may send before
/// paypush reads it. The protocol's default, four times the largest
/// callback body; a waiting stream receives nothing, so it costs nothing.
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// HTTP/2 receive window of a whole connection, shared by its streams.
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The most an HTTP/2 stream queues for sending: an SSE event is a few
/// hundred bytes, so a slow reader is cut off long before this costs much.
pub const H2_MAX_SEND_BUFFER: usize = 64 * 1024;
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause before peeking again at a preface that arrived in pieces.
const PREFACE_RETRY: Duration = Duration::from_millis(1);
/// How often shutdown looks whether every waiter (WebSockets) has ended.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The two protocols' connection builders.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(h2_max_streams: u32) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(MAX_HEADER_BYTES)
            // One flat write buffer per connection: SSE events are a few
            // hundred bytes, so copying them is cheaper than the queue of
            // buffers (a VecDeque kept for the connection's life) that
            // vectored writes need.
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(h2_max_streams)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_send_buf_size(H2_MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        Builders {
            http1: h1,
            http2: h2,
        }
    }
}

/// Whether a connection starts with the HTTP/2 preface, read without
/// consuming it; `Err` when it closes (or errs) first.
async fn is_http2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut start = [0; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut start).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if start[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // The preface so far, in pieces: peek again once more may be there.
        tokio::time::sleep(PREFACE_RETRY).await;
    }
}

/// Which protocol a new connection speaks: `Some(true)` for h2c, `None`
/// when it closes or sends nothing within [`HEADER_READ_TIMEOUT`].
async fn sniff(stream: &TcpStream, peer: SocketAddr) -> Option<bool> {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, is_http2(stream)).await {
        Ok(Ok(http2)) => Some(http2),
        Ok(Err(e)) => {
            log::debug!("connection from {peer} closed before a request: {e}");
            None
        }
        Err(_) => {
            log::debug!("connection from {peer} sent nothing in time");
            None
        }
    }
}

/// Runs a connection until it ends, asking it to finish gracefully (HTTP/2:
/// `GOAWAY`; HTTP/1.1: close once idle) when `stop` turns true. Boxed, so
/// this task's own state is a pointer, not a second copy of the connection.
async fn drive<C>(
    mut connection: Pin<Box<C>>,
    finish: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    _open: mpsc::Sender<()>,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = stop.wait_for(|stop| *stop) => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            finish(connection.as_mut());
            connection.await
        }
    };
    if let Err(e) = result {
        log::debug!("connection from {peer} ended: {e}");
    }
}

/// Serves only `GET /metrics` of `app` on `listener` (`--metrics-bind`, an
/// internal address) until `shutdown` completes. warp's own server: this
/// address is not exposed to clients, so it needs none of the main loop's
/// limits.
pub async fn run_metrics(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes::metrics_only(app))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, ends every open stream and waits up to [`SHUTDOWN_GRACE`] for
/// connections to close.
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let service = ServiceBuilder::new()
        // Outermost: CORS preflight answers get it too.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .option_layer(ListedOrigins::new(&app.config.allow_origin))
        // Where `/ws` finds the connection's upgrade (see `ws::Upgrade`).
        .map_request(ws::take_upgrade::<hyper::body::Incoming>)
        // Boxed: each connection and each request then clones one `Arc`
        // instead of the whole filter tree (an `App` per route), and a
        // request's filter future is freed once its response has started,
        // instead of staying in hyper's per-connection in-flight slot.
        .service(warp::service(warp::Filter::boxed(routes::routes(
            app.clone(),
        ))));
    let builders = Builders::new(app.config.h2_max_streams);
    // Flips to true on shutdown: every connection is then asked to finish.
    let (stop, stopping) = watch::channel(false);
    // Every connection holds a clone; `recv` answers `None` once all are gone.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY for {peer}: {e}");
        }
        let (service, builders) = (service.clone(), builders.clone());
        let (stopping, open) = (stopping.clone(), open.clone());
        // Its own task, so a slow client cannot stall the accept loop; the
        // connection then gets a task of its own, holding only its
        // protocol's state.
        tokio::spawn(async move {
            let Some(http2) = sniff(&stream, peer).await else {
                return;
            };
            let io = TokioIo::new(stream);
            let service = TowerToHyperService::new(service);
            if http2 {
                let connection = builders.http2.serve_connection(io, service);
                let finish = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
                tokio::spawn(drive(Box::pin(connection), finish, stopping, peer, open));
            } else {
                let connection = builders.http1.serve_connection(io, service);
                let connection = connection.with_upgrades();
                let finish = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
                tokio::spawn(drive(Box::pin(connection), finish, stopping, peer, open));
            }
        });
    }
    drop(listener);
    log::info!("shutting down: ending open streams");
    app.hub.shutdown();
    stop.send_replace(true);
    drop((open, stopping));
    let drained = async {
        all_closed.recv().await;
        no_waiters_left(&app.hub).await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        log::warn!("some connections were still open after {SHUTDOWN_GRACE:?}");
    }
}

/// Completes once the hub holds no waiter: every WebSocket has sent its
/// close frame (a socket keeps its waiter until then).
async fn no_waiters_left(hub: &Hub) {
    while hub.stats().open_streams > 0 {
        tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
    }
}
