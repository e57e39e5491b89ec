//! paypush tells a waiting checkout page, the instant it happens, that its
//! payment went through.
//!
//! A page opens `GET /push?payRecordId=123`, a Server-Sent Events stream; the
//! payment provider calls `/pay-callback?payRecordId=123`; paypush pushes the
//! outcome to every stream of that payment and ends them. The HTTP contract is
//! `docs/api.md` (and `docs/openapi.yaml`); `ARCHITECTURE.md` is the map.
//!
//! # Layout
//!
//! The HTTP side, which asks the backplane and nothing below it:
//! - [`server`]: the accept loop, listeners and every connection's deadlines.
//! - `routes`: warp filters, one per route; `handlers`: health, readiness,
//!   metrics, the OpenAPI document, the demo page's files and `/paypush.js`.
//! - `transport`: the three ways to wait, siblings, each with its handler
//!   (`sse` for `/push`, `poll` for `/status`, `ws` for `/ws`).
//! - `callback`: `/pay-callback`: signature, nonce, recording.
//! - `error`: the API's errors and the one rejection-to-JSON mapping;
//!   `refusals`: refused requests logged at most once a second per kind;
//!   `cors`: CORS headers for the `--allow-origin` list only.
//!
//! The door and what is below it, which know no HTTP:
//! - `backplane`: the one door for payments, in memory, over Redis or a
//!   Redis Cluster; it owns the hub.
//! - [`hub`]: each instance's registry of waiters and remembered outcomes.
//! - `store`: the segment log that makes outcomes and nonces durable.
//!
//! Around them: [`app`] (puts the layers together), [`cli`] (the command
//! line), [`config`] (flags and environment variables), [`model`] (ids,
//! statuses, outcomes, parsed once at the edge), [`signature`] (callback
//! HMAC, subscribe tokens, the redacting `Secret`), `metrics`, [`qr`] (the
//! demo page's QR code), `shutdown` (SIGINT and SIGTERM). Only the modules
//! the binary, the tests and the benchmarks use are public.

#![deny(missing_docs, unreachable_pub)]

pub mod app;
pub(crate) mod backplane;
pub(crate) mod callback;
pub mod cli;
pub mod config;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod handlers;
pub mod hub;
pub(crate) mod metrics;
pub mod model;
pub mod qr;
pub(crate) mod refusals;
pub(crate) mod routes;
pub mod server;
pub(crate) mod shutdown;
pub mod signature;
pub(crate) mod store;
pub(crate) mod transport;
