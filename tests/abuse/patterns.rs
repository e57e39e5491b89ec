//! The hostile patterns and the checks that the service is whole after
//! each, for any mode: each pattern starts its own paypush (the built
//! binary, or `PAYPUSH_ABUSE_BINARY`) with the mode's flags. Used by the
//! single-process suite (`tests/abuse.rs`) and the Redis and Redis Cluster
//! ones (`tests/redis/abuse.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::{start_binary, temp_dir, Binary, EventStream, PATIENCE};

/// How long a server may take to be ready (Redis Cluster: its topology).
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// Another binary to attack instead of this build's.
const BINARY_VAR: &str = "PAYPUSH_ABUSE_BINARY";
/// Waiters opened before each attack, whose callbacks are sent during it.
const WATCHERS: u64 = 5;
/// The next attack's first watcher, past the last one's.
static NEXT_WATCHERS: AtomicU64 = AtomicU64::new(0);
/// The slowest `/healthz` answer allowed while under attack.
const PROMPT: Duration = Duration::from_secs(1);
/// Server CPU per second that counts as idle.
const IDLE_CPU: f64 = 0.05;
/// The server's head deadline (`server::HEADER_READ_TIMEOUT`), within
/// which a connection must show its protocol.
const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// The server's idle deadline of an HTTP/2 connection without a stream.
const H2_IDLE: Duration = Duration::from_secs(30);
/// The push timeout the waiter-deadline tests run with.
const SHORT_PUSH_TIMEOUT: &str = "2s";
/// Slack on a server deadline: scheduling, a busy machine.
const SLACK: Duration = Duration::from_secs(10);
/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Starts the binary under attack, in a data folder of its own, with the
/// `mode`'s flags (none, `--redis-url` or `--redis-cluster`) and the
/// pattern's, and waits until it is ready.
async fn server(mode: &[&str], flags: &[&str]) -> Binary {
    let dir = temp_dir();
    let program =
        std::env::var(BINARY_VAR).unwrap_or_else(|_| env!("CARGO_BIN_EXE_paypush").to_string());
    let mut command = Command::new(program);
    command.current_dir(dir.path()).kill_on_drop(true);
    let mut binary = start_binary(command, &[mode, flags].concat()).await;
    binary.dir = Some(dir);
    let deadline = Instant::now() + READY_PATIENCE;
    while reqwest::get(binary.url("/readyz"))
        .await
        .expect("readyz")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "paypush never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    binary
}

