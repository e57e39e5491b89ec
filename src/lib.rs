//! paypush tells a waiting checkout page, the instant it happens, that its
//! payment went through.
//!
//! A page opens `GET /push?payRecordId=123`, a Server-Sent Events stream; the
//! payment provider calls `/pay-callback?payRecordId=123`; paypush pushes the
//! outcome to every stream of that payment and ends them. The HTTP contract is
//! in `docs/api.md` (and, machine-readable, `docs/openapi.yaml`).
//!
//! # Layout
//!
//! - [`backplane`]: in-memory vs Redis: where outcomes are decided and how
//!   they reach other instances; [`backplane::cluster`] on a Redis Cluster,
//!   a sharded channel per waiting payment.
//! - [`config`]: flags and environment variables (clap).
//! - [`model`]: `PayRecordId`, `Status`, `Outcome`, `Callback`: parsed once at the edge.
//! - [`hub`]: the registry of waiters of every transport (oneshot senders) and remembered
//!   outcomes with their TTL; the only place that locks.
//! - [`routes`]: warp filters, one per route; [`handlers`]: what they call.
//! - [`sse`], [`poll`], [`ws`]: the transports, siblings: each turns the
//!   hub's one waiter handle into its wire format (an event stream, one
//!   long-poll JSON answer, WebSocket frames).
//! - [`qr`]: the demo page's payment QR code (SVG).
//! - [`error`]: the API's errors and the one rejection-to-JSON mapping.
//! - [`refusals`]: refused requests logged at most once a second per kind.
//! - [`metrics`]: Prometheus counters and the `/metrics` text.
//! - [`app`]: the shared [`app::App`]: hub, backplane, metrics, configuration.
//! - [`server`]: the HTTP loop with graceful shutdown and every
//!   connection's deadlines; [`preface`]: HTTP/1.1 or h2c, from a
//!   connection's first bytes.
//! - [`cors`]: CORS headers for the `--allow-origin` list, none for anyone else.
//! - [`shutdown`]: waits for SIGINT or SIGTERM.
//! - [`signature`]: callback HMAC signatures, subscribe tokens, the redacting `Secret`.

pub mod app;
pub mod backplane;
pub mod callback;
pub mod cli;
pub mod config;
pub mod cors;
pub mod error;
pub mod handlers;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod qr;
pub mod refusals;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod transport;
