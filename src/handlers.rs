//! The small handlers at the end of their filter chains: health,
//! readiness, metrics, the OpenAPI document and the demo page's files.
//! Errors leave as [`ApiError`] rejections, mapped to JSON in one place.

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use warp::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::app::App;
use crate::error::ApiError;

/// The demo page's `Content-Security-Policy`: everything from its own origin
/// only (`'self'` covers its `EventSource`, `fetch` and same-origin
/// WebSocket), no inline script or style, no plugins, no `<base>`, forms
/// only to itself, and no framing (clickjacking).
pub(crate) const DEMO_PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The files of `static/`, built into the binary.
static STATIC_FILES: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/static");

/// `GET /healthz`
pub(crate) async fn healthz() -> Result<Response, Rejection> {
    Ok(warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response())
}

/// `GET /readyz`: `200` only when a callback for a new payment would be
/// answered `200` (see [`crate::backplane::Backplane::ready`]); else
/// `503 not_ready` saying which condition fails.
pub(crate) async fn readyz(app: App) -> Result<Response, Rejection> {
    app.backplane.ready().await.map_err(ApiError::NotReady)?;
    Ok(warp::reply::json(&serde_json::json!({ "status": "ready" })).into_response())
}

/// The OpenAPI 3.1 document of the contract, built into the binary.
pub(crate) const OPENAPI_YAML: &str = include_str!("../docs/openapi.yaml");

/// `GET /openapi.yaml`
pub(crate) async fn openapi() -> Result<Response, Rejection> {
    let mut response = OPENAPI_YAML.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The client library (`clients/js/paypush.js`), built into the binary:
/// pages import it from here, so the page and the server always agree.
pub(crate) const CLIENT_JS: &str = include_str!("../clients/js/paypush.js");

/// How long a page (or a shared cache) may reuse `/paypush.js` before it
/// asks again; asking again costs a `304` while the ETag still matches.
/// Five minutes: a checkout page loads it once per visit, and a new release
/// reaches every page within that time.
pub(crate) const CLIENT_JS_CACHE_CONTROL: &str = "public, max-age=300";

/// The ETag of [`CLIENT_JS`]: a hash of its contents, computed once.
static CLIENT_JS_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(CLIENT_JS.as_bytes());
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    HeaderValue::from_str(&tag).expect("hex digits in quotes are a header value")
});

/// `GET /paypush.js`: the client library, or `304` when the request's
/// `If-None-Match` names its ETag (or is `*`).
pub(crate) async fn client_js(headers: HeaderMap) -> Result<Response, Rejection> {
    let etag = CLIENT_JS_ETAG.clone();
    // Read as bytes: a tag list that is not text matches nothing.
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|tags| etag_matches(&String::from_utf8_lossy(tags.as_bytes()), &etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = CLIENT_JS.into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, etag);
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(CLIENT_JS_CACHE_CONTROL),
    );
    Ok(response)
}

/// True when an `If-None-Match` list names `etag` (weak comparison, as RFC
/// 9110 asks for `If-None-Match`) or is `*`.
fn etag_matches(tags: &str, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag)
}

/// `GET /metrics`
pub(crate) async fn metrics(app: App) -> Result<Response, Rejection> {
    let text = app.metrics.render(app.backplane.stats()).map_err(|e| {
        log::error!("cannot render metrics: {e}");
        ApiError::Internal
    })?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// A static file found for a request path: its name and contents.
pub(crate) type StaticFile = (String, Cow<'static, [u8]>);

/// Looks up `path` (empty: `index.html`) in `--static-dir`, or else in the
/// files built into the binary; `404` when absent.
pub(crate) async fn find_static_file(app: &App, path: &str) -> Result<StaticFile, Rejection> {
    let name = if path.is_empty() { "index.html" } else { path };
    let contents = match &app.config.static_dir {
        Some(dir) => read_from_dir(dir, name).await,
        None => STATIC_FILES
            .get_file(name)
            .map(|file| Cow::Borrowed(file.contents())),
    };
    contents
        .map(|contents| (name.to_string(), contents))
        .ok_or_else(warp::reject::not_found)
}

/// Serves a file found by [`find_static_file`].
pub(crate) fn static_file((name, contents): StaticFile) -> Response {
    let mime = mime_guess::from_path(&name).first_or_octet_stream();
    let mut response = match contents {
        Cow::Borrowed(bytes) => bytes.into_response(),
        Cow::Owned(bytes) => bytes.into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        headers.insert(CONTENT_TYPE, value);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DEMO_PAGE_CSP),
    );
    // The page's URL may hold a subscribe token: never send it elsewhere.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Reads `dir/name`, refusing any name that could leave `dir`.
async fn read_from_dir(dir: &Path, name: &str) -> Option<Cow<'static, [u8]>> {
    let inside = name
        .split('/')
        .all(|segment| !segment.is_empty() && !segment.starts_with('.') && !segment.contains('\\'));
    if !inside {
        return None;
    }
    tokio::fs::read(dir.join(name)).await.ok().map(Cow::Owned)
}
