//! The command line: what to open, what to send, how fast, and when a
//! waiter counts as subscribed ([`Args`], [`Transport`], [`Ready`]).

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// The default callback body for `POST`: the outcome itself, which is what
/// nchan relays to its subscribers and what paypush reads as JSON.
pub(crate) const DEFAULT_BODY: &str = r#"{"payRecordId":"{id}","status":"SUCCESS"}"#;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Opens SSE streams, fires callbacks, measures latency and memory")]
pub(crate) struct Args {
    /// Stream URL template; `{id}` becomes the payment id. Repeat it for
    /// several instances: stream `i` goes to the `i % n`-th.
    #[arg(long, required = true)]
    pub(crate) subscribe: Vec<String>,
    /// Callback: `METHOD URL-template`, e.g. `GET http://127.0.0.1:8080/pay-callback?payRecordId={id}`.
    /// Repeat it for several instances: publisher connection `c` uses the `c % n`-th.
    #[arg(long, required = true)]
    pub(crate) publish: Vec<String>,
    /// Body template for a `POST` callback (sent as `application/json`).
    #[arg(long, default_value = DEFAULT_BODY)]
    pub(crate) body: String,
    /// Streams to open, one payment each.
    #[arg(long, default_value_t = 0)]
    pub(crate) streams: usize,
    /// Callbacks to send (default: one per stream). The first ones go to the
    /// streams' payments, any beyond `--streams` to payments with no stream.
    #[arg(long)]
    pub(crate) callbacks: Option<usize>,
    /// Callbacks per second; 0 sends flat out.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Keep-alive connections that send callbacks.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// The longest the callback phase may last.
    #[arg(long, default_value = "60s")]
    pub(crate) duration: humantime::Duration,
    /// How long to wait, after the last callback, for outcomes still missing.
    #[arg(long, default_value = "5s")]
    pub(crate) deadline: humantime::Duration,
    /// The longest opening the streams may take.
    #[arg(long, default_value = "120s")]
    pub(crate) open_timeout: humantime::Duration,
    /// Stop opening when no stream got subscribed for this long (a server at
    /// its connection limit leaves the rest hanging).
    #[arg(long, default_value = "5s")]
    pub(crate) stall: humantime::Duration,
    /// Pause between the streams being open and the memory reading.
    #[arg(long, default_value = "1s")]
    pub(crate) settle: humantime::Duration,
    /// Stream connections in progress at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.2, ...).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub(crate) sources: u8,
    /// When a stream counts as subscribed.
    #[arg(long, value_enum, default_value_t = Ready::Auto)]
    pub(crate) ready: Ready,
    /// Server process ids whose memory is read (comma-separated; summed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_pid: Vec<u32>,
    /// First payment id (default: from the clock, so runs never reuse ids).
    #[arg(long)]
    pub(crate) id_base: Option<u64>,
    /// A name for this run, copied into the JSON line.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// How a waiter waits: an event stream, a long-poll, or a WebSocket.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub(crate) transport: Transport,
    /// Carry the event streams over this many HTTP/2 cleartext (h2c, prior
    /// knowledge) connections, as a proxy does upstream, instead of one
    /// HTTP/1.1 connection each (0). SSE only.
    #[arg(long, default_value_t = 0)]
    pub(crate) h2c_connections: usize,
}

/// How a waiter waits for its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// Server-Sent Events (`/push`, nchan's eventsource).
    Sse,
    /// A long-poll (`/status?wait=25`, nchan's longpoll).
    Poll,
    /// A WebSocket (`/ws`, nchan's websocket).
    Ws,
}

/// When a stream counts as subscribed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Ready {
    /// Probe one stream: `pending` if the server sends that event, else `headers`.
    Auto,
    /// After an `event: pending` (paypush).
    Pending,
    /// After a `200` response head (nchan).
    Headers,
}
