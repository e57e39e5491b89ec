//! The warp filters: routing and extraction only, one function per route,
//! composed with `.or()` in [`routes`]. Each chain ends in a handler from
//! [`crate::handlers`].
//!
//! Every route matches its path before its method, so an unknown path is a
//! `404` and a known path with the wrong method a `405` whose `Allow`
//! header lists the route's methods (see `methods`).

use std::convert::Infallible;
use std::pin::pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::header::CONTENT_LENGTH;
use warp::http::{HeaderMap, Method};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection};

use crate::app::App;
use crate::callback::{self, CallbackRequest};
use crate::config::BODY_READ_TIMEOUT;
use crate::error::{handle_rejection, ApiError};
use crate::handlers;
use crate::qr;
use crate::transport::{poll, sse, ws};

/// The largest callback body accepted, declared or chunked.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;
/// Every route, with errors mapped to JSON.
pub(crate) fn routes(app: App) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Two boxed groups: one filter type nesting every route is deeper than
    // the compiler's default recursion limit.
    let checkout = push(app.clone())
        .or(status(app.clone()))
        .unify()
        .or(websocket(app.clone()))
        .unify()
        .or(callback(app.clone()))
        .unify()
        .boxed();
    let operations = healthz()
        .or(readyz(app.clone()))
        .unify()
        .or(metrics(app.clone()))
        .unify()
        .or(qr_svg(app.clone()))
        .unify()
        .or(openapi())
        .unify()
        .or(client_js())
        .unify()
        .or(static_files(app))
        .unify()
        .boxed();
    checkout
        .or(operations)
        .unify()
        .recover(handle_rejection)
        .unify()
}

/// GET /push?payRecordId=123
pub(crate) fn push(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("push")
        .and(methods(&[Method::GET], "GET"))
        .and(query_pairs())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_app(app))
        .and_then(sse::push)
}

/// GET /status?payRecordId=123&wait=25
pub(crate) fn status(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("status")
        .and(methods(&[Method::GET], "GET"))
        .and(query_pairs())
        .and(with_app(app))
        .and_then(poll::status)
}

/// GET /ws?payRecordId=123 (WebSocket)
pub(crate) fn websocket(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(methods(&[Method::GET], "GET"))
        .and(query_pairs())
        .and(warp::header::headers_cloned())
        // Absent when the request is no upgrade: the handler refuses it as
        // JSON, after the id and token checks, like every other refusal.
        .and(warp::ext::optional::<ws::Upgrade>())
        .and(with_app(app))
        .and_then(ws::upgrade)
}

/// GET /pay-callback?payRecordId=123&status=SUCCESS
/// POST /pay-callback (form-encoded or JSON body)
pub(crate) fn callback(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("pay-callback")
        .and(methods(&[Method::GET, Method::POST], "GET, POST"))
        .and(warp::method())
        .and(path_and_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            |method: Method, path_and_query, headers: HeaderMap, body| async move {
                let body = match method {
                    Method::POST => read_body(&headers, body).await?,
                    _ => Bytes::new(),
                };
                Ok::<_, Rejection>(CallbackRequest {
                    method,
                    path_and_query,
                    headers,
                    body,
                })
            },
        )
        .and(with_app(app))
        .and_then(callback::callback)
}

/// GET /healthz
pub(crate) fn healthz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(methods(&[Method::GET], "GET"))
        .and_then(handlers::healthz)
}

/// GET /readyz
pub(crate) fn readyz(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("readyz")
        .and(methods(&[Method::GET], "GET"))
        .and(with_app(app))
        .and_then(handlers::readyz)
}

/// GET /metrics (on the main address unless `--metrics-bind` moves it)
pub(crate) fn metrics(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(served_if(app.config.metrics_bind.is_none()))
        .and(metrics_here(app))
}

/// Every route of the `--metrics-bind` address: GET /metrics, with errors
/// mapped to JSON.
pub(crate) fn metrics_only(
    app: App,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    warp::path!("metrics")
        .and(metrics_here(app))
        .recover(handle_rejection)
        .unify()
        .map(|mut response: Response| {
            response.headers_mut().insert(
                warp::http::header::X_CONTENT_TYPE_OPTIONS,
                warp::http::HeaderValue::from_static("nosniff"),
            );
            response
        })
}

/// The metrics reply, once the path matched.
fn metrics_here(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    methods(&[Method::GET], "GET")
        .and(with_app(app))
        .and_then(handlers::metrics)
}

/// GET /qr.svg?payRecordId=123: the demo page's payment QR code
pub(crate) fn qr_svg(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("qr.svg")
        .and(served_if(!app.config.no_demo_page))
        .and(methods(&[Method::GET], "GET"))
        .and(query_pairs())
        .and(warp::host::optional())
        .and(with_app(app))
        .and_then(qr::qr_svg)
}

/// GET /openapi.yaml: this API in OpenAPI 3.1 (docs/openapi.yaml)
pub(crate) fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.yaml")
        .and(methods(&[Method::GET], "GET"))
        .and_then(handlers::openapi)
}

/// GET /paypush.js: the client library (clients/js/paypush.js). An API
/// route, not part of the demo page: served with `--no-demo-page` too.
pub(crate) fn client_js() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("paypush.js")
        .and(methods(&[Method::GET, Method::HEAD], "GET, HEAD"))
        .and(warp::header::headers_cloned())
        .and_then(handlers::client_js)
}

/// GET /, GET /<file>: the demo page and its assets
pub(crate) fn static_files(
    app: App,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    served_if(!app.config.no_demo_page)
        .and(warp::path::tail())
        .and(with_app(app))
        .and_then(|tail: warp::path::Tail, app: App| async move {
            handlers::find_static_file(&app, tail.as_str()).await
        })
        .and(methods(&[Method::GET, Method::HEAD], "GET, HEAD"))
        .map(handlers::static_file)
}

/// Passes a request whose method is one of `allowed`; refuses any other with
/// a `405` whose `Allow` header is `allow` (RFC 9110), e.g. `"GET, POST"`.
fn methods(
    allowed: &'static [Method],
    allow: &'static str,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and_then(move |method: Method| async move {
            if allowed.contains(&method) {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError::MethodNotAllowed(allow)))
            }
        })
        .untuple_one()
}

/// Passes when `served`, else rejects as not found: the routes that
/// `--no-demo-page` or `--metrics-bind` take off the main address.
fn served_if(served: bool) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::any()
        .and_then(move || async move {
            if served {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The path and query exactly as sent, e.g. `/pay-callback?payRecordId=123`.
fn path_and_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::path::full()
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .map(|path: FullPath, query: Option<String>| match query {
            Some(query) => format!("{}?{query}", path.as_str()),
            None => path.as_str().to_string(),
        })
}

/// The query string as pairs, in order, repeats kept (absent: none).
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

/// Reads a body of at most [`MAX_BODY_BYTES`], declared or chunked, that
/// arrives within [`BODY_READ_TIMEOUT`].
async fn read_body(
    headers: &HeaderMap,
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_READ_TIMEOUT, read_body_untimed(headers, body))
        .await
        .unwrap_or(Err(ApiError::RequestTimeout))
}

/// [`read_body`] without its deadline.
async fn read_body_untimed(
    headers: &HeaderMap,
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = pin!(body);
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidBody("it could not be read"))?;
        if bytes.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        bytes.put(chunk);
    }
    Ok(bytes.freeze())
}
