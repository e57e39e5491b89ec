//! The warp filters: routing and extraction only, one function per route,
//! composed with `.or()` in [`routes`]. Each chain ends in a handler from
//! [`crate::handlers`].
//!
//! Every route matches its path before its method, so an unknown path is a
//! `404` and a known path with the wrong method a `405`.

use std::convert::Infallible;
use std::pin::pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection};

use crate::error::{handle_rejection, ApiError};
use crate::handlers;
use crate::model::Callback;
use crate::server::App;

/// The largest callback body accepted, declared or chunked.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route, with errors mapped to JSON.
pub fn routes(app: App) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    push(app.clone())
        .or(callback_get(app.clone()))
        .unify()
        .or(callback_post(app.clone()))
        .unify()
        .or(healthz())
        .unify()
        .or(readyz())
        .unify()
        .or(metrics(app.clone()))
        .unify()
        .or(static_files(app))
        .unify()
        .recover(handle_rejection)
        .unify()
}

/// GET /push?payRecordId=123
pub fn push(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("push")
        .and(warp::get())
        .and(query_pairs())
        .and(warp::header::headers_cloned())
        .and(with_app(app))
        .and_then(handlers::push)
}

/// GET /pay-callback?payRecordId=123&status=SUCCESS
pub fn callback_get(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("pay-callback")
        .and(warp::get())
        .and(query_pairs())
        .and_then(|pairs: Vec<(String, String)>| async move {
            Callback::from_pairs(&pairs).map_err(|e| Rejection::from(ApiError::from(e)))
        })
        .and(with_app(app))
        .and_then(handlers::callback)
}

/// POST /pay-callback, form-encoded or JSON body
pub fn callback_post(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("pay-callback")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(|headers: HeaderMap, body| async move {
            let body = read_body(&headers, body).await?;
            callback_from_body(&headers, &body).map_err(Rejection::from)
        })
        .and(with_app(app))
        .and_then(handlers::callback)
}

/// GET /healthz
pub fn healthz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and_then(handlers::healthz)
}

/// GET /readyz
pub fn readyz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("readyz")
        .and(warp::get())
        .and_then(handlers::readyz)
}

/// GET /metrics
pub fn metrics(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app))
        .and_then(handlers::metrics)
}

/// GET /, GET /<file>: the demo page and its assets
pub fn static_files(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::tail()
        .and(with_app(app))
        .and_then(|tail: warp::path::Tail, app: App| async move {
            handlers::find_static_file(&app, tail.as_str()).await
        })
        .and(warp::get().or(warp::head()).unify())
        .map(handlers::static_file)
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The query string as pairs, in order, repeats kept (absent: none).
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

/// Reads a body of at most [`MAX_BODY_BYTES`], declared or chunked.
async fn read_body(
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

/// Parses a callback body by its content type: form-encoded or JSON, any charset.
fn callback_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Callback, ApiError> {
    let mime = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .ok_or(ApiError::UnsupportedMediaType)?;
    match (mime.type_(), mime.subtype()) {
        (mime::APPLICATION, mime::WWW_FORM_URLENCODED) => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|_| ApiError::InvalidBody("it is not form-encoded"))?;
            Ok(Callback::from_pairs(&pairs)?)
        }
        (mime::APPLICATION, mime::JSON) => Ok(Callback::from_json(body)?),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}
