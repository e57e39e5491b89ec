//! paypush's HTTP contract, proven against real servers over real TCP.

mod callback;
mod cli;
mod client_js;
mod cors;
mod demo_page;
mod deploy;
mod errors;
mod h2c;
mod lifecycle;
mod limits;
mod logging;
mod metrics;
mod openapi;
mod push;
mod qr;
mod signatures;
mod status;
mod store;
/// Shared with the other test binaries, which use other parts of it.
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;
mod tokens;
mod ws;
