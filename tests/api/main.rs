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
#[path = "../support/mod.rs"]
mod support;
mod ws;
