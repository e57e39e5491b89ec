//! `loadgen`: a load generator for paypush and for any other Server-Sent
//! Events push server (nginx + nchan is the peer it is compared with).
//!
//! `--transport` says how a waiter waits: `sse` (an event stream, the
//! default), `poll` (a long-poll: `GET` until an answer that is not
//! `PENDING`, again on the same connection after each `PENDING`), or `ws`
//! (a WebSocket: text frames, `PENDING` then the outcome). Everything below
//! says "stream" for any of them.
//!
//! One run does, in order:
//!
//! 1. reads the server's memory (`--server-pid`, RSS from `/proc/PID/status`
//!    and Pss from `/proc/PID/smaps_rollup`, summed over the pids given);
//! 2. opens `--streams` event streams, one per payment id, over several
//!    loopback source addresses (127.0.0.2, 127.0.0.3, ...: each has its own
//!    ephemeral ports), and waits until each is *subscribed*: it has seen
//!    `event: pending` (paypush), or its response headers (nchan sends no
//!    pending event); `--ready auto` finds out which with one probe stream;
//! 3. reads the server's memory again: the difference over the streams held
//!    is the memory per waiting stream;
//! 4. sends `--callbacks` callbacks over `--connections` keep-alive
//!    connections, at `--rate` per second or flat out (`--rate 0`): the first
//!    ones go to the payments that have a stream, the rest to payments nobody
//!    watches; the phase stops after `--duration` whatever is left;
//! 5. waits up to `--deadline` for the outcome on every stream whose callback
//!    was accepted, then prints a table and one JSON line, and exits.
//!
//! Latency is per payment: from just before the callback request is written
//! to the moment the outcome event is read on that payment's stream. An
//! outcome that does not arrive by the deadline is *lost*; a second outcome
//! event on one stream (in the read that brought the first: the client then
//! closes, as a checkout page does) is a *duplicate*.
//!
//! HTTP/1.1 is written and read by hand over tokio TCP (identity, chunked or
//! close-delimited bodies): the tool should cost as little CPU and memory as
//! possible, since it shares the machine with the server it measures. It only
//! talks to loopback addresses, and every phase is bounded in count and time.
//!
//! ```text
//! cargo run --release --example loadgen -- \
//!     --subscribe 'http://127.0.0.1:8080/push?payRecordId={id}' \
//!     --publish 'GET http://127.0.0.1:8080/pay-callback?payRecordId={id}' \
//!     --streams 15000 --callbacks 5000 --rate 2000 --server-pid "$(pidof paypush)"
//!
//! cargo run --release --example loadgen -- \
//!     --subscribe 'http://127.0.0.1:18081/sub/{id}' \
//!     --publish 'POST http://127.0.0.1:18081/pub/{id}' \
//!     --streams 10000 --callbacks 0 --server-pid "$MASTER,$WORKER"
//!
//! cargo run --release --example loadgen -- --transport ws \
//!     --subscribe 'http://127.0.0.1:8080/ws?payRecordId={id}' \
//!     --publish 'GET http://127.0.0.1:8080/pay-callback?payRecordId={id}' \
//!     --streams 15000 --callbacks 5000 --rate 2000
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// The largest response head read (status line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bytes read at a time from a stream or a publisher connection.
const READ_CHUNK: usize = 2048;
/// How long the `--ready auto` probe waits for a `pending` event.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long one connect or one callback exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the main task looks at the counters while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The key of the WebSocket handshake: any 16 bytes, base64; the answer's
/// `Sec-WebSocket-Accept` is not checked (loopback servers under test).
const WS_KEY: &str = "cGF5cHVzaC1sb2FkZ2VuIQ==";
/// WebSocket opcodes.
const WS_TEXT: u8 = 0x1;
const WS_BINARY: u8 = 0x2;
const WS_CLOSE: u8 = 0x8;
const WS_PING: u8 = 0x9;
/// The default callback body for `POST`: the outcome itself, which is what
/// nchan relays to its subscribers and what paypush reads as JSON.
const DEFAULT_BODY: &str = r#"{"payRecordId":"{id}","status":"SUCCESS"}"#;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Opens SSE streams, fires callbacks, measures latency and memory")]
struct Args {
    /// Stream URL template; `{id}` becomes the payment id. Repeat it for
    /// several instances: stream `i` goes to the `i % n`-th.
    #[arg(long, required = true)]
    subscribe: Vec<String>,
    /// Callback: `METHOD URL-template`, e.g. `GET http://127.0.0.1:8080/pay-callback?payRecordId={id}`.
    /// Repeat it for several instances: publisher connection `c` uses the `c % n`-th.
    #[arg(long, required = true)]
    publish: Vec<String>,
    /// Body template for a `POST` callback (sent as `application/json`).
    #[arg(long, default_value = DEFAULT_BODY)]
    body: String,
    /// Streams to open, one payment each.
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// Callbacks to send (default: one per stream). The first ones go to the
    /// streams' payments, any beyond `--streams` to payments with no stream.
    #[arg(long)]
    callbacks: Option<usize>,
    /// Callbacks per second; 0 sends flat out.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Keep-alive connections that send callbacks.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The longest the callback phase may last.
    #[arg(long, default_value = "60s")]
    duration: humantime::Duration,
    /// How long to wait, after the last callback, for outcomes still missing.
    #[arg(long, default_value = "5s")]
    deadline: humantime::Duration,
    /// The longest opening the streams may take.
    #[arg(long, default_value = "120s")]
    open_timeout: humantime::Duration,
    /// Stop opening when no stream got subscribed for this long (a server at
    /// its connection limit leaves the rest hanging).
    #[arg(long, default_value = "5s")]
    stall: humantime::Duration,
    /// Pause between the streams being open and the memory reading.
    #[arg(long, default_value = "1s")]
    settle: humantime::Duration,
    /// Stream connections in progress at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.2, ...).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// When a stream counts as subscribed.
    #[arg(long, value_enum, default_value_t = Ready::Auto)]
    ready: Ready,
    /// Server process ids whose memory is read (comma-separated; summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// First payment id (default: from the clock, so runs never reuse ids).
    #[arg(long)]
    id_base: Option<u64>,
    /// A name for this run, copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// How a waiter waits: an event stream, a long-poll, or a WebSocket.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    transport: Transport,
    /// Carry the event streams over this many HTTP/2 cleartext (h2c, prior
    /// knowledge) connections, as a proxy does upstream, instead of one
    /// HTTP/1.1 connection each (0). SSE only.
    #[arg(long, default_value_t = 0)]
    h2c_connections: usize,
}

