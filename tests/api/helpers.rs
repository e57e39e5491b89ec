//! The old place of the shared test support, now `tests/support/mod.rs`:
//! kept only for `tests/browser.rs` and `tests/clients.rs`, which still
//! include this path. Remove once they include `tests/support/` directly.

#[path = "../support/mod.rs"]
mod support;

pub use support::*;
