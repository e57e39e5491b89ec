//! paypush's HTTP contract, proven against real servers over real TCP.

mod callback;
mod client_js;
mod deploy;
mod errors;
mod h2c;
mod hardening;
mod helpers;
mod lifecycle;
mod openapi;
mod push;
mod qr;
mod security;
mod status;
mod store;
mod ws;