/// How a waiter waits for its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
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
enum Ready {
    /// Probe one stream: `pending` if the server sends that event, else `headers`.
    Auto,
    /// After an `event: pending` (paypush).
    Pending,
    /// After a `200` response head (nchan).
    Headers,
}

/// A parsed `http://host:port/path` template.
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// Parses `http://HOST[:PORT]/PATH`; HOST must be a loopback address.
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {port}"))?,
            ),
            None => (authority, 80),
        };
        let ip: IpAddr = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other
                .parse()
                .map_err(|_| format!("{url}: the host must be an IPv4 address or localhost"))?,
        };
        if !ip.is_loopback() || !ip.is_ipv4() {
            return Err(format!("{url}: only IPv4 loopback targets (127.0.0.0/8)"));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path: path.to_string(),
        })
    }

    fn path_for(&self, id: u64) -> String {
        self.path.replace("{id}", &id.to_string())
    }
}

/// What one stream has become; stored in [`StreamSlot::state`].
mod state {
    pub const CONNECTING: u8 = 0;
    pub const READY: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const FAILED: u8 = 3;
    /// Was subscribed, then ended before its outcome.
    pub const ENDED_EARLY: u8 = 4;
    /// Got its outcome (and possibly the end of the stream).
    pub const DONE: u8 = 5;
}

/// What the tasks record about one payment.
#[derive(Default)]
struct StreamSlot {
    state: AtomicU8,
    /// Nanoseconds since the epoch of the run when the callback was written; 0: none.
    sent_at: AtomicU64,
    /// Nanoseconds since the epoch of the run when the outcome was read; 0: none.
    received_at: AtomicU64,
    /// Outcome events seen on the stream (more than 1: duplicates).
    outcomes: AtomicU32,
    /// `event: timeout` seen.
    timeouts: AtomicU32,
}

/// State shared by every task of a run.
struct Shared {
    epoch: Instant,
    id_base: u64,
    streams: Vec<StreamSlot>,
    ready: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    /// Why streams failed: `step: error kind` -> count.
    failures: std::sync::Mutex<BTreeMap<String, usize>>,
    /// Statuses of refused streams, e.g. 503 (index: status / 100).
    refused_statuses: [AtomicUsize; 6],
    /// Callbacks answered 2xx / otherwise / with a connection error.
    callbacks_ok: AtomicUsize,
    callbacks_rejected: AtomicUsize,
    callbacks_failed: AtomicUsize,
    /// Callback round trips, nanoseconds, one per answered callback.
    round_trips: std::sync::Mutex<Vec<u64>>,
    first_sent: AtomicU64,
    last_answered: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// Picks the source address of connection `n`: 127.0.0.2, 127.0.0.3, ...
fn source(n: usize, sources: u8) -> SocketAddr {
    let last = 2 + u8::try_from(n % usize::from(sources)).unwrap_or(0);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)
}

async fn connect(target: SocketAddr, from: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(from)?;
    let stream = timeout(IO_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a response body is framed.
#[derive(Debug)]
enum Framing {
    Length(usize),
    Chunked(Chunked),
    Close,
}

/// A response head: status and body framing, plus whatever body bytes came
/// with it.
struct Head {
    status: u16,
    framing: Framing,
    close: bool,
    rest: Vec<u8>,
}

/// Reads a response head from `io`; `buf` holds bytes already read.
async fn read_head(io: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("response head too large"));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut framing = Framing::Close;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.parse().map_err(|_| invalid("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked(Chunked::default());
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let rest = buf[end + 4..].to_vec();
    buf.clear();
    Ok(Head {
        status,
        framing,
        close,
        rest,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
struct Chunked {
    step: ChunkStep,
    size: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkStep {
    /// Reading the hexadecimal size.
    #[default]
    Size,
    /// Skipping extensions up to the line feed.
    SizeLine,
    /// `size` data bytes left.
    Data,
    /// Skipping the CRLF after the data.
    DataEnd,
    /// The last chunk was read.
    End,
}

impl Chunked {
    /// Feeds raw bytes; data bytes go to `out`. Returns true at the end of the body.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        while !input.is_empty() {
            match self.step {
                ChunkStep::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            self.size = self.size.saturating_mul(16).saturating_add(d as usize)
                        }
                        None if b == b'\n' => self.start_data(),
                        None => self.step = ChunkStep::SizeLine,
                    }
                }
                ChunkStep::SizeLine => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.start_data();
                    }
                }
                ChunkStep::Data => {
                    let n = self.size.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.size -= n;
                    if self.size == 0 {
                        self.step = ChunkStep::DataEnd;
                    }
                }
                ChunkStep::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.step = ChunkStep::Size;
                    }
                }
                ChunkStep::End => return true,
            }
        }
        self.step == ChunkStep::End
    }

    fn start_data(&mut self) {
        self.step = if self.size == 0 {
            ChunkStep::End
        } else {
            ChunkStep::Data
        };
    }
}

/// What an SSE event was.
#[derive(Debug, PartialEq, Eq)]
enum SseEvent {
    Pending,
    Timeout,
    Outcome,
    Other,
}

/// An incremental Server-Sent Events parser: only event names and whether
/// there was data matter here.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(SseEvent)) {
        for &b in input {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                if self.has_data {
                    on_event(match self.event.as_slice() {
                        b"pending" => SseEvent::Pending,
                        b"timeout" => SseEvent::Timeout,
                        b"" | b"message" => SseEvent::Outcome,
                        _ => SseEvent::Other,
                    });
                }
                self.event.clear();
                self.has_data = false;
            } else if let Some(name) = self.line.strip_prefix(b"event:") {
                self.event = name.strip_prefix(b" ").unwrap_or(name).to_vec();
            } else if self.line.starts_with(b"data:") {
                self.has_data = true;
            }
            self.line.clear();
        }
    }
}

