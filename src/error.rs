//! The API's errors and the one place that turns every rejection, ours or
//! warp's, into the contract's JSON: `{"error":"<code>","message":"<sentence>"}`.

use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reject::Rejection;
use warp::reply::{Reply, Response};

use crate::backplane::{RecordError, SubscribeError, Unavailable};
use crate::config::BODY_READ_TIMEOUT;
use crate::model::{InvalidCallback, Outcome, PayRecordId, Status};
use crate::signature::SignatureError;

/// Seconds a client is told to wait (`Retry-After`) when paypush is full or
/// cannot record an outcome.
pub(crate) const RETRY_AFTER_SECS: u32 = 5;

/// Everything the API refuses, with its status and code.
#[derive(Debug, Clone)]
pub(crate) enum ApiError {
    /// `payRecordId` is missing, repeated or not `[1-9][0-9]*` within `i64`.
    InvalidPayRecordId,
    /// `status` is not SUCCESS, FAILED or CLOSED.
    InvalidStatus,
    /// The callback body is not the JSON object or form it claims to be.
    InvalidBody(&'static str),
    /// A signed callback failed a check (which one is said).
    InvalidSignature(SignatureError),
    /// A subscribe token is required and missing or wrong.
    InvalidToken,
    /// A WebSocket request from a page of neither this server's origin nor
    /// an `--allow-origin` one (cross-site WebSocket hijacking).
    ForbiddenOrigin,
    /// A query string or header that cannot be read.
    InvalidRequest(&'static str),
    /// Not ready to take the callback of a new payment; why (e.g. the
    /// store cannot write, `--max-outcomes` reached, Redis unreachable).
    NotReady(&'static str),
    /// paypush cannot take the request now; the client should retry.
    Unavailable(&'static str),
    /// A different outcome is already recorded for the payment.
    OutcomeConflict(Arc<Outcome>),
    /// The payment has as many waiting streams as allowed.
    TooManyStreams(PayRecordId),
    /// The process has as many waiting streams as allowed.
    OverCapacity,
    /// The server is shutting down.
    ShuttingDown,
    /// No route has this path.
    NotFound,
    /// The route exists, the method does not; the route's methods, for the
    /// `Allow` header (e.g. `GET, POST`).
    MethodNotAllowed(&'static str),
    /// The body is over the limit.
    PayloadTooLarge,
    /// The body did not arrive in time (see [`BODY_READ_TIMEOUT`]).
    RequestTimeout,
    /// The body is neither form-encoded nor JSON.
    UnsupportedMediaType,
    /// Something paypush did not expect; logged.
    Internal,
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    message: String,
    #[serde(rename = "recordedStatus", skip_serializing_if = "Option::is_none")]
    recorded_status: Option<Status>,
}

impl ApiError {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidPayRecordId
            | ApiError::InvalidStatus
            | ApiError::InvalidBody(_)
            | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::InvalidToken | ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeConflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::OverCapacity | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case `error` code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidPayRecordId => "invalid_pay_record_id",
            ApiError::InvalidStatus => "invalid_status",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::InvalidToken => "invalid_token",
            ApiError::ForbiddenOrigin => "forbidden_origin",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::OutcomeConflict(_) => "outcome_conflict",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::OverCapacity => "over_capacity",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Internal => "internal_error",
        }
    }

    /// One human sentence.
    pub(crate) fn message(&self) -> String {
        match self {
            ApiError::InvalidPayRecordId => {
                "payRecordId must be given once, as a decimal integer from 1 to 9223372036854775807 without sign, spaces or leading zeros.".into()
            }
            ApiError::InvalidStatus => "status must be SUCCESS, FAILED or CLOSED.".into(),
            ApiError::InvalidBody(why) => format!("The callback body is not valid: {why}."),
            ApiError::InvalidSignature(why) => {
                format!("The callback signature is not valid: {why}.")
            }
            ApiError::InvalidToken => {
                "A valid subscribe token for this payment is required (token=...).".into()
            }
            ApiError::ForbiddenOrigin => {
                "This origin may not open a WebSocket here (see --allow-origin).".into()
            }
            ApiError::InvalidRequest(why) => format!("The request cannot be read: {why}."),
            ApiError::Unavailable(why) => format!("Unavailable: {why}; retry later."),
            ApiError::NotReady(why) => format!("Not ready: {why}."),
            ApiError::OutcomeConflict(outcome) => format!(
                "Payment {} already has the outcome {}; the first outcome wins.",
                outcome.pay_record_id, outcome.status
            ),
            ApiError::TooManyStreams(id) => {
                format!("Payment {id} has as many open streams as allowed; close one first.")
            }
            ApiError::OverCapacity => "The server holds as many streams as it can; retry later.".into(),
            ApiError::ShuttingDown => "The server is shutting down; retry on another instance.".into(),
            ApiError::NotFound => "No such route.".into(),
            ApiError::MethodNotAllowed(allow) => {
                format!("This route does not accept that HTTP method; it accepts {allow}.")
            }
            ApiError::PayloadTooLarge => "The request body is over 16 KiB.".into(),
            ApiError::RequestTimeout => format!(
                "The request body did not arrive within {} seconds of its headers.",
                BODY_READ_TIMEOUT.as_secs()
            ),
            ApiError::UnsupportedMediaType => {
                "Send the callback as application/x-www-form-urlencoded or application/json.".into()
            }
            ApiError::Internal => "Something went wrong on our side.".into(),
        }
    }

    fn retry_after(&self) -> Option<u32> {
        matches!(
            self,
            ApiError::OverCapacity
                | ApiError::ShuttingDown
                | ApiError::Unavailable(_)
                | ApiError::NotReady(_)
        )
        .then_some(RETRY_AFTER_SECS)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorJson {
            error: self.code(),
            message: self.message(),
            recorded_status: match &self {
                ApiError::OutcomeConflict(outcome) => Some(outcome.status),
                _ => None,
            },
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if matches!(self, ApiError::RequestTimeout) {
            // The rest of the body may still come: the connection cannot be
            // reused, and must not stay held by the slow client.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Maps any rejection to the contract's JSON error; the only recover in the app.
pub(crate) async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        // Every route checks its method with `routes::methods`, which names
        // them; warp's own rejection would be a route that forgot to.
        log::error!("405 without the route's methods: {rejection:?}");
        ApiError::MethodNotAllowed("GET")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::InvalidRequest("the query string is malformed")
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some() {
        ApiError::InvalidRequest("a header is malformed")
    } else {
        log::error!("unhandled rejection: {rejection:?}");
        ApiError::Internal
    };
    match error.status() {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            log::debug!("refused: {}", error.code())
        }
        _ => crate::refusals::refused(error.code(), error.message()),
    }
    Ok(error.into_response())
}

impl From<SignatureError> for ApiError {
    fn from(error: SignatureError) -> ApiError {
        ApiError::InvalidSignature(error)
    }
}

impl From<InvalidCallback> for ApiError {
    fn from(invalid: InvalidCallback) -> ApiError {
        match invalid {
            InvalidCallback::PayRecordId => ApiError::InvalidPayRecordId,
            InvalidCallback::Status => ApiError::InvalidStatus,
            InvalidCallback::NotAnObject => ApiError::InvalidBody("it must be a JSON object"),
            InvalidCallback::RepeatedKey => ApiError::InvalidBody("a key is repeated"),
        }
    }
}

impl ApiError {
    /// Why the backplane refused a waiter of payment `id`.
    pub(crate) fn refused(error: SubscribeError, id: PayRecordId) -> ApiError {
        match error {
            SubscribeError::TooManyStreams => ApiError::TooManyStreams(id),
            SubscribeError::OverCapacity => ApiError::OverCapacity,
            SubscribeError::ShuttingDown => ApiError::ShuttingDown,
        }
    }

    /// Redis could not be read: the client should retry. The refusal itself
    /// is logged once, as a warning, by the rejection handler; the
    /// subscriber logs the outage once; the cause of each refusal is detail.
    pub(crate) fn unavailable(e: Unavailable) -> ApiError {
        log::debug!("Redis unavailable: {e}");
        ApiError::Unavailable("the outcome store (Redis) cannot be reached")
    }

    /// Why a callback's outcome (or its nonce) was not recorded, as the API
    /// says it: always `503`, so the provider retries.
    pub(crate) fn not_recorded(error: RecordError) -> ApiError {
        match error {
            RecordError::Redis(e) => ApiError::unavailable(e),
            RecordError::NoReplica => {
                ApiError::Unavailable("no Redis Cluster replica acknowledged the outcome in time")
            }
            RecordError::Store(e) => {
                log::debug!("store failed: {e}");
                ApiError::Unavailable("the outcome store cannot write")
            }
            RecordError::Full => {
                ApiError::Unavailable("as many outcomes as --max-outcomes allows are remembered")
            }
            RecordError::TooManyNonces => {
                ApiError::Unavailable("too many signed callbacks at once")
            }
        }
    }
}
