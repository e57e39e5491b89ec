"""The report: docs/performance.md as a pure function of the results.

`render(results)` takes what one `scripts/bench-compare` run gathered (the
dictionary that `bench_compare.run` builds and saves as results.json beside
the raw output) and returns the markdown; it reads no file and runs nothing,
so `test_report.py` checks it on a small fixture. Its first section, the
targets in each repetition with the design's floor, is `targets.py`.

`results` holds:

- `settings`: the sizes and names the run used (`mem_small`, `mem_big`,
  `lat_idle`, `tput_streams`, `flat_sizes`, `h2c_streams`, `h2c_connections`,
  `proxy_streams`, `big_h2c_connections`, `reps`, `servers`, `store_modes`,
  `command_line`);
- `machine`: `cores`, `cpu`, `mem_gib`, `paypush_version`, `nginx_version`,
  `nchan_version`;
- `runs`: loadgen's JSON lines, labelled `SERVER/SCENARIO/REP`;
- `syncs`: paypush's fdatasync figures per latency run (see
  `metrics.sync_figures`);
- `store`: the store's figures (see `metrics.store_figures`);
- `hub`: criterion's estimate per benchmark (`group/size` -> `"12.3 ns"`);
- `scaleout`: loadgen's JSON lines of the scale-out runs, with
  `redis_commands` and `pubsub_messages` added (empty: no such section).
"""

import statistics

from .targets import render_targets


def render(results):
    """docs/performance.md for `results` (see the module's doc)."""
    return render_main(results) + render_scaleout(results.get("scaleout") or [])