/// One stream: subscribe, wait for the outcome, then close the connection,
/// as a checkout page does (`EventSource.close()` on the outcome): paypush
/// ends its streams after the outcome and nchan does not, so closing on the
/// client side makes both servers pay the same teardown. Events in the same
/// read as the outcome still count (a duplicate sent with it is seen).
async fn run_stream(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    sources: u8,
    ready_on: Ready,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let permit = permits.acquire().await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = match connect(target.addr, source(index, sources)).await {
        Ok(io) => io,
        Err(e) => return fail(&shared, slot, "connect", &e),
    };
    if let Err(e) = io.write_all(request.as_bytes()).await {
        return fail(&shared, slot, "write request", &e);
    }
    let mut buf = Vec::new();
    let head = match read_head(&mut io, &mut buf).await {
        Ok(head) => head,
        Err(e) => return fail(&shared, slot, "read response head", &e),
    };
    if head.status != 200 {
        slot.state.store(state::REFUSED, Ordering::Relaxed);
        shared.refused.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(head.status / 100).min(5);
        shared.refused_statuses[class].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut body = Body::new(head.framing);
    let mut sse = SseParser::default();
    let mut input = head.rest;
    let mut decoded = Vec::new();
    let mut ended_by = None;
    loop {
        let ended = body.decode(&input, &mut decoded);
        sse.feed(&decoded, |event| {
            on_sse_event(&shared, slot, &mut ready, event)
        });
        decoded.clear();
        if ended || slot.outcomes.load(Ordering::Relaxed) > 0 {
            break;
        }
        input.resize(READ_CHUNK, 0);
        match io.read(&mut input).await {
            Ok(0) => break,
            Err(e) => {
                ended_by = Some(e);
                break;
            }
            Ok(n) => input.truncate(n),
        }
    }
    if !ready {
        let e = ended_by.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
        return fail(&shared, slot, "wait for pending", &e);
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}

/// Opens an h2c connection (HTTP/2 with prior knowledge) from `from` and
/// drives it in its own task; its streams are opened with the handle.
async fn h2c_connect(
    target: &Target,
    from: SocketAddr,
) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
    let io = connect(target.addr, from)
        .await
        .map_err(|e| format!("h2c connect: {e}"))?;
    let (send, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| format!("h2c handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("loadgen: an h2c connection ended: {e}");
        }
    });
    Ok(send)
}

