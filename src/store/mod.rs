//! The store: outcomes and nonces on disk (see `folder` for now; this
//! folder is being split by job).

mod folder;
pub mod record;

pub use folder::{
    segment_span, Durability, OpenError, Replay, Store, StoreConfig, StoreError, RETRY_PAUSE,
};
pub use record::Record;
