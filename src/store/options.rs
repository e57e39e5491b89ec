//! The store's options: [`Durability`] (when a record counts as stored) and
//! [`StoreConfig`] (where records are kept, and how long each kind lives).
//!
//! A leaf but for the record format (a record's kind and time): it must not
//! import the writer, the segments, the folder or the store's handle, which
//! all read it.

use std::path::PathBuf;
use std::time::Duration;

use super::record::{unix_millis, Record};

/// When a callback's `200` may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After `fdatasync`: survives a power cut.
    Disk,
    /// After `write`: survives a crash of paypush, not of the machine.
    Process,
}

/// Where and how the store keeps its records.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data folder.
    pub dir: PathBuf,
    /// When a record counts as stored.
    pub durability: Durability,
    /// How long outcomes are kept.
    pub outcome_ttl: Duration,
    /// How long nonces are kept.
    pub nonce_memory: Duration,
}

impl StoreConfig {
    /// How long a record of this kind is kept after its time.
    fn retention(&self, record: &Record) -> Duration {
        match record {
            Record::Outcome(_) => self.outcome_ttl,
            Record::Nonce { .. } => self.nonce_memory,
        }
    }

    /// Unix ms after which `record` may leave the disk.
    pub(super) fn expiry_millis(&self, record: &Record) -> u64 {
        unix_millis(record.time() + self.retention(record))
    }
}