/// One event stream over a shared h2c connection: the same life as
/// [`run_stream`]'s (subscribe, wait for the outcome, then close the stream
/// with a reset, as `EventSource.close()` does).
async fn run_h2c_stream(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    connection: h2::client::SendRequest<bytes::Bytes>,
    ready_on: Ready,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let permit = permits.acquire().await;
    let h2_error = |e: h2::Error| std::io::Error::other(e.to_string());
    let request = http::Request::get(format!("http://{}{}", target.host, target.path_for(id)))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(());
    let Ok(request) = request else {
        return fail(
            &shared,
            slot,
            "build request",
            &std::io::ErrorKind::InvalidInput.into(),
        );
    };
    // Waits while the connection carries as many streams as the server allows.
    let mut connection = match connection.ready().await {
        Ok(connection) => connection,
        Err(e) => return fail(&shared, slot, "h2c ready", &h2_error(e)),
    };
    let response = match connection.send_request(request, true) {
        Ok((response, _)) => response.await,
        Err(e) => return fail(&shared, slot, "h2c request", &h2_error(e)),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return fail(&shared, slot, "h2c response head", &h2_error(e)),
    };
    if response.status() != 200 {
        return refuse(&shared, slot, response.status().as_u16());
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut body = response.into_body();
    let mut sse = SseParser::default();
    let mut ended_by = None;
    while slot.outcomes.load(Ordering::Relaxed) == 0 {
        let chunk = match body.data().await {
            None => break,
            Some(Err(e)) => {
                ended_by = Some(h2_error(e));
                break;
            }
            Some(Ok(chunk)) => chunk,
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        sse.feed(&chunk, |event| {
            on_sse_event(&shared, slot, &mut ready, event)
        });
    }
    if !ready {
        let e = ended_by.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
        return fail(&shared, slot, "wait for pending", &e);
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}

/// What an event read on a stream does to its slot.
fn on_sse_event(shared: &Shared, slot: &StreamSlot, ready: &mut bool, event: SseEvent) {
    match event {
        SseEvent::Pending => mark_ready(shared, slot, ready),
        SseEvent::Outcome => record_outcome(shared, slot),
        SseEvent::Timeout => {
            slot.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        SseEvent::Other => {}
    }
}

/// The stream's slot, moved to READY once.
fn mark_ready(shared: &Shared, slot: &StreamSlot, ready: &mut bool) {
    if !*ready {
        *ready = true;
        slot.state.store(state::READY, Ordering::Relaxed);
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records the first outcome of a stream (and counts any later one).
fn record_outcome(shared: &Shared, slot: &StreamSlot) {
    if slot.outcomes.fetch_add(1, Ordering::Relaxed) == 0 {
        slot.received_at.store(shared.now(), Ordering::Relaxed);
        slot.state.store(state::DONE, Ordering::Relaxed);
    }
}

/// Records a refused subscription by its status class.
fn refuse(shared: &Shared, slot: &StreamSlot, status: u16) {
    slot.state.store(state::REFUSED, Ordering::Relaxed);
    shared.refused.fetch_add(1, Ordering::Relaxed);
    let class = usize::from(status / 100).min(5);
    shared.refused_statuses[class].fetch_add(1, Ordering::Relaxed);
}

/// Reads the rest of a response body framed by `head`.
async fn read_body(io: &mut TcpStream, head: Head) -> std::io::Result<Vec<u8>> {
    let mut body = Body::new(head.framing);
    let mut input = head.rest;
    let mut out = Vec::new();
    loop {
        if body.decode(&input, &mut out) {
            return Ok(out);
        }
        input.resize(READ_CHUNK, 0);
        match io.read(&mut input).await? {
            0 if matches!(body.framing, Framing::Close) => return Ok(out),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => input.truncate(n),
        }
    }
}

/// One long-poll waiter: `GET` until an answer that is not `PENDING` (each
/// `PENDING` counts as a timeout and is asked again on the same
/// connection). Counts as subscribed once its first request is written.
async fn run_poll(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    sources: u8,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let mut permit = permits.acquire().await.ok();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = match connect(target.addr, source(index, sources)).await {
        Ok(io) => io,
        Err(e) => return fail(&shared, slot, "connect", &e),
    };
    let mut ready = false;
    let mut first_answer = true;
    let mut buf = Vec::new();
    loop {
        if let Err(e) = io.write_all(request.as_bytes()).await {
            return fail(&shared, slot, "write request", &e);
        }
        if !ready {
            mark_ready(&shared, slot, &mut ready);
            permit.take();
        }
        let head = match read_head(&mut io, &mut buf).await {
            Ok(head) => head,
            Err(_) => break,
        };
        let (status, close) = (head.status, head.close);
        let Ok(body) = read_body(&mut io, head).await else {
            break;
        };
        if status != 200 {
            if first_answer {
                // Refused (429, 503...) after counting as subscribed: undo that.
                shared.ready.fetch_sub(1, Ordering::Relaxed);
                refuse(&shared, slot, status);
                return;
            }
            break;
        }
        first_answer = false;
        if find(&body, b"\"PENDING\"").is_none() {
            record_outcome(&shared, slot);
            break;
        }
        slot.timeouts.fetch_add(1, Ordering::Relaxed);
        if close {
            break;
        }
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}

/// Opens a WebSocket: writes the upgrade request and reads the answer's head.
async fn ws_connect(
    target: &Target,
    id: u64,
    from: SocketAddr,
) -> Result<(TcpStream, Head), (&'static str, std::io::Error)> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n",
        target.path_for(id),
        target.host
    );
    let mut io = connect(target.addr, from)
        .await
        .map_err(|e| ("connect", e))?;
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| ("write request", e))?;
    let mut buf = Vec::new();
    let head = read_head(&mut io, &mut buf)
        .await
        .map_err(|e| ("read response head", e))?;
    Ok((io, head))
}

/// The first whole frame in `buf`: opcode, payload range, frame length.
fn ws_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let mut at = 2;
    let mut len = usize::from(second & 0x7f);
    if len == 126 {
        len = usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?));
        at = 4;
    } else if len == 127 {
        len = usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?;
        at = 10;
    }
    if second & 0x80 != 0 {
        at += 4; // a masked frame: servers do not send them
    }
    (buf.len() >= at + len).then_some((first & 0x0f, at..at + len, at + len))
}

/// One WebSocket waiter: subscribed after the `PENDING` frame (paypush) or
/// the `101` (nchan, `--ready headers`); done at the first other text frame,
/// then closes, as a checkout page does. Pings are answered.
async fn run_ws(
    shared: Arc<Shared>,
    target: Arc<Target>,
    index: usize,
    sources: u8,
    ready_on: Ready,
    permits: Arc<Semaphore>,
) {
    let slot = &shared.streams[index];
    let id = shared.id_base + index as u64;
    let permit = permits.acquire().await;
    let (mut io, head) = match ws_connect(&target, id, source(index, sources)).await {
        Ok(connected) => connected,
        Err((step, e)) => return fail(&shared, slot, step, &e),
    };
    if head.status != 101 {
        return refuse(&shared, slot, head.status);
    }
    let mut ready = false;
    if ready_on == Ready::Headers {
        mark_ready(&shared, slot, &mut ready);
    }
    drop(permit);
    let mut buf = head.rest;
    let mut ended_by = None;
    'read: loop {
        while let Some((opcode, payload, length)) = ws_frame(&buf) {
            let text = &buf[payload.clone()];
            match opcode {
                WS_TEXT | WS_BINARY if find(text, b"\"PENDING\"").is_some() => {
                    mark_ready(&shared, slot, &mut ready)
                }
                WS_TEXT | WS_BINARY => record_outcome(&shared, slot),
                WS_CLOSE => {
                    if find(text, b"timeout").is_some() {
                        slot.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    break 'read;
                }
                WS_PING => {
                    // A pong, masked (as client frames must be) with a zero key.
                    let mut pong = vec![0x8A, 0x80 | (payload.len() as u8 & 0x7f), 0, 0, 0, 0];
                    pong.extend_from_slice(text);
                    if io.write_all(&pong).await.is_err() {
                        break 'read;
                    }
                }
                _ => {}
            }
            buf.drain(..length);
        }
        if slot.outcomes.load(Ordering::Relaxed) > 0 {
            break;
        }
        let mut chunk = [0u8; READ_CHUNK];
        match io.read(&mut chunk).await {
            Ok(0) => break,
            Err(e) => {
                ended_by = Some(e);
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if !ready {
        let e = ended_by.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
        return fail(&shared, slot, "wait for pending", &e);
    }
    if slot.outcomes.load(Ordering::Relaxed) == 0 {
        slot.state.store(state::ENDED_EARLY, Ordering::Relaxed);
    }
}

/// Opens one WebSocket for a payment nobody else uses and says whether the
/// server sends a `PENDING` frame on it.
async fn probe_ws_ready_mode(subscribe: &Target, id: u64) -> Result<Ready, String> {
    let (mut io, head) = ws_connect(subscribe, id, source(0, 1))
        .await
        .map_err(|(step, e)| format!("probe socket, {step}: {e}"))?;
    if head.status != 101 {
        return Err(format!("the probe socket got status {}", head.status));
    }
    let mut buf = head.rest;
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        if let Some((opcode, payload, _)) = ws_frame(&buf) {
            let pending = opcode == WS_TEXT && find(&buf[payload], b"\"PENDING\"").is_some();
            return Ok(if pending {
                Ready::Pending
            } else {
                Ready::Headers
            });
        }
        let mut chunk = [0u8; READ_CHUNK];
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            io.read(&mut chunk),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Ok(Ready::Headers),
        }
    }
}

/// Records a stream that could not be subscribed, and why (`step: error kind`).
fn fail(shared: &Shared, slot: &StreamSlot, step: &str, error: &std::io::Error) {
    slot.state.store(state::FAILED, Ordering::Relaxed);
    shared.failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut reasons) = shared.failures.lock() {
        *reasons
            .entry(format!("{step}: {:?}", error.kind()))
            .or_default() += 1;
    }
}

/// A response body being decoded.
struct Body {
    framing: Framing,
}

impl Body {
    fn new(framing: Framing) -> Body {
        Body { framing }
    }

    /// Decodes `input` into `out`; true when the body is complete.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(input.len());
                out.extend_from_slice(&input[..n]);
                *left -= n;
                *left == 0
            }
            Framing::Chunked(chunked) => chunked.feed(input, out),
            Framing::Close => {
                out.extend_from_slice(input);
                false
            }
        }
    }
}