def render_main(results):
    """Everything but the scale-out section."""
    settings, machine = results["settings"], results["machine"]
    lines = []

    def out(text=""):
        lines.append(text)

    runs = results["runs"]
    by = {}
    for r in runs:
        server, scenario, _ = r["label"].split("/")
        by.setdefault((server, scenario), []).append(r)

    def med(server, scenario, f):
        values = [f(r) for r in by.get((server, scenario), []) if f(r) is not None]
        return statistics.median(values) if values else None

    def total(server, scenario, f):
        return sum(f(r) for r in by.get((server, scenario), []))

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    def growth(server, small, big, f):
        """Median over repetitions of f(big run) / f(small run): 1.00 is flat.
        Paired by repetition, so a slow spell of the machine cancels out."""
        def by_rep(sc):
            return {r["label"].split("/")[2]: f(r) for r in by.get((server, sc), [])}
        a, b = by_rep(small), by_rep(big)
        ratios = [b[k] / a[k] for k in a if a[k] and b.get(k) is not None]
        return statistics.median(ratios) if ratios else None

    rows = []
    for scenario, n in (("mem-small", settings["mem_small"]), ("mem-big", settings['mem_big'])):
        rows.append((f"memory per waiting stream, server Pss ({n:,} streams)",
                     lambda s, sc=scenario: fmt(med(s, sc, lambda r: r["pss_per_stream_kib"]), ".2f") + " KiB"))
        rows.append((f"memory per waiting stream, server RSS ({n:,} streams)",
                     lambda s, sc=scenario: fmt(med(s, sc, lambda r: r["rss_per_stream_kib"]), ".2f") + " KiB"))
    rows.append((f"streams held by one process, of {settings['mem_big']:,} requested",
                 lambda s: fmt(med(s, "mem-big", lambda r: r["streams_held"]), ",.0f")))
    for rate in (1000, 2000, 5000):
        sc = f"latency-{rate}"
        rows.append((f"callback -> event p50 / p99 at {rate:,}/s, {settings['lat_idle']:,} streams waiting (ms)",
                     lambda s, sc=sc: fmt(med(s, sc, lambda r: r["latency"]["p50_ms"]), ".2f") + " / "
                     + fmt(med(s, sc, lambda r: r["latency"]["p99_ms"]), ".2f")))
        rows.append((f"... p99.9 / max at {rate:,}/s (ms)",
                     lambda s, sc=sc: fmt(med(s, sc, lambda r: r["latency"]["p999_ms"]), ".2f") + " / "
                     + fmt(med(s, sc, lambda r: r["latency"]["max_ms"]), ".2f")))
    lat = [f"latency-{r}" for r in (1000, 2000, 5000)]
    rows.append(("outcomes lost / duplicated (all latency runs, summed)",
                 lambda s: f'{sum(total(s, sc, lambda r: r["lost"]) for sc in lat)} / '
                           f'{sum(total(s, sc, lambda r: r["duplicated"]) for sc in lat)}'))
    def minus(a, b):
        return None if a is None or b is None else a - b

    for transport, name in (("poll", "long-poll"), ("ws", "WebSocket")):
        mem, lat_t = f"mem-big-{transport}", f"latency-2000-{transport}"
        pss = lambda r: r["pss_per_stream_kib"]
        p99 = lambda r: r["latency"]["p99_ms"]
        rows.append((f"{name}: memory per waiting client, server Pss / RSS ({settings['mem_big']:,} waiting)",
                     lambda s, sc=mem: fmt(med(s, sc, pss), ".2f") + " / "
                     + fmt(med(s, sc, lambda r: r["rss_per_stream_kib"]), ".2f") + " KiB"))
        rows.append(("... Pss against a waiting SSE stream (target: 0 or less)",
                     lambda s, sc=mem: fmt(minus(med(s, sc, pss), med(s, "mem-big", pss)), "+.2f") + " KiB"))
        rows.append((f"{name}: callback -> outcome p50 / p99 at 2,000/s, {settings['lat_idle']:,} waiting (ms)",
                     lambda s, sc=lat_t: fmt(med(s, sc, lambda r: r["latency"]["p50_ms"]), ".2f") + " / "
                     + fmt(med(s, sc, p99), ".2f")))
        rows.append(("... p99 against SSE's at 2,000/s (target: +0.20 ms or less)",
                     lambda s, sc=lat_t: fmt(minus(med(s, sc, p99), med(s, "latency-2000", p99)), "+.2f") + " ms"))
        rows.append((f"... held of {settings['mem_big']:,}; outcomes lost / duplicated at 2,000/s",
                     lambda s, m=mem, sc=lat_t: fmt(med(s, m, lambda r: r["streams_held"]), ",.0f") + "; "
                     + f'{total(s, sc, lambda r: r["lost"])} / {total(s, sc, lambda r: r["duplicated"])}'))
    sizes = [int(n) for n in settings["flat_sizes"]]
    for size in sizes:
        sc = f"flat-{size}"
        rows.append((f"flat cost: p50 / p99 (ms) and server CPU per callback, 1,000 callbacks at 2,000/s, {size:,} streams waiting",
                     lambda s, sc=sc: fmt(med(s, sc, lambda r: r["latency"]["p50_ms"]), ".2f") + " / "
                     + fmt(med(s, sc, lambda r: r["latency"]["p99_ms"]), ".2f") + " ms, "
                     + fmt(med(s, sc, lambda r: r.get("server_cpu_us_per_callback")), ".1f") + " µs"))
    flat = [f"flat-{n}" for n in sizes]
    rows.append((f"flat cost: {sizes[-1]:,} against {sizes[0]:,} streams waiting, p99 and server CPU per "
                 "callback (ratio; 1.00 is flat)",
                 lambda s: fmt(growth(s, flat[0], flat[-1], lambda r: r["latency"]["p99_ms"]), ".2f")
                 + " / " + fmt(growth(s, flat[0], flat[-1],
                                      lambda r: r.get("server_cpu_us_per_callback")), ".2f")))
    rows.append(("callbacks/s, 64 keep-alive connections, no waiting stream",
                 lambda s: fmt(med(s, "tput-nostream", lambda r: r["callbacks_per_second"]), ",.0f")))
    rows.append((f"callbacks/s, each to a payment with a waiting stream ({settings['tput_streams']:,})",
                 lambda s: fmt(med(s, "tput-stream", lambda r: r["callbacks_per_second"]), ",.0f")))
    rows.append(("... server CPU per callback (stream closed by the client on its outcome)",
                 lambda s: fmt(med(s, "tput-stream", lambda r: r.get("server_cpu_us_per_callback")), ".1f") + " µs"))
    rows.append(("... outcomes delivered/s in that run",
                 lambda s: fmt(med(s, "tput-stream", lambda r: r["deliveries_per_second"]), ",.0f")))
    rows.append(("callbacks answered non-2xx or failed (all runs, summed)",
                 lambda s: str(sum(r["callbacks_rejected"] + r["callbacks_failed"]
                                   for (srv, _), rs in by.items() if srv == s for r in rs))))

    out("# Performance: paypush and nginx + nchan, side by side")
    out()
    out("Written by `scripts/bench-compare`; do not edit by hand. Reproduce with:")
    out()
    out(f"    {settings['command_line']}")
    out()
    out(f"Machine: {machine['cores']} cores, {machine['cpu']}, {machine['mem_gib']} GiB; the load generator "
          "(`tools/loadgen/`) runs on the same machine. "
          f"paypush {machine['paypush_version']} (`--push-timeout 10m --keep-alive 15s --workers 1`: one "
          "thread serving connections, as nchan runs one nginx worker; `RUST_LOG=warn`; "
          "its store on disk with `--durability disk`, the default; "
          "*paypush-redis*: the same with `--redis-url` to a local redis-server, whose own memory "
          "and CPU are not counted; *paypush-process*: `--durability process`; "
          "*paypush-memory*: `--in-memory`, nothing on disk); "
          f"nginx {machine['nginx_version']} with nchan {machine['nchan_version']}, 1 worker (`benches/nchan.conf`, "
          "plus a `longpoll` and a `websocket` subscriber location on the same channels)"
          + (f"; *pushpin*: Pushpin {machine.get('pushpin_version', '')} (`scripts/bench_compare/pushpin.py`: "
             "no `message_rate` limit, the stream closed after its event, all its processes counted, "
             "not its origin)" if settings.get("peers") else "") + ". "
          f"Medians of {settings['reps']} repetition(s); each scenario on a freshly started server, "
          "the servers alternating.")
    out()
    # The flat-cost run whose CPU per callback the targets compare: the one
    # with as many streams waiting as the latency runs (or the nearest).
    flat_size = min((int(n) for n in settings["flat_sizes"]),
                    key=lambda n: abs(n - settings["lat_idle"]))
    lines.extend(render_targets(by, {r["label"]: r for r in results["syncs"]},
                                settings["lat_idle"], flat_size))
    out("## Every figure")
    out()
    servers = (list(settings["servers"]) + list(settings["store_modes"])
               + list(settings.get("peers", [])))
    out("| figure | " + " | ".join(servers) + " |")
    out("|---|" + "---:|" * len(servers))
    for name, cell in rows:
        out(f"| {name} | " + " | ".join(cell(s) for s in servers) + " |")
    syncs = {r["label"]: r for r in results["syncs"]}
    for rate in (1000, 2000, 5000):
        per_rep = []
        for r in by.get(("paypush", f"latency-{rate}"), []):
            sync = syncs.get(r["label"], {})
            per_rep.append(f'{r["latency"]["p99_ms"]:.2f} ({fmt(sync.get("sync_ms"), ".3f")} ms, '
                           f'{sync.get("over_1ms", "n/a")} of {sync.get("syncs", "n/a")})')
        if per_rep:
            out()
            out(f"paypush's p99 at {rate:,}/s in each repetition, in ms, with that run's "
                  "fdatasync calls (mean time, and how many of them took over 1 ms): "
                  + "; ".join(per_rep) + ".")
    out()
    out("How each figure is taken:")
    out()
    out("- *Memory per waiting stream*: (server memory with the streams open and "
          "subscribed, minus before) / streams held; Pss from `/proc/PID/smaps_rollup` "
          "(for nginx, master + worker, which share nchan's memory zone), RSS from "
          "`/proc/PID/status`. Kernel socket buffers are not in either.")
    out("- *Streams held*: streams that got `200` and were subscribed (paypush: "
          "saw `event: pending`; nchan, which sends none: got its response head); "
          "both processes run under a 20 000 open-file limit.")
    out("- *Latency*: per payment, from just before the callback request is written "
          "to the outcome event read on that payment's stream; callbacks at a fixed "
          "rate over 64 keep-alive connections. *Lost*: no outcome within 5 s.")
    out("- *callbacks/s*: flat out over 64 keep-alive connections, answered callbacks "
          "/ (last answer - first request). With a waiting stream, the client closes each "
          "stream once it has read the outcome, as a checkout page does "
          "(`EventSource.close()`), for both servers.")
    out("- *Server CPU per callback*: the server's CPU time (all threads, from "
          "`/proc/PID/task/*/schedstat`) from the first callback to the last outcome, "
          "divided by the callbacks answered.")
    out("- *Long-poll and WebSocket rows*: the same measures with `loadgen --transport "
          "poll|ws`: paypush's `/status?wait=25` (asked again on the same connection "
          "after each `PENDING`) and `/ws`, nchan's `longpoll` and `websocket` "
          "subscribers. A long-poll counts as waiting once its request is written (nothing "
          "answers it before the outcome); a paypush socket once its `PENDING` frame is "
          "read, an nchan socket once its `101`. The differences are of medians.")
    out("- *Flat-cost ratio*: per repetition, the figure with the most streams waiting "
          "divided by the figure with the fewest; the median of those ratios. Pairing the "
          "runs of one repetition cancels the machine's slow and fast spells, which move "
          "single figures by up to 25 %.")

    def cell(server, scenario, f, spec, unit=""):
        return fmt(med(server, scenario, f), spec) + unit

    def ratio(a, b):
        return None if a is None or not b else a / b

    pss = lambda r: r["pss_per_stream_kib"]
    p50 = lambda r: r["latency"]["p50_ms"]
    p99 = lambda r: r["latency"]["p99_ms"]
    out()
    out("## HTTP/2 cleartext (h2c) and proxies")
    out()
    out("| figure | paypush | nginx + nchan | ratio |")
    out("|---|---:|---:|---:|")
    a, b = med("paypush", "mem-h2c", pss), med("nchan", "mem-h2c", pss)
    out(f"| memory per waiting stream over h2c, server Pss ({settings['h2c_streams']:,} streams over {settings['h2c_connections']} connections) "
          f"| {fmt(a, '.2f')} KiB | {fmt(b, '.2f')} KiB | {fmt(ratio(a, b), '.2f')} |")
    out(f"| callback -> event p50 / p99 at 2,000/s over h2c, {settings['lat_idle']:,} streams waiting (ms) "
          f"| {cell('paypush', 'latency-2000-h2c', p50, '.2f')} / {cell('paypush', 'latency-2000-h2c', p99, '.2f')} "
          f"| {cell('nchan', 'latency-2000-h2c', p50, '.2f')} / {cell('nchan', 'latency-2000-h2c', p99, '.2f')} | |")
    a, b = med("haproxy-paypush", "mem-proxy", pss), med("nchan", "mem-proxy", pss)
    out(f"| browser streams (HTTP/1.1, {settings['proxy_streams']:,}): Pss per stream of HAProxy + paypush (h2c between them) "
          f"against nginx + nchan alone | {fmt(a, '.2f')} KiB | {fmt(b, '.2f')} KiB | {fmt(ratio(a, b), '.2f')} |")
    big = by.get(("paypush", "big-h2c"), [])
    if big:
        r = big[0]
        out(f"| {r['streams_requested']:,} streams in one paypush over {settings['big_h2c_connections']} h2c connections: held, "
              f"Pss per stream, and {r['callbacks_ok']:,} callbacks at 2,000/s while they wait, p50 / p99 / p99.9 (ms), lost "
              f"| {r['streams_held']:,}, {fmt(r['pss_per_stream_kib'], '.2f')} KiB, "
              f"{r['latency']['p50_ms']:.2f} / {r['latency']['p99_ms']:.2f} / {r['latency']['p999_ms']:.2f}, {r['lost']} | | |")

    store = results["store"]
    out()
    out("## The store (`--durability disk`, the default)")
    out()
    out(f"{store['callbacks']:,} callbacks for distinct payments, flat out over 64 connections, "
          "then a restart (SIGTERM, start, until `/readyz` answers `200`):")
    out()
    out("| figure | value |")
    out("|---|---:|")
    out(f"| outcomes recorded | {store['recorded']:,} |")
    out(f"| data folder size after them | {store['bytes'] / 2**20:.1f} MiB ({store['bytes'] / max(store['recorded'], 1):.1f} bytes per outcome) |")
    out(f"| fdatasync calls, mean time | {store['syncs']:,}, {fmt(store['sync_ms'], '.3f')} ms ({store['recorded'] / max(store['syncs'], 1):.1f} callbacks per sync) |")
    out(f"| the store thread's CPU per sync; write requests the disk completed per sync (the whole disk's, so other writers count too) | {fmt(store['writer_us_per_sync'], '.0f')} µs; {fmt(store['disk_writes_per_sync'], '.2f')} |")
    out(f"| restart until ready, with them on disk | {store['restart_ms']:,} ms ({store['restored'] or 0:,} outcomes restored) |")

    # The hub micro-benchmarks: criterion's point estimate per operation.
    times = results["hub"]
    if times:
        groups = ("register_complete", "complete_no_waiter", "duplicate", "expire")
        hub_sizes = ("1", "1000", "100000")
        out()
        out("## The hub (`cargo bench --bench hub`)")
        out()
        out("Time per operation (criterion's estimate) with 1, 1 000 and 100 000 "
              "payments already waiting in the hub: flat means no scan, no global work.")
        out()
        out("| operation | 1 | 1 000 | 100 000 |")
        out("|---|---:|---:|---:|")
        for g in groups:
            out(f"| {g} | " + " | ".join(times.get(f"{g}/{n}", "n/a") for n in hub_sizes) + " |")

    return "\n".join(lines) + "\n"


