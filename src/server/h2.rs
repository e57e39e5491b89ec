//! HTTP/2's deadlines and bounds, beside hyper's own settings: a
//! connection's idle deadline (its open streams counted), every stream's
//! deadline (hyper runs each stream as a task through [`StreamExecutor`]),
//! and the bound on streams in flight across connections
//! ([`StreamBudget`]). It knows nothing of the routes.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use futures_util::FutureExt;
use tokio::sync::Notify;
use warp::http::{Request, Version};
use warp::reply::{Reply, Response};

use crate::error::ApiError;
use crate::refusals;

/// An HTTP/2 connection with no open stream for this long is closed
/// (`GOAWAY`), as an idle HTTP/1.1 keep-alive connection is.
pub(super) const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an HTTP/2 connection that received nothing pings its peer...
pub(super) const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and how long the peer has to answer before the connection is closed:
/// a peer that died without a word is found.
pub(super) const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an HTTP/2 stream may outlive the push timeout: the longest a
/// stream lives on its own is the push timeout (a waiting stream) or a
/// callback's head and body deadlines; one still there after this makes no
/// progress (its client grants no flow-control window) and is reset.
pub(super) const H2_STREAM_GRACE: Duration = Duration::from_secs(30);
/// HTTP/2 streams in flight on all connections at once, as a multiple of
/// the waiter limit: each waiter is one, and the rest (callbacks, pages)
/// end at once unless their client grants no window. Past it, a new
/// stream is answered `503` at once, so streams that a client never reads
/// cannot pile up across many connections until their deadline.
pub(super) const H2_STREAMS_PER_WAITER_SLOT: usize = 2;

/// The open streams of one HTTP/2 connection, for its idle deadline.
#[derive(Debug, Default)]
pub(super) struct OpenStreams {
    count: AtomicUsize,
    /// Notified whenever a stream opens or ends.
    changed: Notify,
}

impl OpenStreams {
    /// Completes once the connection has had no open stream for
    /// [`H2_IDLE_TIMEOUT`] (from its start, or from its last stream's end).
    pub(super) async fn idle(&self) {
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
pub(super) struct StreamExecutor {
    pub(super) deadline: Duration,
    /// Every connection's streams, for [`StreamBudget`].
    pub(super) all_streams: Arc<AtomicUsize>,
    pub(super) streams: Arc<OpenStreams>,
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
        // A combinator, not an `async` block: a block would keep room for
        // the captured stream beside the `Timeout` that owns it, twice a
        // stream's size in every waiting stream's task.
        tokio::spawn(tokio::time::timeout(deadline, stream).map(move |ended| {
            if ended.is_err() {
                log::debug!("an HTTP/2 stream made no progress for {deadline:?}; reset");
            }
            drop(guard);
        }));
    }
}

/// A service that answers a new HTTP/2 request `503 over_capacity` at once
/// while the streams in flight on all connections are over `limit` (see
/// [`H2_STREAMS_PER_WAITER_SLOT`]); other requests go to `inner`.
#[derive(Clone)]
pub(super) struct StreamBudget<S> {
    pub(super) inner: S,
    pub(super) h2_streams: Arc<AtomicUsize>,
    pub(super) limit: usize,
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
