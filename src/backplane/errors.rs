//! The backplane's errors: the one type a refused record reaches the API
//! as, and a Redis that failed or did not answer.

use std::fmt;

use crate::store::StoreError;

/// Redis failed or did not answer in time.
#[derive(Debug)]
pub(crate) struct Unavailable(pub(crate) String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        Unavailable(e.to_string())
    }
}

/// Why a callback's outcome (or its nonce) was not recorded: every mode's
/// refusals, as one type. Each means "retry": the callback gets `503`.
#[derive(Debug)]
pub(crate) enum RecordError {
    /// Redis failed or did not answer in time.
    Redis(Unavailable),
    /// Recorded on a Redis Cluster shard's primary, but no replica
    /// acknowledged it in time: a failover could lose it.
    NoReplica,
    /// `--max-outcomes` outcomes are remembered already.
    Full,
    /// The store could not make it durable.
    Store(StoreError),
    /// Too many signed callbacks' nonces are remembered at once.
    TooManyNonces,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Redis(e) => write!(f, "Redis: {e}"),
            RecordError::NoReplica => f.write_str("no Redis Cluster replica acknowledged in time"),
            RecordError::Full => f.write_str("--max-outcomes outcomes are remembered"),
            RecordError::Store(e) => write!(f, "the store cannot write: {e}"),
            RecordError::TooManyNonces => f.write_str("too many nonces are remembered"),
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordError::Redis(e) => Some(e),
            RecordError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Unavailable> for RecordError {
    fn from(e: Unavailable) -> Self {
        RecordError::Redis(e)
    }
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Store(e)
    }
}