def render_scaleout(runs):
    """The scale-out section, or "" without scale-out runs."""
    if not runs:
        return ""
    lines = []

    def out(text=""):
        lines.append(text)

    def med(kind, scenario, f):
        values = [f(r) for r in runs if r["label"].split("/")[:2] == [kind, scenario]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)
    def per(key):
        return lambda r: r[key] / r["callbacks_ok"] if r["callbacks_ok"] else None
    def summed(kind, key):
        return sum(r[key] for r in runs if r["label"].startswith(kind + "/"))
    rows = [
        ("callbacks/s, each to a payment with a waiting stream",
         lambda k: fmt(med(k, "tput-stream", lambda r: r["callbacks_per_second"]), ",.0f")),
        ("callback -> event p50 / p99 at 2,000/s (ms)",
         lambda k: fmt(med(k, "latency-2000", lambda r: r["latency"]["p50_ms"]), ".2f") + " / "
         + fmt(med(k, "latency-2000", lambda r: r["latency"]["p99_ms"]), ".2f")),
        ("Redis commands sent per checkout (the primaries' INFO commandstats, less what the record script runs)",
         lambda k: fmt(med(k, "tput-stream", per("redis_commands")), ".2f")),
        ("pub/sub messages received per callback, all instances together",
         lambda k: fmt(med(k, "tput-stream", per("pubsub_messages")), ".2f")),
        ("outcomes lost / duplicated (all runs, summed)",
         lambda k: f"{summed(k, 'lost')} / {summed(k, 'duplicated')}"),
    ]
    out()
    out("## Scale-out: 3 instances on one Redis against 3 on a Redis Cluster")
    out()
    out("Three paypush instances; streams round-robin over them, callbacks over "
          "64 connections spread over them too (so about two thirds of callbacks reach an "
          "instance that does not hold the stream). *redis3*: one redis-server, "
          "`--redis-url` (one channel that every instance hears); *cluster3*: 3 primaries "
          "and 3 replicas on this machine, `--redis-cluster` (a channel per waiting "
          "payment, a `WAIT 1` after each batch of callbacks before their `200`). Redis's "
          "CPU is not in paypush's figures (the shards table below gives it); it shares the "
          "machine's cores with the instances and the load generator.")
    out()
    out("| figure | redis3 | cluster3 |")
    out("|---|---:|---:|")
    for name, cell in rows:
        out(f"| {name} | {cell('redis3')} | {cell('cluster3')} |")
    shards = [(n, f"cluster{n}") for n in (1, 2, 3)
              if any(r["label"].startswith(f"cluster{n}/tput-stream/") for r in runs)]
    if len(shards) > 1:
        lines.extend(render_shards(shards, med, fmt))

    return "\n".join(lines) + "\n"