/// The callback request of one payment, ready to write.
struct Publish {
    method: String,
    target: Target,
    body: Option<String>,
}

impl Publish {
    fn parse(spec: &str, body: &str) -> Result<Publish, String> {
        let (method, url) = spec
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("--publish {spec:?}: expected 'METHOD URL'"))?;
        let method = method.to_ascii_uppercase();
        Ok(Publish {
            body: (method == "POST").then(|| body.to_string()),
            method,
            target: Target::parse(url.trim())?,
        })
    }

    fn request(&self, id: u64) -> Vec<u8> {
        let id_text = id.to_string();
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method,
            self.target.path_for(id),
            self.target.host
        );
        match &self.body {
            Some(template) => {
                let body = template.replace("{id}", &id_text);
                request.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => request.push_str("\r\n"),
        }
        request.into_bytes()
    }
}

/// The callback plan every publisher connection draws from.
struct Plan {
    /// One per instance; publisher connection `n` uses the `n % len`-th.
    publish: Vec<Publish>,
    count: usize,
    next: AtomicUsize,
    /// Seconds between consecutive callbacks; 0: flat out.
    interval: f64,
    start: Instant,
    stop_at: Instant,
}

/// One keep-alive publisher connection: takes the next callback of the plan,
/// waits for its slot when a rate is set, sends it and reads the answer.
async fn run_publisher(shared: Arc<Shared>, plan: Arc<Plan>, n: usize, sources: u8) {
    let mut io: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let publish = &plan.publish[n % plan.publish.len()];
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.count {
            break;
        }
        if plan.interval > 0.0 {
            sleep_until(plan.start + Duration::from_secs_f64(plan.interval * i as f64)).await;
        }
        if Instant::now() >= plan.stop_at {
            break;
        }
        let id = shared.id_base + i as u64;
        let request = publish.request(id);
        let outcome = timeout(IO_TIMEOUT, async {
            if io.is_none() {
                io = Some(connect(publish.target.addr, source(n, sources)).await?);
            }
            let conn = io
                .as_mut()
                .ok_or_else(|| std::io::Error::other("not connected"))?;
            let sent = shared.now();
            if let Some(slot) = shared.streams.get(i) {
                slot.sent_at.store(sent, Ordering::Relaxed);
            }
            let _ =
                shared
                    .first_sent
                    .compare_exchange(0, sent, Ordering::Relaxed, Ordering::Relaxed);
            conn.write_all(&request).await?;
            let head = read_head(conn, &mut buf).await?;
            let mut body = Body::new(head.framing);
            let mut input = head.rest;
            let mut sink = Vec::new();
            let mut done = matches!(body.framing, Framing::Length(0));
            while !done {
                done = body.decode(&input, &mut sink);
                sink.clear();
                if done {
                    break;
                }
                if matches!(body.framing, Framing::Close) {
                    return Err(std::io::Error::other("close-delimited callback answer"));
                }
                input.resize(READ_CHUNK, 0);
                let read = conn.read(&mut input).await?;
                if read == 0 {
                    return Err(std::io::Error::other("closed mid-answer"));
                }
                input.truncate(read);
            }
            Ok::<_, std::io::Error>((head.status, head.close, sent))
        })
        .await;
        match outcome {
            Ok(Ok((status, close, sent))) => {
                let now = shared.now();
                shared.last_answered.fetch_max(now, Ordering::Relaxed);
                if let Ok(mut trips) = shared.round_trips.lock() {
                    trips.push(now - sent);
                }
                if (200..300).contains(&status) {
                    shared.callbacks_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.callbacks_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Some(slot) = shared.streams.get(i) {
                        slot.sent_at.store(0, Ordering::Relaxed);
                    }
                }
                if close {
                    io = None;
                }
            }
            Ok(Err(_)) | Err(_) => {
                shared.callbacks_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = shared.streams.get(i) {
                    slot.sent_at.store(0, Ordering::Relaxed);
                }
                io = None;
                buf.clear();
            }
        }
    }
}

/// A memory reading of the server processes, KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Memory {
    rss_kib: u64,
    pss_kib: u64,
}

/// Sums RSS and Pss over `pids`; `None` without pids or when one is unreadable.
fn read_memory(pids: &[u32]) -> Option<Memory> {
    if pids.is_empty() {
        return None;
    }
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let mut total = Memory::default();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        total.rss_kib += field(&status, "VmRSS:")?;
        total.pss_kib += field(&rollup, "Pss:")?;
    }
    Some(total)
}

/// CPU time the server processes have used so far, in nanoseconds: the sum
/// over every thread of `/proc/PID/task/TID/schedstat`'s first field.
fn read_cpu_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0;
    for pid in pids {
        // A thread that ends between the listing and the read is skipped.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let ns = stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            total += ns.unwrap_or(0);
        }
    }
    Some(total)
}

