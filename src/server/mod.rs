//! The HTTP server loop.
//!
//! warp's own `serve` exposes no connection settings, so paypush serves
//! `warp::service(routes)` with hyper's connection builders: one listener
//! speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what a proxy such
//! as HAProxy or Envoy sends upstream), told apart by their first bytes
//! ([`crate::preface`]). Each protocol's settings (head size limits,
//! timeouts, buffers, stream counts, flow-control windows) live here.
//!
//! Every connection has deadlines whatever its client does: it must show
//! its protocol within [`HEADER_READ_TIMEOUT`]; an HTTP/1.1 one then obeys
//! hyper's head timeout and keep-alive; an HTTP/2 one is closed after
//! [`H2_IDLE_TIMEOUT`] without an open stream, pings a silent peer, and
//! resets a stream that outlives the push timeout by [`H2_STREAM_GRACE`]
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
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use warp::http::{header, HeaderValue, Request, Version};
use warp::reply::{Reply, Response};

use crate::app::App;
use crate::backplane::Backplane;
use crate::cors::ListedOrigins;
use crate::error::ApiError;
use crate::preface::{self, NoProtocol, Prefixed, Protocol};
use crate::transport::ws;
use crate::{refusals, routes};

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
/// An HTTP/2 connection with no open stream for this long is closed
/// (`GOAWAY`), as an idle HTTP/1.1 keep-alive connection is.
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an HTTP/2 connection that received nothing pings its peer...
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and how long the peer has to answer before the connection is closed:
/// a peer that died without a word is found.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an HTTP/2 stream may outlive the push timeout: the longest a
/// stream lives on its own is the push timeout (a waiting stream) or a
/// callback's head and body deadlines; one still there after this makes no
/// progress (its client grants no flow-control window) and is reset.
pub const H2_STREAM_GRACE: Duration = HEADER_READ_TIMEOUT;
/// How long a connection asked to finish (shutdown, idle) may take to do
/// so before it is dropped: a peer that never reads cannot hold it.
const FINISH_DEADLINE: Duration = SHUTDOWN_GRACE;

/// HTTP/2 streams in flight on all connections at once, as a multiple of
/// the waiter limit: each waiter is one, and the rest (callbacks, pages)
/// end at once unless their client grants no window. Past it, a new
/// stream is answered `503` at once, so streams that a client never reads
/// cannot pile up across many connections until their deadline.
pub const H2_STREAMS_PER_WAITER_SLOT: usize = 2;

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

/// The open streams of one HTTP/2 connection, for its idle deadline.
#[derive(Debug, Default)]
struct OpenStreams {
    count: AtomicUsize,
    /// Notified whenever a stream opens or ends.
    changed: Notify,
}

impl OpenStreams {
    /// Completes once the connection has had no open stream for
    /// [`H2_IDLE_TIMEOUT`] (from its start, or from its last stream's end).
    async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(H2_IDLE_TIMEOUT) => {
                    if self.count.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

/// Counts a stream open until dropped, on its connection and in all.
struct StreamGuard(Arc<OpenStreams>, Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// hyper runs each HTTP/2 stream as a task of its own through this
/// executor: it counts the stream open for the connection's idle deadline,
/// and drops (resets) a stream still there at its deadline. hyper only
/// polls a stream's body when the client grants window, so a stream whose
/// client reads nothing could not end itself.
#[derive(Clone)]
struct StreamExecutor {
    deadline: Duration,
    /// Every connection's streams, for [`StreamBudget`].
    all_streams: Arc<AtomicUsize>,
    streams: Arc<OpenStreams>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.all_streams.fetch_add(1, Ordering::Relaxed);
        self.streams.count.fetch_add(1, Ordering::SeqCst);
        self.streams.changed.notify_waiters();
        let guard = StreamGuard(self.streams.clone(), self.all_streams.clone());
        let deadline = self.deadline;
        tokio::spawn(async move {
            if tokio::time::timeout(deadline, stream).await.is_err() {
                log::debug!("an HTTP/2 stream made no progress for {deadline:?}; reset");
            }
            drop(guard);
        });
    }
}

/// A service that answers a new HTTP/2 request `503 over_capacity` at once
/// while the streams in flight on all connections are over `limit` (see
/// [`H2_STREAMS_PER_WAITER_SLOT`]); other requests go to `inner`.
#[derive(Clone)]
struct StreamBudget<S> {
    inner: S,
    h2_streams: Arc<AtomicUsize>,
    limit: usize,
}

impl<S, B> tower::Service<Request<B>> for StreamBudget<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let over = request.version() == Version::HTTP_2
            && self.h2_streams.load(Ordering::Relaxed) > self.limit;
        if over {
            refusals::refused(
                "h2_streams",
                "too many HTTP/2 streams in flight; a new one is answered 503".into(),
            );
            return Either::Left(future::ready(Ok(ApiError::OverCapacity.into_response())));
        }
        Either::Right(self.inner.call(request))
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
            let service = TowerToHyperService::new(service);
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
