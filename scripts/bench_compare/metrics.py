"""Figures read from text the servers and tools print: paypush's Prometheus
metrics, Redis's INFO commandstats, criterion's output and loadgen's JSON
line. Pure functions of that text, so the report's inputs can be checked
without running anything."""

import json
import re


def last_json_line(text):
    """loadgen's result: the last line of its output that starts with `{`."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def last_json_text(text):
    """The same line, as text (it is copied into the results unchanged)."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return lines[-1] if lines else None


def sync_figures(metrics, label, writer_ns=None):
    """paypush's fdatasync calls in one run: how many, their mean time and
    their p99 (ms; None without any), how many took over 1 ms, and (given
    the store thread's CPU time in ns, as `store.store_cost` reads it) that
    thread's CPU per sync in µs."""
    values, buckets = {}, []
    for line in metrics.splitlines():
        m = re.match(r'^paypush_store_sync_seconds_(sum|count) (\S+)$', line)
        if m:
            values[m.group(1)] = float(m.group(2))
        m = re.match(r'^paypush_store_sync_seconds_bucket\{le="([^"]+)"\} (\S+)$', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    count = values.get("count", 0)
    below_1ms = next((n for le, n in buckets if le == 0.001), count)
    try:
        writer_us = int(writer_ns) / 1000 / count if count else None
    except (TypeError, ValueError):
        writer_us = None
    return {"label": label, "syncs": int(count),
            "sync_ms": 1000 * values.get("sum", 0) / count if count else None,
            "p99_ms": quantile_ms(buckets, count, 0.99),
            "over_1ms": int(count - below_1ms),
            "writer_us_per_sync": writer_us}


def quantile_ms(buckets, count, q):
    """The q-quantile (ms) of a Prometheus histogram's cumulative buckets
    [(le seconds, count)], interpolated linearly inside its bucket as
    Prometheus's histogram_quantile does; None without observations."""
    if not count:
        return None
    rank = q * count
    lower_le, lower_n = 0.0, 0.0
    for le, n in sorted(buckets):
        if n >= rank:
            if le == float("inf"):
                return 1000 * lower_le
            return 1000 * (lower_le + (le - lower_le) * (rank - lower_n) / max(n - lower_n, 1e-9))
        lower_le, lower_n = le, n
    return 1000 * lower_le


def store_figures(metrics, size, restart_ms, callbacks, restart_log,
                  cpu_before, cpu_after, writes_before, writes_after):
    """The store's row: outcomes recorded, data folder size, syncs and their
    cost, and the restart. The CPU and disk counters are text ("n/a" when
    they could not be read)."""
    values = {}
    for line in metrics.splitlines():
        m = re.match(r'^(paypush_store_sync_seconds_(?:sum|count)|paypush_callbacks_total)(\{[^}]*\})? (\S+)$', line)
        if m and (m.group(1) != "paypush_callbacks_total" or 'result="recorded"' in (m.group(2) or "")):
            values[m.group(1)] = values.get(m.group(1), 0) + float(m.group(3))
    recorded = values.get("paypush_callbacks_total", 0)
    syncs = values.get("paypush_store_sync_seconds_count", 0)
    restored = re.search(r"restored (\d+) outcomes", restart_log)

    def per_sync(before, after, unit):
        """A counter's growth over the fill, per sync ("n/a" counters: None)."""
        if not (syncs and before.isdigit() and after.isdigit()):
            return None
        return (int(after) - int(before)) / unit / syncs

    return {
        "callbacks": int(callbacks), "recorded": int(recorded), "bytes": int(size),
        "syncs": int(syncs),
        "sync_ms": 1000 * values.get("paypush_store_sync_seconds_sum", 0) / syncs if syncs else None,
        "restart_ms": int(restart_ms), "restored": int(restored.group(1)) if restored else None,
        "writer_us_per_sync": per_sync(cpu_before, cpu_after, 1000),
        "disk_writes_per_sync": per_sync(writes_before, writes_after, 1),
    }


def commands_sent(commandstats):
    """Commands paypush sends, from one primary's INFO commandstats: all but
    SET and (S)PUBLISH, which only the record script runs (the benchmark's
    callbacks are unsigned, so no nonce SET), counted with the script call
    that runs them, and REPLCONF, which the replicas send."""
    total = 0
    for line in commandstats.replace("\r", "").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        if re.match(r"^cmdstat_(set|publish|spublish|replconf):", line):
            continue
        fields = re.split(r"[=,]", line)
        if len(fields) > 1:
            total += float(fields[1])
    return int(total)


def pubsub_messages(metrics):
    """paypush_redis_pubsub_messages_total of one instance (0 if absent)."""
    total = 0
    for line in metrics.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "paypush_redis_pubsub_messages_total":
            total += float(fields[1])
    return int(total)


def criterion_times(text):
    """criterion's point estimate per benchmark: `group/size` -> `"12.3 ns"`."""
    times, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^(\S+/\d+)\s*(time:\s+\[\S+ \S+ (\S+) (\S+)\s.*)?$", line.strip())
        if m:
            name = m.group(1)
        t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if t and name:
            times[name] = f"{t.group(1)} {t.group(2)}"
            name = None
    return times
