//! The small handlers at the end of their filter chains: health,
//! readiness, metrics, the OpenAPI document and the demo page's files.
//! Errors leave as [`ApiError`] rejections, mapped to JSON in one place.

use std::borrow::Cow;
use std::path::Path;

use warp::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY};
use warp::http::HeaderValue;
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::app::App;
use crate::error::ApiError;

/// The demo page's `Content-Security-Policy`: everything from its own origin
/// only (`'self'` covers its `EventSource`, `fetch` and same-origin
/// WebSocket), no inline script or style, no plugins, no `<base>`, forms
/// only to itself, and no framing (clickjacking).
pub const DEMO_PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The files of `static/`, built into the binary.
static STATIC_FILES: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/static");

/// `GET /healthz`
pub async fn healthz() -> Result<Response, Rejection> {
    Ok(warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response())
}

/// `GET /readyz`: `200` only when a callback for a new payment would be
/// answered `200` (see [`crate::backplane::Backplane::ready`]); else
/// `503 not_ready` saying which condition fails.
pub async fn readyz(app: App) -> Result<Response, Rejection> {
    app.backplane.ready().await.map_err(ApiError::NotReady)?;
    Ok(warp::reply::json(&serde_json::json!({ "status": "ready" })).into_response())
}

/// The OpenAPI 3.1 document of the contract, built into the binary.
pub const OPENAPI_YAML: &str = include_str!("../docs/openapi.yaml");

/// `GET /openapi.yaml`
pub async fn openapi() -> Result<Response, Rejection> {
    let mut response = OPENAPI_YAML.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `GET /metrics`
pub async fn metrics(app: App) -> Result<Response, Rejection> {
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
pub type StaticFile = (String, Cow<'static, [u8]>);

/// Looks up `path` (empty: `index.html`) in `--static-dir`, or else in the
/// files built into the binary; `404` when absent.
pub async fn find_static_file(app: &App, path: &str) -> Result<StaticFile, Rejection> {
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
pub fn static_file((name, contents): StaticFile) -> Response {
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
