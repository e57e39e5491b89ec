//! The demo page's payment QR code: `GET /qr.svg?payRecordId=123` answers an
//! SVG QR code of that payment's callback URL,
//! `http://<Host>/pay-callback?payRecordId=123&status=SUCCESS`.
//!
//! Scanning it with a phone that reaches the server "pays" the order: the
//! phone's browser sends the same `GET /pay-callback` a provider would, and
//! the waiting page shows the outcome. It is a demo aid, not a payment QR:
//! with a callback secret configured that unsigned request gets `401`. The
//! URL's authority is the request's own `Host`, so the code works for
//! whatever address the page was opened with; without a `Host` (or with one
//! too long to fit in a QR code) it holds the path alone.

use qrcode::render::svg;
use qrcode::QrCode;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::uri::Authority;
use warp::http::HeaderValue;
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::app::App;
use crate::error::ApiError;
use crate::model::PayRecordId;

/// The longest `Host` encoded (a DNS name is at most 253 bytes, plus a port
/// would not fit in many more): a QR code of a few hundred bytes costs well
/// under a millisecond, of 2 KB about 19 ms.
pub const MAX_HOST_BYTES: usize = 255;
/// The refusal of a longer `Host` says the number.
const HOST_TOO_LONG: &str = "the Host header is over 255 bytes";
const _: () = assert!(MAX_HOST_BYTES == 255, "update HOST_TOO_LONG");

/// Color of the dark modules.
const DARK: &str = "#111827";
/// Color of the light modules and the quiet zone around them.
const LIGHT: &str = "#ffffff";

/// `GET /qr.svg?payRecordId=123`: the payment's callback URL as an SVG QR code.
pub async fn qr_svg(
    query: Vec<(String, String)>,
    host: Option<Authority>,
    app: App,
) -> Result<Response, Rejection> {
    let id = PayRecordId::from_pairs(&query).map_err(|_| ApiError::InvalidPayRecordId)?;
    let path = callback_path(id);
    let base = match (&app.config.public_url, host) {
        (Some(public_url), _) => Some(public_url.clone()),
        (None, Some(host)) if host.as_str().len() > MAX_HOST_BYTES => {
            return Err(ApiError::InvalidRequest(HOST_TOO_LONG).into());
        }
        (None, host) => host.map(|host| format!("http://{host}")),
    };
    let image = base
        .and_then(|base| svg(&format!("{base}{path}")))
        .or_else(|| svg(&path))
        .ok_or_else(|| {
            log::error!("cannot encode {path} as a QR code");
            ApiError::Internal
        })?;
    let mut response = image.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The callback a scan sends: `/pay-callback?payRecordId=123&status=SUCCESS`.
pub fn callback_path(id: PayRecordId) -> String {
    format!("/pay-callback?payRecordId={id}&status=SUCCESS")
}

/// `text` as an SVG QR code, one unit per module, with the standard quiet
/// zone; `None` when it is too long for a QR code.
pub fn svg(text: &str) -> Option<String> {
    let code = QrCode::new(text).ok()?;
    Some(
        code.render::<svg::Color>()
            .module_dimensions(1, 1)
            .dark_color(svg::Color(DARK))
            .light_color(svg::Color(LIGHT))
            .build(),
    )
}
