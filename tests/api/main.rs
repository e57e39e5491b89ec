//! paypush's HTTP contract, proven against real servers over real TCP.

mod callback;
mod deploy;
mod errors;
mod h2c;
mod hardening;
mod lifecycle;
mod openapi;
mod push;
mod qr;
mod security;
mod status;
mod store;
/// Shared with the other test binaries, which use other parts of it.
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;
mod ws;