/// The server's CPU time so far (user + system), from `/proc`.
pub fn cpu_seconds(server: &Binary) -> f64 {
    let pid = server.child.id().expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // After the command name's closing parenthesis: state is field 3,
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// A gauge or counter of `/metrics`.
pub async fn metric(server: &Binary, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until `name` reads `value`; fails after `patience`.
async fn wait_for_metric(server: &Binary, name: &str, value: f64, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let now = metric(server, name).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now}, not {value}, after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a fresh connection's `GET /healthz` takes.
async fn healthz(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let answer = tokio::time::timeout(PATIENCE, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    match answer {
        Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") => start.elapsed(),
        other => panic!("/healthz did not answer 200 in time: {other:?}"),
    }
}

/// Runs `attack` while probing `/healthz` every 100 ms and sending the
/// watchers' callbacks half-way; then checks the service is whole. Returns
/// the server CPU the attack cost (seconds), printed per 1 000 of its
/// `connections` (HTTP/2 streams, for the patterns that multiplex).
async fn under_attack(
    pattern: &str,
    server: &Binary,
    connections: u32,
    attack: impl Future<Output = ()>,
) -> f64 {
    // Fresh payments for every attack, even on the same server.
    let first = 900_000 + NEXT_WATCHERS.fetch_add(WATCHERS, Ordering::SeqCst);
    let ids: Vec<u64> = (first..first + WATCHERS).collect();
    let watchers = join_all(ids.iter().map(|id| watch(server, *id))).await;
    let cpu_before = cpu_seconds(server);
    let attack_done = AtomicBool::new(false);
    let probe = async {
        let mut slowest = Duration::ZERO;
        let mut callbacks_sent = false;
        let started = Instant::now();
        while !attack_done.load(Ordering::SeqCst) {
            slowest = slowest.max(healthz(server.addr).await);
            if !callbacks_sent && started.elapsed() > Duration::from_millis(500) {
                callbacks_sent = true;
                send_callbacks(server, &ids).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !callbacks_sent {
            send_callbacks(server, &ids).await;
        }
        slowest
    };
    let attack = async {
        attack.await;
        attack_done.store(true, Ordering::SeqCst);
    };
    let (slowest, ()) = tokio::join!(probe, attack);
    let cpu = cpu_seconds(server) - cpu_before;
    eprintln!(
        "{pattern}: {connections} connections, server CPU {cpu:.3} s ({:.3} s per 1 000), slowest /healthz {slowest:?}",
        cpu * 1000.0 / f64::from(connections.max(1))
    );
    assert!(
        slowest < PROMPT,
        "{pattern}: /healthz took {slowest:?} under attack"
    );
    for (id, mut stream) in ids.iter().zip(watchers) {
        let outcome = stream.next_event().await.expect("the outcome");
        assert_eq!(outcome.json()["payRecordId"], id.to_string());
    }
    cpu
}

/// Opens a waiting `/push` stream for `id`.
async fn watch(server: &Binary, id: u64) -> EventStream {
    let answer = reqwest::get(server.url(&format!("/push?payRecordId={id}")))
        .await
        .expect("push");
    let mut stream = EventStream::new(answer);
    assert_eq!(stream.response_status, 200);
    let pending = stream.next_event().await.expect("pending");
    assert_eq!(pending.event.as_deref(), Some("pending"));
    stream
}

async fn send_callbacks(server: &Binary, ids: &[u64]) {
    for id in ids {
        let url = server.url(&format!("/pay-callback?payRecordId={id}"));
        let answer = reqwest::get(url).await.expect("callback");
        assert_eq!(answer.status(), 200, "a callback during the attack");
    }
}

/// After an attack: the server's CPU back to idle and no waiter left.
async fn assert_whole(pattern: &str, server: &Binary, patience: Duration) {
    wait_for_metric(server, "paypush_streams_open", 0.0, patience).await;
    wait_for_metric(server, "paypush_payments_waiting", 0.0, patience).await;
    let deadline = Instant::now() + patience;
    loop {
        let before = cpu_seconds(server);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_seconds(server) - before;
        if used <= IDLE_CPU {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pattern}: the server still uses {used:.2} CPU-s per s after the attack"
        );
    }
}

/// Opens `n` connections at most `at_once` at a time, each running `client`.
async fn connections<F, Fut>(server: &Binary, n: u32, at_once: usize, client: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|_| async {
            if let Ok(stream) = TcpStream::connect(server.addr).await {
                client(stream).await;
            }
        })
        .buffer_unordered(at_once)
        .collect::<Vec<()>>()
        .await;
}

/// True when the server closes `stream` within `patience` (EOF or reset),
/// whatever it sent first.
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut sink = [0; 4096];
    tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

pub async fn one_byte_connections_that_close_cost_almost_no_cpu(mode: &[&str]) {
    let server = server(mode, &[]).await;
    let cpu = under_attack("one byte, then close", &server, 1000, async {
        connections(&server, 1000, 50, |mut stream| async move {
            let _ = stream.write_all(b"P").await;
        })
        .await;
        // Give the server time to spin, if it does.
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    assert!(cpu < 1.0, "1 000 one-byte connections cost {cpu:.2} CPU-s");
    assert_whole("one byte, then close", &server, PATIENCE).await;
}

pub async fn one_byte_connections_held_open_cost_almost_no_cpu_and_close_at_the_head_deadline(
    mode: &[&str],
) {
    let server = server(mode, &[]).await;
    let opened = Instant::now();
    let mut held = Vec::new();
    let cpu = under_attack("one byte, held open", &server, 2000, async {
        for _ in 0..2000 {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            stream.write_all(b"P").await.expect("one byte");
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    assert!(
        cpu < 1.0,
        "2 000 held one-byte connections cost {cpu:.2} CPU-s"
    );
    let patience = (HEAD_DEADLINE + SLACK).saturating_sub(opened.elapsed());
    let closed = join_all(held.iter_mut().map(|s| closed_within(s, patience))).await;
    let open = closed.iter().filter(|closed| !**closed).count();
    assert_eq!(open, 0, "connections still open after the head deadline");
    assert_whole("one byte, held open", &server, PATIENCE).await;
}

pub async fn idle_h2c_connections_are_closed_after_the_idle_deadline(mode: &[&str]) {
    let server = server(mode, &[]).await;
    let opened = Instant::now();
    let mut held = Vec::new();
    under_attack("h2c preface, then idle", &server, 200, async {
        for n in 0..200 {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            stream.write_all(H2_PREFACE).await.expect("preface");
            if n % 2 == 0 {
                // Half of them send their SETTINGS too: a full handshake.
                let settings = frame(SETTINGS, 0, 0, &[]);
                stream.write_all(&settings).await.expect("settings");
            }
            held.push(stream);
        }
    })
    .await;
    let patience = (H2_IDLE + SLACK).saturating_sub(opened.elapsed());
    let closed = join_all(held.iter_mut().map(|s| closed_within(s, patience))).await;
    let open = closed.iter().filter(|closed| !**closed).count();
    assert_eq!(open, 0, "idle h2c connections still open");
    assert_whole("h2c preface, then idle", &server, PATIENCE).await;
}

/// An h2c client that grants no flow-control window: the server can send
/// its streams' heads, never their bodies.
async fn h2c_reading_nothing(server: &Binary) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub async fn waiters_whose_h2c_client_reads_nothing_are_released_at_the_push_timeout(
    mode: &[&str],
) {
    const STALLED: u64 = 200;
    let limit = (STALLED + WATCHERS).to_string();
    let server = server(
        mode,
        &[
            "--push-timeout",
            SHORT_PUSH_TIMEOUT,
            "--max-streams",
            &limit,
        ],
    )
    .await;
    let mut stalled = Vec::new();
    let opened = Instant::now();
    under_attack("h2c, zero window", &server, STALLED as u32, async {
        let client = h2c_reading_nothing(&server).await;
        for n in 0..STALLED {
            let mut client = client.clone().ready().await.expect("ready");
            let request = http::Request::get(format!(
                "http://{}/push?payRecordId={}",
                server.addr,
                700_000 + n
            ))
            .body(())
            .unwrap();
            let (response, _) = client.send_request(request, true).expect("send");
            let response = response.await.expect("the head comes");
            assert_eq!(response.status(), 200);
            stalled.push(response);
        }
        // Every slot is taken: the next waiter is refused.
        let answer = reqwest::get(server.url("/push?payRecordId=1"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
    })
    .await;
    // Released at the push timeout although nobody read their bodies.
    assert_whole("h2c, zero window", &server, PATIENCE).await;
    let mut fresh = watch(&server, 2).await;
    let answer = reqwest::get(server.url("/pay-callback?payRecordId=2"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(fresh.next_event().await.is_some());
    // And the stalled streams, which made no progress, are reset at
    // their deadline (the push timeout plus the grace).
    let deadline = Duration::from_secs(2) + HEAD_DEADLINE + SLACK;
    for response in stalled {
        let mut body = response.into_body();
        let left = deadline.saturating_sub(opened.elapsed());
        let end = tokio::time::timeout(left, body.data()).await;
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "a stalled stream was not reset: {end:?}"
        );
    }
}

/// Opens `/ws` with a hand-made handshake on a raw socket (so that nothing
/// reads for the client), and returns the socket after the `101`.
async fn raw_websocket(server: &Binary, id: u64) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /ws?payRecordId={id} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        stream.read_exact(&mut byte).await.expect("101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
}

/// A masked client ping frame with a 125-byte payload.
fn ping_frame() -> Vec<u8> {
    let mut frame = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    frame.extend((0..125u8).map(|n| n ^ [1, 2, 3, 4][usize::from(n % 4)]));
    frame
}

pub async fn a_websocket_that_floods_pings_and_never_reads_is_released_at_the_push_timeout(
    mode: &[&str],
) {
    let server = server(mode, &["--push-timeout", SHORT_PUSH_TIMEOUT]).await;
    let mut sockets = Vec::new();
    under_attack("WebSocket ping flood, never reading", &server, 10, async {
        for n in 0..10 {
            sockets.push(raw_websocket(&server, 600_000 + n).await);
        }
        let pings = ping_frame().repeat(64);
        let until = Instant::now() + Duration::from_secs(3);
        join_all(sockets.iter_mut().map(|socket| async {
            while Instant::now() < until {
                let write =
                    tokio::time::timeout(Duration::from_millis(200), socket.write_all(&pings));
                if !matches!(write.await, Ok(Ok(()))) {
                    break;
                }
            }
        }))
        .await;
    })
    .await;
    assert_whole("WebSocket ping flood", &server, PATIENCE).await;
}

pub async fn settings_and_continuation_floods_and_rapid_resets_leave_the_service_whole(
    mode: &[&str],
) {
    let server = server(mode, &[]).await;
    under_attack("h2c SETTINGS flood", &server, 100, async {
        connections(&server, 100, 20, |mut stream| async move {
            let mut flood = H2_PREFACE.to_vec();
            for _ in 0..2000 {
                flood.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
            }
            let _ = stream.write_all(&flood).await;
            closed_within(&mut stream, PATIENCE).await;
        })
        .await;
    })
    .await;
    under_attack("h2c CONTINUATION flood", &server, 100, async {
        connections(&server, 100, 20, |mut stream| async move {
            let mut flood = H2_PREFACE.to_vec();
            flood.extend(frame(SETTINGS, 0, 0, &[]));
            // `:method: GET`, then endless literal headers, never ending.
            flood.extend(frame(HEADERS, 0, 1, &[0x82]));
            let literal = [&[0x40, 3][..], b"x-a", &[100], &[b'a'; 100]].concat();
            for _ in 0..2000 {
                flood.extend(frame(CONTINUATION, 0, 1, &literal));
            }
            flood.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
            let _ = stream.write_all(&flood).await;
            closed_within(&mut stream, PATIENCE).await;
        })
        .await;
    })
    .await;
    under_attack("h2c rapid reset", &server, 10, async {
        for _ in 0..10 {
            let client = h2c_reading_nothing(&server).await;
            for n in 0..500u64 {
                let Ok(mut client) = client.clone().ready().await else {
                    break;
                };
                let request = http::Request::get(format!(
                    "http://{}/push?payRecordId={}",
                    server.addr,
                    500_000 + n
                ))
                .body(())
                .unwrap();
                // Sent, then dropped at once: a RST_STREAM.
                if let Ok((response, _)) = client.send_request(request, true) {
                    drop(response);
                }
            }
        }
    })
    .await;
    assert_whole("h2c floods", &server, PATIENCE).await;
}

pub async fn slow_heads_and_bodies_and_crowded_payments_leave_the_service_whole(mode: &[&str]) {
    let server = server(mode, &[]).await;
    let mut slow = Vec::new();
    under_attack("slow heads and bodies", &server, 200, async {
        for n in 0..200 {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            let part: &[u8] = if n % 2 == 0 {
                b"GET /push?payRecordId=1 HTTP/1.1\r\nHo"
            } else {
                b"POST /pay-callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            };
            stream.write_all(part).await.expect("a part");
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    drop(slow);
    under_attack("many waiters on one payment", &server, 100, async {
        let answers =
            join_all((0..100).map(|_| reqwest::get(server.url("/push?payRecordId=77")))).await;
        let refused = answers
            .iter()
            .filter(|a| a.as_ref().is_ok_and(|a| a.status() == 429))
            .count();
        assert_eq!(refused, 100 - 16, "the per-payment limit");
        drop(answers);
    })
    .await;
    assert_whole("slow clients", &server, PATIENCE).await;
}

pub async fn http2_streams_that_clients_never_read_are_bounded_across_connections(mode: &[&str]) {
    // 10 waiter slots: at most 20 HTTP/2 streams in flight on all connections.
    let server = server(mode, &["--max-streams", "10"]).await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    let mut clients = Vec::new();
    under_attack("h2c, zero window, many connections", &server, 50, async {
        for _ in 0..10 {
            let client = h2c_reading_nothing(&server).await;
            for _ in 0..5 {
                let mut client = client.clone().ready().await.expect("ready");
                let request = http::Request::get(format!("http://{}/healthz", server.addr))
                    .body(())
                    .unwrap();
                let (response, _) = client.send_request(request, true).expect("send");
                let response = response.await.expect("a head");
                statuses.push(response.status().as_u16());
                held.push(response);
            }
            clients.push(client);
        }
    })
    .await;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        (25..=30).contains(&refused),
        "50 unread streams, at most 20 (+1 per racing connection) kept: {statuses:?}"
    );
    drop((held, clients));
    assert_whole("h2c, zero window, many connections", &server, PATIENCE).await;
}

pub async fn a_full_descriptor_table_is_logged_at_most_once_a_second(mode: &[&str]) {
    // Soft and hard limit 128: paypush cannot raise it, and 200 idle
    // connections leave it nothing to accept with.
    let dir = temp_dir();
    let program =
        std::env::var(BINARY_VAR).unwrap_or_else(|_| env!("CARGO_BIN_EXE_paypush").to_string());
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"ulimit -n 128; exec "$0" "$@""#, &program])
        .current_dir(dir.path())
        .kill_on_drop(true);
    let flags = [mode, &["--max-streams", "50"]].concat();
    let mut server = start_binary(command, &flags).await;
    server.dir = Some(dir);
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(server.addr).await {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = server
        .logged()
        .lines()
        .filter(|line| line.contains("accept failed"))
        .count();
    // One at once, then at most one summary a second.
    assert!(
        (1..=5).contains(&lines),
        "{lines} accept-failure lines in 3 s"
    );
    drop(held);
    assert!(healthz(server.addr).await < PROMPT);
    assert_whole("a full descriptor table", &server, PATIENCE).await;
}