/// Opens one stream for a payment nobody else uses and says whether the
/// server sends `event: pending` on it.
async fn probe_ready_mode(subscribe: &Target, id: u64) -> Result<Ready, String> {
    let mut io = connect(subscribe.addr, source(0, 1))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", subscribe.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        subscribe.path_for(id),
        subscribe.host
    );
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let head = timeout(IO_TIMEOUT, read_head(&mut io, &mut buf))
        .await
        .map_err(|_| "the probe stream got no response".to_string())?
        .map_err(|e| format!("probe stream: {e}"))?;
    if head.status != 200 {
        return Err(format!("the probe stream got status {}", head.status));
    }
    let mut body = Body::new(head.framing);
    let mut sse = SseParser::default();
    let mut input = head.rest;
    let mut decoded = Vec::new();
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        let mut pending = false;
        let ended = body.decode(&input, &mut decoded);
        sse.feed(&decoded, |event| pending |= event == SseEvent::Pending);
        decoded.clear();
        if pending {
            return Ok(Ready::Pending);
        }
        if ended {
            return Ok(Ready::Headers);
        }
        input.resize(READ_CHUNK, 0);
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            io.read(&mut input),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => input.truncate(n),
            _ => return Ok(Ready::Headers),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Default, Serialize)]
struct Percentiles {
    count: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(mut nanos: Vec<u64>) -> Percentiles {
        if nanos.is_empty() {
            return Percentiles::default();
        }
        nanos.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * nanos.len() as f64).ceil() as usize).clamp(1, nanos.len());
            nanos[rank - 1] as f64 / 1e6
        };
        Percentiles {
            count: nanos.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

/// Everything one run measured; printed as the JSON line.
#[derive(Debug, Serialize)]
struct Report {
    label: String,
    transport: Transport,
    ready_mode: Ready,
    streams_requested: usize,
    streams_held: usize,
    streams_refused: usize,
    streams_refused_5xx: usize,
    streams_refused_4xx: usize,
    streams_failed: usize,
    /// Why streams failed, counted by `step: error kind`.
    stream_failures: BTreeMap<String, usize>,
    /// Connected but never answered before the open phase ended.
    streams_unanswered: usize,
    streams_ended_early: usize,
    open_seconds: f64,
    memory_before: Option<Memory>,
    memory_after: Option<Memory>,
    rss_per_stream_kib: Option<f64>,
    pss_per_stream_kib: Option<f64>,
    callbacks_planned: usize,
    callbacks_sent: usize,
    callbacks_ok: usize,
    callbacks_rejected: usize,
    callbacks_failed: usize,
    callback_seconds: f64,
    /// Server CPU time (all threads) from the first callback to the last
    /// outcome, per answered callback, in microseconds.
    server_cpu_us_per_callback: Option<f64>,
    callbacks_per_second: f64,
    rate_requested: f64,
    connections: usize,
    callback_round_trip: Percentiles,
    latency: Percentiles,
    outcomes_expected: usize,
    outcomes_received: usize,
    lost: usize,
    duplicated: usize,
    timeouts: usize,
    unexpected_outcomes: usize,
    deliveries_per_second: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
    // Ends the remaining stream tasks with their sockets.
    std::process::exit(0);
}

async fn run(args: Args) -> Result<(), String> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("loadgen: cannot raise the open-file limit: {e}");
    }
    let subscribe = args
        .subscribe
        .iter()
        .map(|url| Target::parse(url).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let publish = args
        .publish
        .iter()
        .map(|spec| Publish::parse(spec, &args.body))
        .collect::<Result<Vec<_>, _>>()?;
    let callbacks = args.callbacks.unwrap_or(args.streams);
    let id_base = args.id_base.unwrap_or_else(|| {
        // Microseconds since 2020: distinct for every run, far below i64::MAX.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        u64::try_from(micros).unwrap_or(1) - 1_577_836_800_000_000
    });
    let ready_mode = match (args.ready, args.transport) {
        // A long-poll is told nothing until its answer: it counts as
        // waiting once its request is written (`--settle` covers the rest).
        (_, Transport::Poll) => Ready::Headers,
        (Ready::Auto, transport) => {
            let probe_id = id_base + (args.streams.max(callbacks) + 1) as u64;
            match transport {
                Transport::Ws => probe_ws_ready_mode(&subscribe[0], probe_id).await?,
                _ => probe_ready_mode(&subscribe[0], probe_id).await?,
            }
        }
        (other, _) => other,
    };
    let memory_before = read_memory(&args.server_pid);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        id_base,
        streams: (0..args.streams).map(|_| StreamSlot::default()).collect(),
        ready: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        failures: std::sync::Mutex::new(BTreeMap::new()),
        refused_statuses: Default::default(),
        callbacks_ok: AtomicUsize::new(0),
        callbacks_rejected: AtomicUsize::new(0),
        callbacks_failed: AtomicUsize::new(0),
        round_trips: std::sync::Mutex::new(Vec::with_capacity(callbacks)),
        first_sent: AtomicU64::new(0),
        last_answered: AtomicU64::new(0),
    });

    // Open the streams.
    let open_start = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut h2c = Vec::with_capacity(args.h2c_connections);
    for n in 0..args.h2c_connections {
        // Connection `n` goes to the `n % m`-th instance.
        let target = &subscribe[n % subscribe.len()];
        h2c.push(h2c_connect(target, source(n, args.sources)).await?);
    }
    for index in 0..args.streams {
        // Stream `i` goes to the `i % n`-th instance.
        let subscribe = subscribe[index % subscribe.len()].clone();
        let (shared, permits) = (shared.clone(), permits.clone());
        match args.transport {
            Transport::Sse if !h2c.is_empty() => tokio::spawn(run_h2c_stream(
                shared,
                subscribe,
                index,
                h2c[index % h2c.len()].clone(),
                ready_mode,
                permits,
            )),
            Transport::Sse => tokio::spawn(run_stream(
                shared,
                subscribe,
                index,
                args.sources,
                ready_mode,
                permits,
            )),
            Transport::Poll => {
                tokio::spawn(run_poll(shared, subscribe, index, args.sources, permits))
            }
            Transport::Ws => tokio::spawn(run_ws(
                shared,
                subscribe,
                index,
                args.sources,
                ready_mode,
                permits,
            )),
        };
    }
    let open_deadline = open_start + *args.open_timeout;
    let mut last_progress = (0, Instant::now());
    loop {
        let settled = shared.ready.load(Ordering::Relaxed)
            + shared.refused.load(Ordering::Relaxed)
            + shared.failed.load(Ordering::Relaxed);
        let now = Instant::now();
        if settled >= args.streams || now >= open_deadline {
            break;
        }
        if settled != last_progress.0 {
            last_progress = (settled, now);
        } else if now - last_progress.1 >= *args.stall {
            break;
        }
        sleep(POLL_INTERVAL).await;
    }
    let open_seconds = open_start.elapsed().as_secs_f64();
    if args.streams > 0 {
        sleep(*args.settle).await;
    }
    let memory_after = read_memory(&args.server_pid);
    let held = count_state(&shared, state::READY);
    let cpu_before = read_cpu_ns(&args.server_pid);

    // Fire the callbacks.
    let plan = Arc::new(Plan {
        publish,
        count: callbacks,
        next: AtomicUsize::new(0),
        interval: if args.rate > 0.0 {
            1.0 / args.rate
        } else {
            0.0
        },
        start: Instant::now(),
        stop_at: Instant::now() + *args.duration,
    });
    let publishers: Vec<_> = (0..args.connections.max(1))
        .map(|n| tokio::spawn(run_publisher(shared.clone(), plan.clone(), n, args.sources)))
        .collect();
    for publisher in publishers {
        let _ = publisher.await;
    }

    // Wait for the outcomes still missing, then take the counts.
    let expected: Vec<usize> = (0..args.streams.min(callbacks))
        .filter(|&i| {
            let slot = &shared.streams[i];
            slot.sent_at.load(Ordering::Relaxed) != 0
                && matches!(
                    slot.state.load(Ordering::Relaxed),
                    state::READY | state::DONE | state::ENDED_EARLY
                )
        })
        .collect();
    let deadline = Instant::now() + *args.deadline;
    while Instant::now() < deadline
        && expected
            .iter()
            .any(|&i| shared.streams[i].received_at.load(Ordering::Relaxed) == 0)
    {
        sleep(POLL_INTERVAL).await;
    }
    let cpu_ns = cpu_before
        .zip(read_cpu_ns(&args.server_pid))
        .map(|(before, after)| after.saturating_sub(before));
    let report = report(
        &args,
        &shared,
        ready_mode,
        &expected,
        callbacks,
        held,
        open_seconds,
        memory_before,
        memory_after,
        cpu_ns,
    );
    print_table(&report);
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn count_state(shared: &Shared, wanted: u8) -> usize {
    shared
        .streams
        .iter()
        .filter(|slot| slot.state.load(Ordering::Relaxed) == wanted)
        .count()
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    shared: &Shared,
    ready_mode: Ready,
    expected: &[usize],
    callbacks: usize,
    held: usize,
    open_seconds: f64,
    memory_before: Option<Memory>,
    memory_after: Option<Memory>,
    cpu_ns: Option<u64>,
) -> Report {
    let per_stream = |f: fn(&Memory) -> u64| match (memory_before, memory_after) {
        (Some(before), Some(after)) if held > 0 => {
            Some((f(&after) as f64 - f(&before) as f64) / held as f64)
        }
        _ => None,
    };
    let mut latencies = Vec::with_capacity(expected.len());
    let mut lost = 0;
    let mut last_delivery = 0;
    for &i in expected {
        let slot = &shared.streams[i];
        let received = slot.received_at.load(Ordering::Relaxed);
        let sent = slot.sent_at.load(Ordering::Relaxed);
        if received == 0 {
            lost += 1;
        } else {
            // An outcome read before its callback's send time was recorded
            // (the two race by nanoseconds) counts as zero latency.
            latencies.push(received.saturating_sub(sent));
            last_delivery = last_delivery.max(received);
        }
    }
    let duplicated = shared
        .streams
        .iter()
        .map(|slot| slot.outcomes.load(Ordering::Relaxed).saturating_sub(1) as usize)
        .sum();
    let timeouts = shared
        .streams
        .iter()
        .map(|slot| slot.timeouts.load(Ordering::Relaxed) as usize)
        .sum();
    let unexpected_outcomes = shared
        .streams
        .iter()
        .enumerate()
        .filter(|(i, slot)| *i >= callbacks && slot.outcomes.load(Ordering::Relaxed) > 0)
        .count();
    let ok = shared.callbacks_ok.load(Ordering::Relaxed);
    let rejected = shared.callbacks_rejected.load(Ordering::Relaxed);
    let failed = shared.callbacks_failed.load(Ordering::Relaxed);
    let first = shared.first_sent.load(Ordering::Relaxed);
    let last = shared.last_answered.load(Ordering::Relaxed);
    let callback_seconds = last.saturating_sub(first) as f64 / 1e9;
    let round_trips = shared
        .round_trips
        .lock()
        .map(|trips| trips.clone())
        .unwrap_or_default();
    let delivered = latencies.len();
    Report {
        label: args.label.clone(),
        transport: args.transport,
        ready_mode,
        streams_requested: args.streams,
        streams_held: held,
        streams_refused: shared.refused.load(Ordering::Relaxed),
        streams_refused_5xx: shared.refused_statuses[5].load(Ordering::Relaxed),
        streams_refused_4xx: shared.refused_statuses[4].load(Ordering::Relaxed),
        streams_failed: shared.failed.load(Ordering::Relaxed),
        stream_failures: shared
            .failures
            .lock()
            .map(|reasons| reasons.clone())
            .unwrap_or_default(),
        streams_unanswered: count_state(shared, state::CONNECTING),
        streams_ended_early: count_state(shared, state::ENDED_EARLY),
        open_seconds,
        memory_before,
        memory_after,
        rss_per_stream_kib: per_stream(|m| m.rss_kib),
        pss_per_stream_kib: per_stream(|m| m.pss_kib),
        callbacks_planned: callbacks,
        callbacks_sent: ok + rejected + failed,
        callbacks_ok: ok,
        callbacks_rejected: rejected,
        callbacks_failed: failed,
        callback_seconds,
        server_cpu_us_per_callback: cpu_ns
            .filter(|_| ok + rejected > 0)
            .map(|ns| ns as f64 / 1e3 / (ok + rejected) as f64),
        callbacks_per_second: if callback_seconds > 0.0 {
            (ok + rejected) as f64 / callback_seconds
        } else {
            0.0
        },
        rate_requested: args.rate,
        connections: args.connections,
        callback_round_trip: Percentiles::of(round_trips),
        latency: Percentiles::of(latencies),
        outcomes_expected: expected.len(),
        outcomes_received: delivered,
        lost,
        duplicated,
        timeouts,
        unexpected_outcomes,
        deliveries_per_second: if last_delivery > first && delivered > 0 {
            delivered as f64 / ((last_delivery - first) as f64 / 1e9)
        } else {
            0.0
        },
    }
}

