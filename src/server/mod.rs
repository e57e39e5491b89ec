//! The HTTP server loop.
//!
//! warp's own `serve` exposes no connection settings, so paypush serves
//! `warp::service(routes)` with hyper's connection builders: one listener
//! speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what a proxy such
//! as HAProxy or Envoy sends upstream), told apart by their first bytes
//! (`preface`). Each protocol's settings (head size limits,
//! timeouts, buffers, stream counts, flow-control windows) live here.
//!
//! Every connection has deadlines whatever its client does: it must show
//! its protocol within [`HEADER_READ_TIMEOUT`]; an HTTP/1.1 one then obeys
//! hyper's head timeout and keep-alive; an HTTP/2 one is closed after
//! `H2_IDLE_TIMEOUT` without an open stream, pings a silent peer, and
//! resets a stream that outlives the push timeout by `H2_STREAM_GRACE`
//! (its client grants no window, so hyper never polls its body); a
//! connection asked to finish is dropped if it has not within
//! [`SHUTDOWN_GRACE`]. [`run`] takes an
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
mod h2;
pub(crate) mod preface;

use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::set_header::SetResponseHeaderLayer;
use warp::http::{header, HeaderValue};

use crate::app::App;
use crate::backplane::Backplane;
use crate::cors::ListedOrigins;
use crate::transport::ws;
use crate::{refusals, routes};
use h2::{
    OpenStreams, StreamBudget, StreamExecutor, H2_IDLE_TIMEOUT, H2_PING_INTERVAL, H2_PING_TIMEOUT,
    H2_STREAMS_PER_WAITER_SLOT, H2_STREAM_GRACE,
};
use preface::{NoProtocol, Prefixed, Protocol};

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
/// How often shutdown looks whether every waiter (WebSockets) has ended.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// How long a connection asked to finish (shutdown, idle) may take to do
/// so before it is dropped: a peer that never reads cannot hold it.
const FINISH_DEADLINE: Duration = SHUTDOWN_GRACE;

/// The two protocols' connection settings.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    h2_max_streams: u32,
    /// Every HTTP/2 stream's deadline: see [`H2_STREAM_GRACE`].
    h2_stream_deadline: Duration,
    /// HTTP/2 streams in flight on every connection.
    h2_streams: Arc<AtomicUsize>,
}

impl Builders {
    fn new(h2_max_streams: u32, push_timeout: Duration, h2_streams: Arc<AtomicUsize>) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(MAX_HEADER_BYTES)
            // One flat write buffer per connection: SSE events are a few
            // hundred bytes, so copying them is cheaper than the queue of
            // buffers (a VecDeque kept for the connection's life) that
            // vectored writes need.
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        Builders {
            http1: h1,
            h2_max_streams,
            h2_stream_deadline: push_timeout.saturating_add(H2_STREAM_GRACE),
            h2_streams,
        }
    }

    /// An HTTP/2 builder whose streams are counted in `streams`, each with
    /// its deadline. Made per connection: the executor is its counter.
    fn http2(&self, streams: Arc<OpenStreams>) -> http2::Builder<StreamExecutor> {
        let executor = StreamExecutor {
            deadline: self.h2_stream_deadline,
            all_streams: self.h2_streams.clone(),
            streams,
        };
        let mut h2 = http2::Builder::new(executor);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_streams)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_send_buf_size(H2_MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        h2
    }
}

/// Which protocol a new connection speaks, with its first bytes put back;
/// `None` when it closes or shows nothing within [`HEADER_READ_TIMEOUT`].
async fn sniff(stream: TcpStream, peer: SocketAddr) -> Option<(Protocol, Prefixed<TcpStream>)> {
    match preface::read_protocol(stream, HEADER_READ_TIMEOUT).await {
        Ok(found) => Some(found),
        Err(NoProtocol::Closed(e)) => {
            log::debug!("connection from {peer} closed before a request: {e}");
            None
        }
        Err(NoProtocol::TimedOut) => {
            log::debug!("connection from {peer} sent nothing in time");
            None
        }
    }
}

