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
//! cargo run --release -p loadgen -- \
//!     --subscribe 'http://127.0.0.1:8080/push?payRecordId={id}' \
//!     --publish 'GET http://127.0.0.1:8080/pay-callback?payRecordId={id}' \
//!     --streams 15000 --callbacks 5000 --rate 2000 --server-pid "$(pidof paypush)"
//!
//! cargo run --release -p loadgen -- \
//!     --subscribe 'http://127.0.0.1:18081/sub/{id}' \
//!     --publish 'POST http://127.0.0.1:18081/pub/{id}' \
//!     --streams 10000 --callbacks 0 --server-pid "$MASTER,$WORKER"
//!
//! cargo run --release -p loadgen -- --transport ws \
//!     --subscribe 'http://127.0.0.1:8080/ws?payRecordId={id}' \
//!     --publish 'GET http://127.0.0.1:8080/pay-callback?payRecordId={id}' \
//!     --streams 15000 --callbacks 5000 --rate 2000
//! ```
//!
//! The modules, by job: [`args`] (the command line), [`net`] (targets and
//! connections), [`http1`] (responses read by hand), the waiters per
//! protocol ([`sse`], [`h2c`], [`poll`], [`ws`]) over the shared
//! [`waiters`] state, [`publisher`] (the callbacks), [`proc`] (the server's
//! memory and CPU), [`stats`] and [`report`].

mod args;
mod h2c;
mod http1;
mod net;
mod poll;
mod proc;
mod publisher;
mod report;
mod sse;
mod stats;
mod waiters;
mod ws;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::sync::Semaphore;
use tokio::time::{sleep, Instant};

use crate::args::{Args, Ready, Transport};
use crate::h2c::{h2c_connect, run_h2c_stream};
use crate::net::{source, Target};
use crate::poll::run_poll;
use crate::proc::{read_cpu_ns, read_memory};
use crate::publisher::{run_publisher, Plan, Publish};
use crate::report::{print_table, report};
use crate::sse::{probe_ready_mode, run_stream};
use crate::waiters::{count_state, state, Shared, StreamSlot};
use crate::ws::{probe_ws_ready_mode, run_ws};

/// How often the main task looks at the counters while it waits.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

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
