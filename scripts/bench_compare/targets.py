"""The report's first section: the targets of issue 26 in each repetition,
and the design's floor (`tools/floor`) beside them. Pure functions of the
runs, as `report.py`, which calls `render_targets`."""


TPUT_TARGET = 1.2      # durable callbacks/s with a stream, against nchan's


def render_targets(by, syncs, waiting, flat_size):
    """The targets of issue 26, one row per repetition: `by` maps
    (server, scenario) to its runs, `syncs` a run's label to its sync
    figures (`metrics.sync_figures`); `flat_size` names the flat-cost run
    whose CPU per callback is compared. Lines of markdown ([] without the
    runs)."""
    def rep_of(r):
        return r["label"].split("/")[2]

    def runs(server, scenario):
        return {rep_of(r): r for r in by.get((server, scenario), [])}

    def f2(v, spec=".2f"):
        return "n/a" if v is None else format(v, spec)

    def mark(ok):
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    def at_most(a, b):
        return None if a is None or b is None else a <= b

    def cpu(r):
        return r.get("server_cpu_us_per_callback") if r else None

    def lat(r, key):
        return r["latency"][key] if r else None

    flat = f"flat-{flat_size}"
    mem_lat, nchan_lat = runs("paypush-memory", "latency-2000"), runs("nchan", "latency-2000")
    mem_flat, nchan_flat = runs("paypush-memory", flat), runs("nchan", flat)
    disk_lat, disk_flat = runs("paypush", "latency-2000"), runs("paypush", flat)
    disk_tput, nchan_tput = runs("paypush", "tput-stream"), runs("nchan", "tput-stream")
    reps = sorted(set(mem_lat) | set(disk_lat) | set(disk_tput), key=int)
    if not reps:
        return []
    lines = ["## Targets, in each repetition", ""]

    def tally(oks):
        oks = [ok for ok in oks if ok is not None]
        return f"met in {sum(oks)} of {len(oks)} repetitions."

    lines.append(f"**`--in-memory` against nchan**, callbacks at 2,000/s with {waiting:,} streams waiting: "
                 "p50 and p99 callback -> event at or under nchan's, and server CPU per callback "
                 f"(the flat-cost run, {flat_size:,} waiting) at or under nchan's.")
    lines.append("")
    lines.append("| rep | p50 memory / nchan (ms) | p99 memory / nchan (ms) | CPU per callback memory / nchan (µs) | met |")
    lines.append("|---|---:|---:|---:|---|")
    oks = []
    for rep in reps:
        m, n, mf, nf = mem_lat.get(rep), nchan_lat.get(rep), mem_flat.get(rep), nchan_flat.get(rep)
        checks = [at_most(lat(m, "p50_ms"), lat(n, "p50_ms")), at_most(lat(m, "p99_ms"), lat(n, "p99_ms")),
                  at_most(cpu(mf), cpu(nf))]
        ok = None if None in checks else all(checks)
        oks.append(ok)
        lines.append(f"| {rep} | {f2(lat(m, 'p50_ms'))} / {f2(lat(n, 'p50_ms'))} "
                     f"| {f2(lat(m, 'p99_ms'))} / {f2(lat(n, 'p99_ms'))} "
                     f"| {f2(cpu(mf), '.1f')} / {f2(cpu(nf), '.1f')} | {mark(ok)} |")
    lines += ["", tally(oks), ""]

    lines.append("**The durable default against `--in-memory`**, the same runs: p99 at 2,000/s at most "
                 "the in-memory p99 plus the p99 of that run's `fdatasync` calls (read off "
                 "`paypush_store_sync_seconds`); CPU per callback at most the in-memory figure plus the "
                 "store thread's CPU per sync (the write, the `fdatasync`, answering the batch) divided "
                 "by the callbacks a sync carried.")
    lines.append("")
    lines.append("| rep | p99 durable (ms) | in-memory p99 + sync p99 (ms) | syncs over 1 ms | met "
                 "| CPU per callback durable (µs) | in-memory + store thread per sync / callbacks per sync (µs) | met |")
    lines.append("|---|---:|---:|---:|---|---:|---:|---|")
    p99_oks, cpu_oks = [], []
    for rep in reps:
        d, m = disk_lat.get(rep), mem_lat.get(rep)
        sync = syncs.get(d["label"], {}) if d else {}
        bound = None if m is None or sync.get("p99_ms") is None else lat(m, "p99_ms") + sync["p99_ms"]
        p99_ok = at_most(lat(d, "p99_ms"), bound)
        df, mf = disk_flat.get(rep), mem_flat.get(rep)
        fsync = syncs.get(df["label"], {}) if df else {}
        per_sync, n_syncs = fsync.get("writer_us_per_sync"), fsync.get("syncs")
        added = (None if per_sync is None or not n_syncs or not df or not df.get("callbacks_ok")
                 else per_sync * n_syncs / df["callbacks_ok"])
        cpu_bound = None if added is None or cpu(mf) is None else cpu(mf) + added
        cpu_ok = at_most(cpu(df), cpu_bound)
        p99_oks.append(p99_ok)
        cpu_oks.append(cpu_ok)
        bound_text = "n/a" if bound is None else f"{lat(m, 'p99_ms'):.2f} + {sync['p99_ms']:.2f} = {bound:.2f}"
        cpu_text = ("n/a" if cpu_bound is None else
                    f"{cpu(mf):.1f} + {per_sync:.0f} / {df['callbacks_ok'] / n_syncs:.2f} = {cpu_bound:.1f}")
        lines.append(f"| {rep} | {f2(lat(d, 'p99_ms'))} | {bound_text} | "
                     f"{sync.get('over_1ms', 'n/a')} of {sync.get('syncs', 'n/a')} | {mark(p99_ok)} "
                     f"| {f2(cpu(df), '.1f')} | {cpu_text} | {mark(cpu_ok)} |")
    lines += ["", "p99: " + tally(p99_oks) + " CPU: " + tally(cpu_oks), ""]

    lines.append(f"**Callbacks/s with a waiting stream, durable default**: at least {TPUT_TARGET:.1f}x nchan's.")
    lines.append("")
    lines.append("| rep | durable | nchan | ratio | met |")
    lines.append("|---|---:|---:|---:|---|")
    oks = []
    for rep in reps:
        d, n = disk_tput.get(rep), nchan_tput.get(rep)
        a = d["callbacks_per_second"] if d else None
        b = n["callbacks_per_second"] if n else None
        ratio = None if a is None or not b else a / b
        ok = None if ratio is None else ratio >= TPUT_TARGET
        oks.append(ok)
        lines.append(f"| {rep} | {f2(a, ',.0f')} | {f2(b, ',.0f')} | {f2(ratio)} | {mark(ok)} |")
    lines += ["", tally(oks), ""]
    return lines + render_floor(runs, reps, flat, tally)