/// Runs a connection until it ends, asking it to finish gracefully (HTTP/2:
/// `GOAWAY`; HTTP/1.1: close once idle) when `stop` turns true or `idle`
/// completes, and dropping it if it has not finished [`FINISH_DEADLINE`]
/// later. Boxed, so this task's own state is a pointer, not a second copy
/// of the connection.
async fn drive<C>(
    mut connection: Pin<Box<C>>,
    finish: impl FnOnce(Pin<&mut C>),
    idle: impl Future<Output = ()>,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    _open: mpsc::Sender<()>,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = stop.wait_for(|stop| *stop) => None,
        () = idle => {
            log::debug!("connection from {peer} idle for {H2_IDLE_TIMEOUT:?}; closing");
            None
        }
    };
    let result = match ended {
        Some(result) => result,
        None => {
            finish(connection.as_mut());
            match tokio::time::timeout(FINISH_DEADLINE, connection).await {
                Ok(result) => result,
                Err(_) => {
                    log::debug!("connection from {peer} did not finish in time; dropped");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        log::debug!("connection from {peer} ended: {e}");
    }
}

/// Connections the kernel queues before paypush accepts them: a burst of
/// reconnecting EventSources must not overflow it (the default, 128, drops
/// SYNs and costs each dropped client a 1 s retransmit).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with `LISTEN_BACKLOG`.
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
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
    let h2_streams = Arc::new(AtomicUsize::new(0));
    let h2_limit = app
        .backplane
        .limits()
        .max_streams
        .saturating_mul(H2_STREAMS_PER_WAITER_SLOT);
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
        .layer_fn(|inner| StreamBudget {
            inner,
            h2_streams: h2_streams.clone(),
            limit: h2_limit,
        })
        .service(warp::service(warp::Filter::boxed(routes::routes(
            app.clone(),
        ))));
    let builders = Builders::new(
        app.config.h2_max_streams,
        app.config.push_timeout,
        h2_streams.clone(),
    );
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
                    // Rate-limited: out of file descriptors, this fails for
                    // every connection in the queue.
                    refusals::refused("accept_failed", format!("accept failed: {e}"));
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
            let Some((protocol, io)) = sniff(stream, peer).await else {
                return;
            };
            let io = TokioIo::new(io);
            // Each request's future boxed: an HTTP/2 stream's task then
            // keeps a pointer for it (freed once the response has started)
            // instead of room for the service stack and the request, for
            // as long as the stream waits.
            let service = service_fn(move |request| Box::pin(service.clone().oneshot(request)));
            match protocol {
                Protocol::Http2 => {
                    let streams = Arc::new(OpenStreams::default());
                    let connection = builders
                        .http2(streams.clone())
                        .serve_connection(io, service);
                    let finish = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
                    let idle = async move { streams.idle().await };
                    tokio::spawn(drive(
                        Box::pin(connection),
                        finish,
                        idle,
                        stopping,
                        peer,
                        open,
                    ));
                }
                Protocol::Http1 => {
                    let connection = builders.http1.serve_connection(io, service);
                    let connection = connection.with_upgrades();
                    let finish =
                        |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
                    // hyper closes an idle keep-alive connection itself.
                    let idle = std::future::pending();
                    tokio::spawn(drive(
                        Box::pin(connection),
                        finish,
                        idle,
                        stopping,
                        peer,
                        open,
                    ));
                }
            }
        });
    }
    drop(listener);
    log::info!("shutting down: ending open streams");
    app.backplane.shutdown();
    stop.send_replace(true);
    drop((open, stopping));
    let drained = async {
        all_closed.recv().await;
        no_waiters_left(&app.backplane).await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        log::warn!("some connections were still open after {SHUTDOWN_GRACE:?}");
    }
}

/// Completes once the hub holds no waiter: every WebSocket has sent its
/// close frame (a socket keeps its waiter until then).
async fn no_waiters_left(backplane: &Backplane) {
    while backplane.stats().open_streams > 0 {
        tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
    }
}
