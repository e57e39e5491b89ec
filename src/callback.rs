//! `/pay-callback`: the payment provider's notification. A request is
//! authenticated (signed mode: its signature, then its nonce, remembered
//! where the backplane keeps them), parsed, and its outcome recorded through
//! the backplane (first one wins); every waiter of the payment then gets it.

use std::time::SystemTime;

use bytes::Bytes;
use warp::http::header::CONTENT_TYPE;
use warp::http::{HeaderMap, Method};
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::app::App;
use crate::backplane::{Completion, Durable, Nonce, RecordError};
use crate::error::ApiError;
use crate::metrics::CallbackResult;
use crate::model::{Callback, CallbackJson, Outcome, PayRecordId, Status};
use crate::signature::{self, SignatureError, SignatureHeaders, SignedParts};

/// A `/pay-callback` request as received: what is signed, and where its
/// fields are (the query for GET, the body for POST).
#[derive(Debug)]
pub(crate) struct CallbackRequest {
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
    /// nonce's claim (signed mode) and a [`Durable`] that resolves once it is
    /// durable.
    async fn authenticate(&self, app: &App) -> Result<(Option<NonceClaim>, Durable), ApiError> {
        let Some(secret) = &app.config.callback_secret else {
            return Ok((None, Durable::now()));
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
        let nonce = app.backplane.remember_nonce(&headers.nonce).await;
        match nonce {
            Ok(Nonce::Fresh(stored)) => Ok((Some(claim), stored)),
            // Another request's nonce, or none remembered: nothing to forget.
            Ok(Nonce::Replayed) => {
                claim.keep();
                Err(SignatureError::ReplayedNonce.into())
            }
            Err(e @ RecordError::TooManyNonces) => {
                claim.keep();
                Err(ApiError::not_recorded(e))
            }
            // The SET may have landed: the claim forgets it.
            Err(e) => Err(ApiError::not_recorded(e)),
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
        if let Err(e) = self.app.backplane.forget_nonce(&nonce).await {
            log::debug!("cannot forget the nonce of a callback not recorded: {e}");
        }
    }
}

impl Drop for NonceClaim {
    fn drop(&mut self) {
        if let Some(nonce) = self.nonce.take() {
            self.app.backplane.forget_nonce_later(nonce);
        }
    }
}

/// `/pay-callback`: authenticates and parses the request, records the
/// outcome (first one wins) and pushes it to every waiting stream.
pub(crate) async fn callback(request: CallbackRequest, app: App) -> Result<Response, Rejection> {
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
    nonce_stored: Durable,
) -> Result<(PayRecordId, Status, Completion), ApiError> {
    let Callback {
        pay_record_id: id,
        status,
    } = request.parse()?;
    let recorded = async {
        let completion = app.backplane.record(Outcome::new(id, status)).await?;
        // The nonce went to the store before the outcome, so this rarely
        // waits; a replay after a restart must still be refused.
        nonce_stored.wait().await?;
        Ok::<_, RecordError>(completion)
    };
    let completion = recorded.await.map_err(|e| {
        if let RecordError::Full = e {
            app.metrics.outcome_refused();
        }
        ApiError::not_recorded(e)
    })?;
    Ok((id, status, completion))
}