def render_shards(shards, med, fmt):
    """How callbacks/s and CPU per checkout go with 1, 2 and 3 shards, and
    what a 30-shard cluster would carry by these figures."""
    def per_checkout(key):
        return lambda r: r[key] / r["callbacks_ok"] * 1e6 if r.get(key) is not None \
            and r["callbacks_ok"] else None
    lines = ["", "### Over 1, 2 and 3 shards", "",
             "The same 3 instances and callbacks/s run on a cluster of 1, 2 and 3 shards, "
             "each primary with a replica, all on this machine's cores. CPU per checkout is "
             "over the whole run (its streams opening included), summed over the processes of "
             "each kind. The last column divides 30 cores by the primaries' CPU per checkout: "
             "what 30 shards would carry with each primary on a core of its own (and paypush "
             "instances and replicas enough beside them).", "",
             "| shards | callbacks/s with a stream | paypush CPU per callback | primaries' CPU "
             "per checkout | replicas' CPU per checkout | 30 shards, a core each, by these "
             "figures |", "|---:|---:|---:|---:|---:|---:|"]
    def with_unit(v, spec, unit):
        return "n/a" if v is None else f"{fmt(v, spec)} {unit}"
    for n, kind in shards:
        primaries = med(kind, "tput-stream", per_checkout("redis_primary_cpu_s"))
        replicas = med(kind, "tput-stream", per_checkout("redis_replica_cpu_s"))
        paypush = med(kind, "tput-stream", lambda r: r.get("server_cpu_us_per_callback"))
        thirty = None if not primaries else 30 * 1e6 / primaries
        lines.append(f"| {n} | {fmt(med(kind, 'tput-stream', lambda r: r['callbacks_per_second']), ',.0f')} "
                     f"| {with_unit(paypush, '.1f', 'µs')} | {with_unit(primaries, '.1f', 'µs')} "
                     f"| {with_unit(replicas, '.1f', 'µs')} "
                     f"| {with_unit(thirty, ',.0f', 'checkouts/s')} |")
    return lines

