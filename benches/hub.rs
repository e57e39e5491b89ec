//! Micro-benchmarks of the hub, `paypush::hub::Hub`: what one stream or one
//! callback costs in the registry, and whether that grows with the number of
//! entries already there (1, 1 000 and 100 000 waiting payments).
//!
//! - `register_complete`: a stream subscribes, its callback completes the
//!   payment, the stream goes away (the whole life of a waiting checkout);
//! - `complete_no_waiter`: a callback for a payment nobody watches;
//! - `duplicate`: a provider's retry of an outcome already recorded;
//! - `expire`: the purge task forgetting one outcome whose TTL has passed.
//!
//! The hub runs on a current-thread tokio runtime with a paused clock, so
//! outcome TTLs pass at once and the purge task runs only between timed
//! sections: each timed section leaves the hub as it found it. Hub calls run
//! inside `block_on`, so the hub reads the paused clock (outside a runtime,
//! tokio's `Instant::now()` is the real one).
//!
//! Run: `cargo bench --bench hub` (about a minute). `cargo test --benches`
//! runs each benchmark once, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use paypush::hub::{Completion, Hub, Limits, Subscription, Waiting};
use paypush::model::{Outcome, PayRecordId, Status};
use paypush::signature::NONCE_MEMORY;
use tokio::runtime::Runtime;

/// Entries already in the hub when a benchmark runs.
const SIZES: [u64; 3] = [1, 1_000, 100_000];
/// Operations timed between two purges, so the hub never grows by more.
const ROUND: u64 = 1_000;
/// Outcome TTL: any positive value works, the clock is paused.
const TTL: Duration = Duration::from_millis(1);
/// Ids of the benchmarked payments start here, far above the fillers'.
const FIRST_BENCH_ID: u64 = 1_000_000_000;

/// A hub holding `size` waiting streams, on its own paused-clock runtime.
struct Fixture {
    runtime: Runtime,
    hub: Hub,
    /// The filler streams: kept alive so their entries stay in the hub.
    _fillers: Vec<Waiting>,
    next_id: u64,
}

impl Fixture {
    fn new(size: u64) -> Fixture {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        let hub = runtime.block_on(async {
            Hub::new(Limits {
                max_streams: usize::MAX,
                max_streams_per_payment: 16,
                outcome_ttl: TTL,
                max_outcomes: usize::MAX,
                nonce_memory: NONCE_MEMORY,
                push_timeout: Duration::from_secs(300),
            })
        });
        let fillers = (1..=size)
            .map(|n| match hub.subscribe(id(n)) {
                Ok(Subscription::Waiting(waiting)) => waiting,
                other => panic!("filler {n} was not registered: {other:?}"),
            })
            .collect();
        Fixture {
            runtime,
            hub,
            _fillers: fillers,
            next_id: FIRST_BENCH_ID,
        }
    }

    fn fresh_id(&mut self) -> PayRecordId {
        self.next_id += 1;
        id(self.next_id)
    }

    /// Lets the TTL pass and the purge task forget every recorded outcome.
    fn purge(&self) {
        self.runtime.block_on(async {
            tokio::time::sleep(TTL * 2).await;
            tokio::task::yield_now().await;
        });
        debug_assert_eq!(self.hub.stats().recorded_outcomes, 0);
    }

    /// Times `op` over `iters` fresh payments, purging every [`ROUND`]
    /// operations outside the timed sections.
    fn time_rounds(&mut self, iters: u64, mut op: impl FnMut(&Hub, PayRecordId)) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let round = left.min(ROUND);
            let ids: Vec<PayRecordId> = (0..round).map(|_| self.fresh_id()).collect();
            let hub = &self.hub;
            total += self.runtime.block_on(async {
                let start = Instant::now();
                for &id in &ids {
                    op(hub, id);
                }
                start.elapsed()
            });
            self.purge();
            left -= round;
        }
        total
    }
}

fn id(n: u64) -> PayRecordId {
    PayRecordId::from_u64(n).expect("ids in range")
}

/// `Hub::complete` without a store: it never waits, so it is polled once.
fn complete(hub: &Hub, outcome: Outcome) -> Completion {
    hub.complete(outcome)
        .now_or_never()
        .expect("a hub without a store completes at once")
        .expect("no bound is reached")
}

fn register_complete(c: &mut Criterion) {
    let mut group = c.benchmark_group("register_complete");
    for size in SIZES {
        let mut fixture = Fixture::new(size);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                fixture.time_rounds(iters, |hub, id| {
                    let waiting = hub.subscribe(id);
                    let completion = complete(hub, Outcome::new(id, Status::Success));
                    drop(black_box(waiting));
                    black_box(completion);
                })
            })
        });
    }
    group.finish();
}

fn complete_no_waiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("complete_no_waiter");
    for size in SIZES {
        let mut fixture = Fixture::new(size);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                fixture.time_rounds(iters, |hub, id| {
                    black_box(complete(hub, Outcome::new(id, Status::Success)));
                })
            })
        });
    }
    group.finish();
}

fn duplicate(c: &mut Criterion) {
    let mut group = c.benchmark_group("duplicate");
    for size in SIZES {
        let mut fixture = Fixture::new(size);
        let id = fixture.fresh_id();
        let Fixture { runtime, hub, .. } = &fixture;
        runtime.block_on(async { complete(hub, Outcome::new(id, Status::Success)) });
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            runtime.block_on(async {
                b.iter(|| {
                    let completion = complete(hub, Outcome::new(id, Status::Success));
                    debug_assert!(matches!(completion, Completion::Duplicate(_)));
                    black_box(completion)
                })
            })
        });
    }
    group.finish();
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    for size in SIZES {
        let mut fixture = Fixture::new(size);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(ROUND);
                    let ids: Vec<PayRecordId> = (0..round).map(|_| fixture.fresh_id()).collect();
                    let hub = &fixture.hub;
                    fixture.runtime.block_on(async {
                        for &id in &ids {
                            complete(hub, Outcome::new(id, Status::Success));
                        }
                    });
                    let start = Instant::now();
                    fixture.purge();
                    total += start.elapsed();
                    left -= round;
                }
                total
            })
        });
        debug_assert_eq!(fixture.hub.stats().recorded_outcomes, 0);
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = register_complete, complete_no_waiter, duplicate, expire
}
criterion_main!(benches);
