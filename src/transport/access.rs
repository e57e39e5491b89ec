//! Who may watch a payment: the `payRecordId` a subscribe request (`/push`,
//! `/status`, `/ws`) names, and, with a subscribe secret, its token.

use crate::app::App;
use crate::error::ApiError;
use crate::model::{single, PayRecordId};
use crate::signature;

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
