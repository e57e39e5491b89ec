//! The handlers at the end of each filter chain: they call the hub and build
//! replies. Errors leave as [`ApiError`] rejections, mapped to JSON in one place.

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use warp::http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    REFERRER_POLICY,
};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::app::App;
use crate::backplane::{RecordError, Unavailable};
use crate::error::ApiError;
use crate::hub::{
    Completion, NonceCheck, Refusal, Stored, SubscribeError, Subscription, Transport,
};
use crate::metrics::CallbackResult;
use crate::model::{single, Callback, CallbackJson, Outcome, PayRecordId, Status};
use crate::signature::{self, SignatureError, SignatureHeaders, SignedParts};
use crate::sse;
use crate::store::StoreError;

/// The demo page's `Content-Security-Policy`: everything from its own origin
/// only (`'self'` covers its `EventSource`, `fetch` and same-origin
/// WebSocket), no inline script or style, no plugins, no `<base>`, forms
/// only to itself, and no framing (clickjacking).
pub const DEMO_PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The files of `static/`, built into the binary.
static STATIC_FILES: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/static");

/// `GET /push`: the payment's event stream, its recorded outcome, or `204`
/// when the client already has that outcome (`Last-Event-ID`).
pub async fn push(
    query: Vec<(String, String)>,
    last_event_id: Option<String>,
    app: App,
) -> Result<Response, Rejection> {
    let id = authorize(&app, &query)?;
    let wait = app.config.push_timeout;
    let mut response = match subscribe(&app, id, Transport::Sse, wait).await {
        Ok(Subscription::Recorded(outcome))
            if last_event_id.as_deref() == Some(&outcome.event_id()) =>
        {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Ok(Subscription::Recorded(outcome)) => {
            warp::sse::reply(sse::recorded(outcome)).into_response()
        }
        Ok(Subscription::Waiting(waiting)) => {
            let config = &app.config;
            let stream = sse::waiting(waiting, config.keep_alive, app.metrics.clone());
            warp::sse::reply(stream).into_response()
        }
        Err(refused) => return Err(ApiError::refused(refused, id).into()),
    };
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // A stream is its HTTP/1.1 connection's last answer: it ends only with
    // the payment's last event, after which the page closes or reconnects.
    // Closing at once spares a wake-up and a read per checkout (waiting for
    // the client's close); HTTP/2, whose streams share a connection, drops
    // the header (hyper strips connection-specific headers there).
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// A `/pay-callback` request as received: what is signed, and where its
/// fields are (the query for GET, the body for POST).
#[derive(Debug)]
pub struct CallbackRequest {
    /// GET or POST.
    pub method: Method,
    /// As sent, for the signature and (GET) the fields.
    pub path_and_query: String,
    /// For the content type and the signature headers.
    pub headers: HeaderMap,
    /// The body (POST), at most [`crate::routes::MAX_BODY_BYTES`].
    pub body: Bytes,
}

impl CallbackRequest {
    /// Checks the signature headers when a callback secret is set; the nonce
    /// is remembered only once every other check has passed. Returns the
    /// nonce's claim (signed mode) and a [`Stored`] that resolves once it is
    /// durable.
    async fn authenticate(&self, app: &App) -> Result<(Option<NonceClaim>, Stored), ApiError> {
        let Some(secret) = &app.config.callback_secret else {
            return Ok((None, Stored::now()));
        };
        // Signed as sent: a header that is not text signs (and so matches)
        // nothing but its lossy reading, and is refused later as 415.
        let media_type = self
            .headers
            .get(CONTENT_TYPE)
            .map(|v| signature::media_type(&String::from_utf8_lossy(v.as_bytes())))
            .unwrap_or_default();
        let parts = SignedParts {
            method: self.method.as_str(),
            path_and_query: &self.path_and_query,
            media_type: &media_type,
            body: &self.body,
        };
        let headers = SignatureHeaders::parse(&self.headers)?;
        headers.verify(secret, parts, SystemTime::now())?;
        // Claimed before the SET is sent: if this request ends while it is
        // in flight (a timeout, the client gone), it may still land.
        let claim = NonceClaim {
            app: app.clone(),
            nonce: Some(headers.nonce.clone()),
        };
        let (check, stored) = app
            .backplane
            .remember_nonce(&app.hub, &headers.nonce)
            .await
            .map_err(unavailable)?;
        match check {
            NonceCheck::Fresh => Ok((Some(claim), stored)),
            // Another request's nonce, or none remembered: nothing to forget.
            NonceCheck::Replayed => {
                claim.keep();
                Err(SignatureError::ReplayedNonce.into())
            }
            NonceCheck::Full => {
                claim.keep();
                Err(ApiError::Unavailable("too many signed callbacks at once"))
            }
        }
    }

    /// The callback's fields: the query of a GET, the form or JSON body of a POST.
    fn parse(&self) -> Result<Callback, ApiError> {
        if self.method != Method::POST {
            let query = self.path_and_query.split_once('?').map_or("", |(_, q)| q);
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(query).unwrap_or_default();
            return Ok(Callback::from_pairs(&pairs)?);
        }
        let mime = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .ok_or(ApiError::UnsupportedMediaType)?;
        match (mime.type_(), mime.subtype()) {
            (mime::APPLICATION, mime::WWW_FORM_URLENCODED) => {
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&self.body)
                    .map_err(|_| ApiError::InvalidBody("it is not form-encoded"))?;
                Ok(Callback::from_pairs(&pairs)?)
            }
            (mime::APPLICATION, mime::JSON) => Ok(Callback::from_json(&self.body)?),
            _ => Err(ApiError::UnsupportedMediaType),
        }
    }
}

/// A signed callback's remembered nonce, until the callback is answered as
/// recorded, a duplicate or a conflict ([`NonceClaim::keep`]). Any other
/// end forgets it where it was remembered, so the provider's verbatim retry
/// can pass: an error answer ([`NonceClaim::release`], before answering), or
/// the request cancelled at an `.await` (the client went away: hyper drops
/// the handler's future, and this with it). Forgetting the nonce of an
/// outcome that did get recorded costs nothing: the retry is a duplicate.
struct NonceClaim {
    app: App,
    /// `None` once kept or released.
    nonce: Option<String>,
}

impl NonceClaim {
    /// The nonce stays used.
    fn keep(mut self) {
        self.nonce = None;
    }

    /// Forgets the nonce before the answer is sent, so a retry right after
    /// it finds the nonce gone.
    async fn release(mut self) {
        let Some(nonce) = self.nonce.take() else {
            return;
        };
        if let Err(e) = self.app.backplane.forget_nonce(&self.app.hub, &nonce).await {
            log::debug!(
                "cannot forget the nonce of a callback not recorded: {}",
                e.0
            );
        }
    }
}

impl Drop for NonceClaim {
    fn drop(&mut self) {
        if let Some(nonce) = self.nonce.take() {
            self.app.backplane.forget_nonce_later(&self.app.hub, nonce);
        }
    }
}

/// The payment a subscribe request (`/push`, `/status`, `/ws`) names, once
/// its `payRecordId` is valid and, with a subscribe secret, its token right.
pub(crate) fn authorize(app: &App, query: &[(String, String)]) -> Result<PayRecordId, ApiError> {
    let id = PayRecordId::from_pairs(query).map_err(|_| ApiError::InvalidPayRecordId)?;
    if let Some(secret) = &app.config.subscribe_secret {
        let token = single(query, "token").ok().flatten().unwrap_or_default();
        if !signature::verify_token(secret, id, token) {
            return Err(ApiError::InvalidToken);
        }
    }
    Ok(id)
}

/// Registers a waiter locally (waiting at most `wait`), then (Redis mode)
/// reads the outcome recorded elsewhere, so no callback slips between the
/// two. If Redis cannot be read, the waiter waits: the subscriber catches up
/// when Redis is back.
pub(crate) async fn subscribe(
    app: &App,
    id: PayRecordId,
    transport: Transport,
    wait: Duration,
) -> Result<Subscription, SubscribeError> {
    let subscription = app.hub.subscribe_via(id, transport, wait)?;
    let Subscription::Waiting(waiting) = subscription else {
        return Ok(subscription);
    };
    match app.backplane.catch_up(&app.hub, id).await {
        Ok(true) => {
            drop(waiting);
            app.hub.subscribe_via(id, transport, wait)
        }
        Ok(false) => Ok(Subscription::Waiting(waiting)),
        Err(e) => {
            log::debug!(
                "{} {id}: cannot read Redis ({}); waiting",
                transport.label(),
                e.0
            );
            Ok(Subscription::Waiting(waiting))
        }
    }
}

/// A backplane failure: the client should retry. The refusal itself is
/// logged once, as a warning, by the rejection handler; the subscriber logs
/// the outage once; the cause of each refusal is detail.
pub(crate) fn unavailable(e: Unavailable) -> ApiError {
    log::debug!("Redis unavailable: {}", e.0);
    ApiError::Unavailable("the outcome store (Redis) cannot be reached")
}

/// The store could not make a record durable: the client should retry.
fn store_failed(e: StoreError) -> ApiError {
    log::debug!("store failed: {e}");
    ApiError::Unavailable("the outcome store cannot write")
}

/// Why a callback's outcome was not recorded, as the API says it.
fn not_recorded(app: &App, error: RecordError) -> ApiError {
    match error {
        RecordError::Redis(e) => unavailable(e),
        RecordError::NoReplica => {
            ApiError::Unavailable("no Redis Cluster replica acknowledged the outcome in time")
        }
        RecordError::Refused(Refusal::Store(e)) => store_failed(e),
        RecordError::Refused(Refusal::Full) => {
            app.metrics.outcome_refused();
            ApiError::Unavailable("as many outcomes as --max-outcomes allows are remembered")
        }
    }
}

/// `/pay-callback`: authenticates and parses the request, records the
/// outcome (first one wins) and pushes it to every waiting stream.
pub async fn callback(request: CallbackRequest, app: App) -> Result<Response, Rejection> {
    let (claim, nonce_stored) = request.authenticate(&app).await?;
    let (id, status, completion) = match record_callback(&request, &app, nonce_stored).await {
        Ok(recorded) => {
            if let Some(claim) = claim {
                claim.keep();
            }
            recorded
        }
        Err(e) => {
            // Not recorded: the provider's retry of this very request must pass.
            if let Some(claim) = claim {
                claim.release().await;
            }
            return Err(e.into());
        }
    };
    let (outcome, duplicate) = match completion {
        Completion::Recorded { outcome, notified } => {
            log::info!("callback {id} {status}: recorded, {notified} streams notified");
            app.metrics.callback(status, CallbackResult::Recorded);
            if notified > 0 {
                // Let the woken streams write the outcome before this task
                // writes the provider's answer: the customer's page is the
                // latency that matters (measured: p50 -15 %, p99 slightly
                // lower at 5 000 callbacks/s).
                tokio::task::yield_now().await;
            }
            (outcome, false)
        }
        Completion::Duplicate(outcome) => {
            log::info!("callback {id} {status}: duplicate, nothing sent");
            app.metrics.callback(status, CallbackResult::Duplicate);
            (outcome, true)
        }
        Completion::Conflict(outcome) => {
            // The refusal itself is logged (rate-limited) with the error.
            log::debug!(
                "callback {id} {status}: conflicts with recorded {}",
                outcome.status
            );
            app.metrics.callback(status, CallbackResult::Conflict);
            return Err(ApiError::OutcomeConflict(outcome).into());
        }
    };
    Ok(warp::reply::json(&CallbackJson::new(&outcome, duplicate)).into_response())
}

/// Parses a callback and records its outcome (the nonce made durable
/// too): the payment, the status asked for and what became of it.
async fn record_callback(
    request: &CallbackRequest,
    app: &App,
    nonce_stored: Stored,
) -> Result<(PayRecordId, Status, Completion), ApiError> {
    let Callback {
        pay_record_id: id,
        status,
    } = request.parse()?;
    let recorded = match app
        .backplane
        .record(&app.hub, Outcome::new(id, status))
        .await
    {
        // The nonce went to the store before the outcome, so this rarely
        // waits; a replay after a restart must still be refused.
        Ok(completion) => nonce_stored
            .wait()
            .await
            .map(|()| completion)
            .map_err(|e| RecordError::Refused(Refusal::Store(e))),
        Err(e) => Err(e),
    };
    let completion = recorded.map_err(|e| not_recorded(app, e))?;
    Ok((id, status, completion))
}

/// `GET /healthz`
pub async fn healthz() -> Result<Response, Rejection> {
    Ok(warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response())
}

/// `GET /readyz`: `200` only when a callback for a new payment would be
/// answered `200` (see [`crate::backplane::Backplane::ready`]); else
/// `503 not_ready` saying which condition fails.
pub async fn readyz(app: App) -> Result<Response, Rejection> {
    app.backplane
        .ready(&app.hub)
        .await
        .map_err(ApiError::NotReady)?;
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

/// The client library (`clients/js/paypush.js`), built into the binary:
/// pages import it from here, so the page and the server always agree.
pub const CLIENT_JS: &str = include_str!("../clients/js/paypush.js");

/// How long a page (or a shared cache) may reuse `/paypush.js` before it
/// asks again; asking again costs a `304` while the ETag still matches.
/// Five minutes: a checkout page loads it once per visit, and a new release
/// reaches every page within that time.
pub const CLIENT_JS_CACHE_CONTROL: &str = "public, max-age=300";

/// The ETag of [`CLIENT_JS`]: a hash of its contents, computed once.
static CLIENT_JS_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(CLIENT_JS.as_bytes());
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    HeaderValue::from_str(&tag).expect("hex digits in quotes are a header value")
});

/// `GET /paypush.js`: the client library, or `304` when the request's
/// `If-None-Match` names its ETag (or is `*`).
pub async fn client_js(headers: HeaderMap) -> Result<Response, Rejection> {
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
pub async fn metrics(app: App) -> Result<Response, Rejection> {
    let text = app.metrics.render(app.hub.stats()).map_err(|e| {
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
