//! What one run measured: the [`Report`] built from the run's counters,
//! printed as a table for a reader and as one JSON line, which
//! `scripts/bench-compare` reads (its field names are that script's input).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::args::{Args, Ready, Transport};
use crate::proc::Memory;
use crate::stats::Percentiles;
use crate::waiters::{count_state, state, Shared};

/// Everything one run measured; printed as the JSON line.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) label: String,
    pub(crate) transport: Transport,
    pub(crate) ready_mode: Ready,
    pub(crate) streams_requested: usize,
    pub(crate) streams_held: usize,
    pub(crate) streams_refused: usize,
    pub(crate) streams_refused_5xx: usize,
    pub(crate) streams_refused_4xx: usize,
    pub(crate) streams_failed: usize,
    /// Why streams failed, counted by `step: error kind`.
    pub(crate) stream_failures: BTreeMap<String, usize>,
    /// Connected but never answered before the open phase ended.
    pub(crate) streams_unanswered: usize,
    pub(crate) streams_ended_early: usize,
    pub(crate) open_seconds: f64,
    pub(crate) memory_before: Option<Memory>,
    pub(crate) memory_after: Option<Memory>,
    pub(crate) rss_per_stream_kib: Option<f64>,
    pub(crate) pss_per_stream_kib: Option<f64>,
    pub(crate) callbacks_planned: usize,
    pub(crate) callbacks_sent: usize,
    pub(crate) callbacks_ok: usize,
    pub(crate) callbacks_rejected: usize,
    pub(crate) callbacks_failed: usize,
    pub(crate) callback_seconds: f64,
    /// Server CPU time (all threads) from the first callback to the last
    /// outcome, per answered callback, in microseconds.
    pub(crate) server_cpu_us_per_callback: Option<f64>,
    pub(crate) callbacks_per_second: f64,
    pub(crate) rate_requested: f64,
    pub(crate) connections: usize,
    pub(crate) callback_round_trip: Percentiles,
    pub(crate) latency: Percentiles,
    pub(crate) outcomes_expected: usize,
    pub(crate) outcomes_received: usize,
    pub(crate) lost: usize,
    pub(crate) duplicated: usize,
    pub(crate) timeouts: usize,
    pub(crate) unexpected_outcomes: usize,
    pub(crate) deliveries_per_second: f64,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
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

pub(crate) fn print_table(r: &Report) {
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