def render_floor(runs, reps, flat, tally):
    """The design's floor (`tools/floor`) against nchan and `--in-memory`
    in the runs the targets compare: what the fixed shape alone leaves of
    the gap. Lines of markdown ([] without floor runs)."""
    floor = {scenario: runs("floor", scenario) for scenario in ("latency-2000", flat, "tput-stream")}
    if not any(floor.values()):
        return []
    others = {server: {scenario: runs(server, scenario) for scenario in floor}
              for server in ("paypush-memory", "nchan")}

    def cell(scenario, key, spec):
        def value(r):
            if r is None:
                return None
            return r["latency"][key] if key.endswith("_ms") else r.get(key)
        values = [value(table[scenario].get(rep))
                  for table in (floor, others["paypush-memory"], others["nchan"])]
        return " / ".join("n/a" if v is None else format(v, spec) for v in values)

    lines = ["**The design's floor**: `tools/floor`, the shape the design fixes (warp filters, a "
             "shared map of oneshot senders, a `warp::sse` reply, one runtime thread) and nothing "
             "else: no store, deadlines, limits, metrics or replay. The same runs; what it leaves "
             "of the gap to nchan belongs to the shape, the rest to paypush's own work. Each cell: "
             "floor / `--in-memory` / nchan.", "",
             "| rep | p50 floor / memory / nchan (ms) | p99 (ms) | CPU per callback (µs) "
             "| callbacks/s with a stream | outcomes lost |",
             "|---|---:|---:|---:|---:|---:|"]
    oks = []
    for rep in reps:
        f, n = floor["latency-2000"].get(rep), others["nchan"]["latency-2000"].get(rep)
        oks.append(None if f is None or n is None else f["latency"]["p50_ms"] <= n["latency"]["p50_ms"])
        lost = sum(r["lost"] for r in (table.get(rep) for table in floor.values()) if r)
        lines.append(f"| {rep} | {cell('latency-2000', 'p50_ms', '.2f')} "
                     f"| {cell('latency-2000', 'p99_ms', '.2f')} "
                     f"| {cell(flat, 'server_cpu_us_per_callback', '.1f')} "
                     f"| {cell('tput-stream', 'callbacks_per_second', ',.0f')} | {lost} |")
    lines += ["", "The floor's p50 at or under nchan's: " + tally(oks), ""]
    return lines
