//! CORS for the `--allow-origin` list, and for nobody else.
//!
//! tower-http's [`CorsLayer`] does the CORS work (the matching
//! `Access-Control-Allow-Origin`, credentials, preflight answers), but it
//! adds headers such as `Access-Control-Allow-Credentials` and `Vary` to every
//! response and answers every `OPTIONS` request itself, whatever its origin.
//! The contract wants other origins, and requests without `Origin`, to get no
//! `Access-Control-*` header at all, preflights included. So [`ListedOrigins`]
//! sends only requests from a listed origin through tower-http's layer; every
//! other request goes straight to the app (an `OPTIONS` then being a normal
//! request: `405` or `404` JSON), and its answer only gets `Vary: Origin`, so
//! that a shared cache never hands it to a listed origin.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, MapOk};
use futures_util::TryFutureExt;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use warp::http::{header, HeaderName, HeaderValue, Method, Request, Response};

/// How long browsers may cache a CORS preflight answer.
pub(crate) const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The layer: CORS for the listed origins only.
#[derive(Clone, Debug)]
pub(crate) struct ListedOrigins {
    origins: Arc<[HeaderValue]>,
    cors: CorsLayer,
}

impl ListedOrigins {
    /// The layer for these origins (`scheme://host[:port]`), or `None` when
    /// the list is empty: then nothing is cross-origin.
    pub(crate) fn new(origins: &[String]) -> Option<ListedOrigins> {
        let origins: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        if origins.is_empty() {
            return None;
        }
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.clone()))
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
            .max_age(CORS_MAX_AGE);
        Some(ListedOrigins {
            origins: origins.into(),
            cors,
        })
    }
}

impl<S: Clone> Layer<S> for ListedOrigins {
    type Service = ListedOriginsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ListedOriginsService {
            cors: self.cors.layer(inner.clone()),
            inner,
            origins: self.origins.clone(),
        }
    }
}

/// The service of [`ListedOrigins`].
#[derive(Clone, Debug)]
pub(crate) struct ListedOriginsService<S> {
    inner: S,
    cors: Cors<S>,
    origins: Arc<[HeaderValue]>,
}

impl<S> ListedOriginsService<S> {
    /// From a listed origin, and either not `OPTIONS` or a real preflight
    /// (one that names the method it asks for).
    fn is_cors<B>(&self, request: &Request<B>) -> bool {
        let headers = request.headers();
        let listed = headers
            .get(header::ORIGIN)
            .is_some_and(|origin| self.origins.contains(origin));
        listed
            && (request.method() != Method::OPTIONS
                || headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ListedOriginsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<
        tower_http::cors::ResponseFuture<S::Future>,
        MapOk<S::Future, fn(Response<ResBody>) -> Response<ResBody>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.cors.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.is_cors(&request) {
            Either::Left(self.cors.call(request))
        } else {
            Either::Right(
                self.inner
                    .call(request)
                    .map_ok(vary_on_origin as fn(_) -> _),
            )
        }
    }
}

/// Adds `Vary: Origin` to an answer given without CORS headers.
fn vary_on_origin<B>(mut response: Response<B>) -> Response<B> {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
    response
}
