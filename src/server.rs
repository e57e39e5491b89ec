//! The HTTP server loop.
//!
//! warp's own `serve` exposes no connection settings, so paypush serves
//! `warp::service(routes)` with hyper's HTTP/1 connection builder: that is
//! where the request-header limit lives. [`run`] takes an already-bound
//! listener, so tests bind port 0 and the binary stays thin.
//!
//! Connections may upgrade to WebSockets (`/ws`), and hyper-util's
//! `GracefulShutdown` cannot watch upgradeable connections, so `Graceful`
//! does its one job here: start each connection's graceful shutdown when
//! the server stops. An upgraded socket leaves hyper; it ends itself when
//! the hub shuts down, and [`run`] waits for the hub to have no waiter left.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use warp::http::{header, HeaderName, HeaderValue, Method};

use crate::app::App;
use crate::hub::Hub;
use crate::{routes, ws};

/// Request line and headers above this size get `431`: hyper reads at most
/// this much before the headers are complete.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often shutdown looks whether every waiter (WebSockets) has ended.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown (finish the request in
    /// flight, then close) once `cancel` fires.
    struct Graceful<C> {
        #[pin]
        connection: C,
        #[pin]
        cancel: WaitForCancellationFutureOwned,
        shutdown: fn(Pin<&mut C>),
        shutting_down: bool,
    }
}

impl<C: Future> Future for Graceful<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down && this.cancel.poll(cx).is_ready() {
            *this.shutting_down = true;
            (this.shutdown)(this.connection.as_mut());
        }
        this.connection.poll(cx)
    }
}

/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for the `--allow-origin` list, or none. tower-http's layer rather
/// than warp's `cors` filter: warp's answers `403` to any other origin, which
/// would also refuse same-origin POSTs (browsers send `Origin` on those),
/// where the contract wants other origins simply to get no CORS headers.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("paypush-timestamp"),
                HeaderName::from_static("paypush-nonce"),
                HeaderName::from_static("paypush-signature"),
            ])
            .max_age(CORS_MAX_AGE),
    )
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, ends every open stream and waits up to [`SHUTDOWN_GRACE`] for
/// connections to close.
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let service = ServiceBuilder::new()
        .option_layer(cors(&app.config.allow_origin))
        // Where `/ws` finds the connection's upgrade (see `ws::Upgrade`).
        .map_request(ws::take_upgrade::<hyper::body::Incoming>)
        // Boxed: each connection and each request then clones one `Arc`
        // instead of the whole filter tree (an `App` per route), and a
        // request's filter future is freed once its response has started,
        // instead of staying in hyper's per-connection in-flight slot.
        .service(warp::service(warp::Filter::boxed(routes::routes(
            app.clone(),
        ))));
    let cancel = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEADER_BYTES)
        // One flat write buffer per connection: SSE events are a few hundred
        // bytes, so copying them is cheaper than the queue of buffers (a
        // VecDeque kept for the connection's life) that vectored writes need.
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
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
        let connection = Graceful {
            connection: http
                .serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service.clone()),
                )
                .with_upgrades(),
            cancel: cancel.clone().cancelled_owned(),
            shutdown: |connection| connection.graceful_shutdown(),
            shutting_down: false,
        };
        // `map`, not `async move { connection.await }`: such a block keeps
        // both the captured connection and the awaited one in its layout,
        // doubling every connection's task (2.8 KB instead of 1.4 KB).
        connections.spawn(connection.map(move |result| {
            if let Err(e) = result {
                log::debug!("connection from {peer} ended: {e}");
            }
        }));
    }
    drop(listener);
    log::info!("shutting down: ending open streams");
    app.hub.shutdown();
    cancel.cancel();
    connections.close();
    let drained = async {
        connections.wait().await;
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
