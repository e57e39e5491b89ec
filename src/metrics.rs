//! Prometheus metrics and the `/metrics` reply.
//!
//! Counters are bumped where things happen; the sizes of the hub are read from
//! it at scrape time, so no gauge can drift. No label ever carries a
//! payRecordId: cardinality stays fixed. The waiter metrics carry a
//! `transport` label (`sse`, `poll`, `ws`); `paypush_streams_open` stays the
//! total of every transport.

use std::time::SystemTime;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::backplane::{Stats, Transport};
use crate::model::{Outcome, Status};

/// Buckets of the callback-to-delivery histogram, in seconds: paypush aims
/// at sub-millisecond delivery, Redis mode adds a network hop.
const DELIVERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets of the store's fdatasync histogram, in seconds: 0.1 to 0.35 ms
/// on a plain cloud disk, far more on a busy or failing one; fine enough
/// below 2 ms for a p99 to be read off it (`scripts/bench-compare` does).
const SYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
    0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// How a callback ended, the `result` label of `paypush_callbacks_total`.
#[derive(Debug, Clone, Copy)]
pub enum CallbackResult {
    /// A new outcome was recorded.
    Recorded,
    /// The same outcome was already recorded.
    Duplicate,
    /// A different outcome was already recorded.
    Conflict,
}

impl CallbackResult {
    /// Every result, in the order of the enum.
    const ALL: [CallbackResult; 3] = [
        CallbackResult::Recorded,
        CallbackResult::Duplicate,
        CallbackResult::Conflict,
    ];

    fn label(self) -> &'static str {
        match self {
            CallbackResult::Recorded => "recorded",
            CallbackResult::Duplicate => "duplicate",
            CallbackResult::Conflict => "conflict",
        }
    }
}