fn print_table(r: &Report) {
    let mut rows: Vec<(String, String)> = vec![
        ("run".into(), r.label.clone()),
        (
            "subscribed when".into(),
            format!("{:?}", r.ready_mode).to_lowercase(),
        ),
        (
            "streams held / requested".into(),
            format!("{} / {}", r.streams_held, r.streams_requested),
        ),
        (
            "streams refused / failed / unanswered / ended early".into(),
            format!(
                "{} (4xx {}, 5xx {}) / {} / {} / {}",
                r.streams_refused,
                r.streams_refused_4xx,
                r.streams_refused_5xx,
                r.streams_failed,
                r.streams_unanswered,
                r.streams_ended_early
            ),
        ),
        (
            "why streams failed".into(),
            r.stream_failures
                .iter()
                .map(|(why, n)| format!("{why} x{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "time to open streams".into(),
            format!("{:.2} s", r.open_seconds),
        ),
    ];
    if let (Some(before), Some(after)) = (r.memory_before, r.memory_after) {
        rows.push((
            "server RSS before / after".into(),
            format!("{} / {} KiB", before.rss_kib, after.rss_kib),
        ));
        rows.push((
            "server Pss before / after".into(),
            format!("{} / {} KiB", before.pss_kib, after.pss_kib),
        ));
        rows.push((
            "RSS / Pss per stream".into(),
            format!(
                "{:.2} / {:.2} KiB",
                r.rss_per_stream_kib.unwrap_or(0.0),
                r.pss_per_stream_kib.unwrap_or(0.0)
            ),
        ));
    }
    if let Some(cpu) = r.server_cpu_us_per_callback {
        rows.push(("server CPU per callback".into(), format!("{cpu:.1} µs")));
    }
    if r.callbacks_planned > 0 {
        rows.push((
            "callbacks sent (2xx / other / error)".into(),
            format!(
                "{} ({} / {} / {})",
                r.callbacks_sent, r.callbacks_ok, r.callbacks_rejected, r.callbacks_failed
            ),
        ));
        rows.push((
            "callbacks/s".into(),
            format!(
                "{:.0} over {} connections ({:.2} s{})",
                r.callbacks_per_second,
                r.connections,
                r.callback_seconds,
                if r.rate_requested > 0.0 {
                    format!(", {:.0}/s requested", r.rate_requested)
                } else {
                    ", flat out".into()
                }
            ),
        ));
        let p = &r.callback_round_trip;
        rows.push((
            "callback round trip p50/p99/max".into(),
            format!("{:.3} / {:.3} / {:.3} ms", p.p50_ms, p.p99_ms, p.max_ms),
        ));
    }
    if r.outcomes_expected > 0 {
        let l = &r.latency;
        rows.push((
            "callback->outcome p50/p90/p99/p99.9/max".into(),
            format!(
                "{:.3} / {:.3} / {:.3} / {:.3} / {:.3} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            ),
        ));
        rows.push((
            "outcomes received / expected".into(),
            format!("{} / {}", r.outcomes_received, r.outcomes_expected),
        ));
        rows.push((
            "lost / duplicated / timeouts / unexpected".into(),
            format!(
                "{} / {} / {} / {}",
                r.lost, r.duplicated, r.timeouts, r.unexpected_outcomes
            ),
        ));
        rows.push((
            "deliveries/s".into(),
            format!("{:.0}", r.deliveries_per_second),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let mut chunked = Chunked::default();
        let mut out = Vec::new();
        assert!(!chunked.feed(b"5\r\nhel", &mut out));
        assert!(!chunked.feed(b"lo\r\n3;x=1\r\n, w\r\n", &mut out));
        assert!(chunked.feed(b"0\r\n\r\n", &mut out));
        assert_eq!(out, b"hello, w");
    }

    #[test]
    fn sse_parser_names_events() {
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        parser.feed(
            b"retry: 3000\nevent: pending\ndata: {}\n\n: keep-alive\n\nid: 1\ndata: {\"status\":\"SUCCESS\"}\n\n",
            |e| seen.push(e),
        );
        assert_eq!(seen, vec![SseEvent::Pending, SseEvent::Outcome]);
    }

    #[test]
    fn websocket_frames_parse_with_each_length_form() {
        assert_eq!(ws_frame(&[0x81, 2, b'o', b'k']), Some((WS_TEXT, 2..4, 4)));
        assert_eq!(ws_frame(&[0x81, 2, b'o']), None, "incomplete");
        let mut medium = vec![0x81, 126, 0, 200];
        medium.extend(vec![b'x'; 200]);
        assert_eq!(ws_frame(&medium), Some((WS_TEXT, 4..204, 204)));
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0; 65536]);
        assert_eq!(ws_frame(&long), Some((WS_BINARY, 10..65546, 65546)));
        assert_eq!(ws_frame(&[0x88, 0]), Some((WS_CLOSE, 2..2, 2)));
    }

    #[test]
    fn targets_must_be_loopback() {
        assert!(Target::parse("http://127.0.0.1:8080/push?payRecordId={id}").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080/").is_err());
        assert!(Target::parse("https://127.0.0.1/").is_err());
    }
}
