//! What both Redis modes share: how long Redis may take, how outcomes are
//! written as Redis values and pub/sub messages, and the hand-off of a
//! published outcome to the hub.

use std::time::{Duration, UNIX_EPOCH};

use super::errors::Unavailable;
use crate::hub::Hub;
use crate::model::{Outcome, PayRecordId, Status};

/// Key prefix of remembered nonces: `paypush:nonce:<nonce>`.
pub(super) const NONCE_KEY: &str = "paypush:nonce:";
/// How long a Redis command, or a connection attempt, may take before the
/// request that needs it is answered `503`.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between subscriber reconnection attempts.
pub(super) const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));
/// What subscription probes start with; every instance ignores them.
pub(super) const PROBE_PREFIX: &str = "probe:";
/// Why paypush is not ready when Redis does not answer.
pub(super) const REDIS_UNREACHABLE: &str = "Redis cannot be reached";
/// Payments re-read per `MGET` (or pipeline) when catching up.
pub(super) const CATCH_UP_BATCH: usize = 500;

/// Hands a published outcome to the hub; probes and strangers are ignored.
pub(super) fn deliver(hub: &Hub, payload: &str) {
    if payload.starts_with(PROBE_PREFIX) {
        return;
    }
    match decode_message(payload) {
        Some(outcome) => {
            hub.deliver(outcome);
        }
        None => log::warn!("ignored an unreadable pub/sub message"),
    }
}

/// `SET NX PX` of a signed callback's nonce on `commands`: true when it
/// is new. Both Redis modes remember nonces this way.
pub(super) async fn remember_nonce_in(
    commands: &mut (impl redis::aio::ConnectionLike + Send + Sync),
    nonce: &str,
    memory: Duration,
) -> Result<bool, Unavailable> {
    let options = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::NX)
        .with_expiration(redis::SetExpiry::PX(millis(memory)));
    let set: Option<String> = with_timeout(redis::AsyncCommands::set_options(
        commands,
        format!("{NONCE_KEY}{nonce}"),
        1,
        options,
    ))
    .await?;
    Ok(set.is_some())
}

/// Runs a Redis command with [`REDIS_TIMEOUT`].
pub(super) async fn with_timeout<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(REDIS_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Unavailable(format!(
            "Redis did not answer within {REDIS_TIMEOUT:?}"
        ))),
    }
}

/// The next batch from `queue`: what it holds once something is there
/// (at most `max`); `None` once the queue is closed or `hub` shuts down.
pub(super) async fn next_batch<T>(
    queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    max: usize,
    hub: &Hub,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        item = queue.recv() => item?,
        _ = hub.closed() => return None,
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// A duration in whole milliseconds, as Redis takes it.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A recorded outcome's value: `STATUS:completedAtMillis`.
pub(super) fn encode_value(outcome: &Outcome) -> String {
    let ms = outcome
        .completed_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}:{ms}", outcome.status)
}

/// Reads a value written by [`encode_value`].
pub(super) fn decode_value(id: PayRecordId, value: &str) -> Option<Outcome> {
    let (status, ms) = value.split_once(':')?;
    Some(Outcome {
        pay_record_id: id,
        status: status.parse::<Status>().ok()?,
        completed_at: UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?),
    })
}

/// A published outcome: `payRecordId:STATUS:completedAtMillis`.
pub(super) fn encode_message(outcome: &Outcome) -> String {
    format!("{}:{}", outcome.pay_record_id, encode_value(outcome))
}

/// Reads a message written by [`encode_message`].
pub(super) fn decode_message(message: &str) -> Option<Outcome> {
    let (id, value) = message.split_once(':')?;
    decode_value(PayRecordId::parse(id).ok()?, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_trip_through_redis_values_and_messages() {
        let id = PayRecordId::parse("9223372036854775807").unwrap();
        let outcome = Outcome {
            pay_record_id: id,
            status: Status::Closed,
            completed_at: UNIX_EPOCH + Duration::from_millis(1_795_636_968_695),
        };
        assert_eq!(
            decode_value(id, &encode_value(&outcome)),
            Some(outcome.clone())
        );
        assert_eq!(decode_message(&encode_message(&outcome)), Some(outcome));
        assert_eq!(decode_message("x:SUCCESS:1"), None);
        assert_eq!(decode_value(id, "PAID:1"), None);
    }

    #[test]
    fn the_event_id_survives_the_trip() {
        let outcome = Outcome::new(PayRecordId::parse("1").unwrap(), Status::Success);
        let back = decode_value(outcome.pay_record_id, &encode_value(&outcome)).unwrap();
        assert_eq!(back.event_id(), outcome.event_id());
    }
}
