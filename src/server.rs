//! The HTTP server loop.
//!
//! warp's own `serve` exposes no connection settings, so paypush serves
//! `warp::service(routes)` with hyper-util's `auto` connection builder: one
//! listener speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what a
//! proxy such as HAProxy or Envoy sends upstream), told apart by the HTTP/2
//! preface. Each protocol's settings (head size limits, timeouts, buffers,
//! stream counts, flow-control windows) live here. [`run`] takes an
//! already-bound listener, so tests bind port 0 and the binary stays thin.
//!
//! An HTTP/1.1 connection may upgrade to a WebSocket (`/ws`): the socket
//! then leaves hyper, so the graceful wait does not see it; it ends itself
//! when the hub shuts down (close `1001`), and [`run`] also waits for the hub
//! to hold no waiter (a socket keeps its waiter until its close frame is out).

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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
/// How often shutdown looks whether every waiter (WebSockets) has ended.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The connection builder: HTTP/1.1 and h2c on one listener.
fn builder(h2_max_streams: u32) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .max_buf_size(MAX_HEADER_BYTES)
        // One flat write buffer per connection: SSE events are a few hundred
        // bytes, so copying them is cheaper than the queue of buffers (a
        // VecDeque kept for the connection's life) that vectored writes need.
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2_max_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    http
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
    let graceful = GracefulShutdown::new();
    let http = builder(app.config.h2_max_streams);
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
        let connection = http
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        // `map`, not `async move { connection.await }`: such a block keeps
        // both the captured connection and the awaited one in its layout,
        // doubling every connection's task (2.8 KB instead of 1.4 KB).
        tokio::spawn(connection.map(move |result| {
            if let Err(e) = result {
                log::debug!("connection from {peer} ended: {e}");
            }
        }));
    }
    drop(listener);
    log::info!("shutting down: ending open streams");
    app.hub.shutdown();
    let drained = async {
        graceful.shutdown().await;
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