/// The process's metrics; one per app, so tests' servers do not mix.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `paypush_callbacks_total`'s children, looked up once, by
    /// `[status][result]`: no label hashing per callback.
    callbacks: [[IntCounter; 3]; 3],
    /// By [`Transport`], like the other `[..; Transport::COUNT]` arrays.
    delivered: [IntCounter; Transport::COUNT],
    timeouts: [IntCounter; Transport::COUNT],
    delivery_seconds: Histogram,
    open_streams: IntGauge,
    waiters_open: [IntGauge; Transport::COUNT],
    waiting_payments: IntGauge,
    recorded_outcomes: IntGauge,
    outcomes_refused: IntCounter,
    store_sync_seconds: Histogram,
    store_bytes: IntGauge,
    channels_subscribed: IntGauge,
    pubsub_messages: IntCounter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let callbacks = IntCounterVec::new(
            Opts::new(
                "callbacks_total",
                "Callbacks accepted, by status and result.",
            ),
            &["status", "result"],
        )?;
        let delivered = IntCounterVec::new(
            Opts::new(
                "outcomes_delivered_total",
                "Outcomes written to waiters (stream events, long-poll answers, WebSocket frames), by transport.",
            ),
            &["transport"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "push_timeouts_total",
                "Waiters that reached their timeout without an outcome, by transport.",
            ),
            &["transport"],
        )?;
        let waiters_open = IntGaugeVec::new(
            Opts::new("waiters_open", "Waiters open now, by transport."),
            &["transport"],
        )?;
        let by_transport = |vec: &IntCounterVec| {
            Transport::ALL.map(|transport| vec.with_label_values(&[transport.label()]))
        };
        let metrics = Metrics {
            registry: Registry::new_custom(Some("paypush".into()), None)?,
            callbacks: Status::ALL.map(|status| {
                CallbackResult::ALL
                    .map(|result| callbacks.with_label_values(&[status.as_str(), result.label()]))
            }),
            delivered: by_transport(&delivered),
            timeouts: by_transport(&timeouts),
            waiters_open: Transport::ALL
                .map(|transport| waiters_open.with_label_values(&[transport.label()])),
            delivery_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "delivery_seconds",
                    "Time from the callback's acceptance to the outcome written to a waiter.",
                )
                .buckets(DELIVERY_BUCKETS.to_vec()),
            )?,
            open_streams: IntGauge::new(
                "streams_open",
                "Waiters open now, every transport together.",
            )?,
            waiting_payments: IntGauge::new(
                "payments_waiting",
                "Payments with at least one waiting stream.",
            )?,
            recorded_outcomes: IntGauge::new(
                "outcomes_recorded",
                "Outcomes remembered now (until the outcome TTL).",
            )?,
            outcomes_refused: IntCounter::new(
                "outcomes_refused_total",
                "New outcomes refused (503) because --max-outcomes are remembered.",
            )?,
            store_sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "store_sync_seconds",
                    "Time of each fdatasync of the store (one per batch of callbacks).",
                )
                .buckets(SYNC_BUCKETS.to_vec()),
            )?,
            store_bytes: IntGauge::new(
                "store_bytes",
                "Bytes of the store's live segment files (0 without a store).",
            )?,
            channels_subscribed: IntGauge::new(
                "redis_channels_subscribed",
                "Per-payment Redis channels this instance is subscribed to now (Redis Cluster mode).",
            )?,
            pubsub_messages: IntCounter::new(
                "redis_pubsub_messages_total",
                "Outcomes received over Redis pub/sub.",
            )?,
        };
        let r = &metrics.registry;
        r.register(Box::new(callbacks))?;
        r.register(Box::new(delivered))?;
        r.register(Box::new(timeouts))?;
        r.register(Box::new(waiters_open))?;
        r.register(Box::new(metrics.delivery_seconds.clone()))?;
        r.register(Box::new(metrics.open_streams.clone()))?;
        r.register(Box::new(metrics.waiting_payments.clone()))?;
        r.register(Box::new(metrics.recorded_outcomes.clone()))?;
        r.register(Box::new(metrics.outcomes_refused.clone()))?;
        r.register(Box::new(metrics.store_sync_seconds.clone()))?;
        r.register(Box::new(metrics.store_bytes.clone()))?;
        r.register(Box::new(metrics.channels_subscribed.clone()))?;
        r.register(Box::new(metrics.pubsub_messages.clone()))?;
        Ok(metrics)
    }

    /// Counts a callback.
    pub fn callback(&self, status: Status, result: CallbackResult) {
        self.callbacks[status as usize][result as usize].inc();
    }

    /// Counts an outcome written to a waiter of this transport.
    pub fn delivered(&self, outcome: &Outcome, transport: Transport) {
        self.delivered[transport as usize].inc();
        if let Ok(elapsed) = SystemTime::now().duration_since(outcome.completed_at) {
            self.delivery_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a new outcome refused over `--max-outcomes`.
    pub fn outcome_refused(&self) {
        self.outcomes_refused.inc();
    }

    /// The histogram the store observes each fdatasync in.
    pub fn store_sync_seconds(&self) -> Histogram {
        self.store_sync_seconds.clone()
    }

    /// The gauge the backplane keeps at its number of subscribed channels.
    pub fn channels_subscribed(&self) -> IntGauge {
        self.channels_subscribed.clone()
    }

    /// The counter the backplane bumps for each pub/sub message received.
    pub fn pubsub_messages(&self) -> IntCounter {
        self.pubsub_messages.clone()
    }

    /// Counts a waiter of this transport that timed out.
    pub fn timed_out(&self, transport: Transport) {
        self.timeouts[transport as usize].inc();
    }

    /// The text exposition, with the hub's sizes as of now.
    pub fn render(&self, stats: Stats) -> Result<String, prometheus::Error> {
        self.open_streams.set(gauge(stats.open_streams));
        for (gauge_of, open) in self.waiters_open.iter().zip(stats.open_by_transport) {
            gauge_of.set(gauge(open));
        }
        self.waiting_payments.set(gauge(stats.waiting_payments));
        self.recorded_outcomes.set(gauge(stats.recorded_outcomes));
        self.store_bytes
            .set(i64::try_from(stats.store_bytes.unwrap_or(0)).unwrap_or(i64::MAX));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
