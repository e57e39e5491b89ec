//! paypush tells a waiting checkout page, the instant it happens, that its
//! payment went through.
//!
//! A page opens `GET /push?payRecordId=123`, a Server-Sent Events stream; the
//! payment provider calls `/pay-callback?payRecordId=123`; paypush pushes the
//! outcome to every stream of that payment and ends them. The HTTP contract is
//! in the README's "API" section.
//!
//! # Layout
//!
//! - [`backplane`]: in-memory vs Redis: where outcomes are decided and how
//!   they reach other instances; [`backplane::cluster`] on a Redis Cluster,
//!   a sharded channel per waiting payment.
//! - [`config`]: flags and environment variables (clap).
//! - [`model`]: `PayRecordId`, `Status`, `Outcome`, `Callback`: parsed once at the edge.
//! - [`hub`]: the registry of waiting streams (oneshot senders) and remembered
//!   outcomes with their TTL; the only place that locks.
//! - [`routes`]: warp filters, one per route; [`handlers`]: what they call.
//! - [`sse`]: a subscription turned into its event stream.
//! - [`qr`]: the demo page's payment QR code (SVG).
//! - [`error`]: the API's errors and the one rejection-to-JSON mapping.
//! - [`metrics`]: Prometheus counters and the `/metrics` text.
//! - [`app`]: the shared [`app::App`]: hub, backplane, metrics, configuration.
//! - [`server`]: the HTTP loop with graceful shutdown.
//! - [`shutdown`]: waits for SIGINT or SIGTERM.
//! - [`signature`]: callback HMAC signatures, subscribe tokens, the redacting `Secret`.

pub mod app;
pub mod backplane;
pub mod config;
pub mod error;
pub mod handlers;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod qr;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod sse;
pub mod store;
