"""The benchmark itself: the options, the sizes, the order of the scenarios
(the servers alternating, each scenario on a freshly started server), then
the report written to docs/performance.md."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from . import loadgen, metrics, pushpin, report, scaleout, store
from .servers import NCHAN_MODULE, NCHAN_PORT, Servers, answers, http_get, log, nchan_conf

USAGE = """Measures paypush side by side with nginx + nchan (the peer of issue 6) and
writes the table to docs/performance.md.

Usage: scripts/bench-compare [--quick] [--reps N] [--no-scaleout]

  --quick        1 repetition at small sizes: a smoke test of the whole chain
  --reps N       repetitions of every scenario (default 5; the table shows medians)
  --no-scaleout  skips the scale-out rows

Needs cargo, and installs what else it needs as scripts/test does
(scripts/test-deps --bench: curl, python3, nginx and its nchan module,
redis-server, haproxy, h2load, as root or through sudo); it measures paypush
in Redis mode too (a redis-server of its own). The nchan configuration is
benches/nchan.conf in this repository ($NCHAN_CONF overrides it;
$PAYPUSH_BENCH_PORT and $PAYPUSH_BENCH_REDIS_PORT move paypush's and Redis's
ports from 8080 and 16379). Each scenario runs on a freshly started server
(so memory figures start from the same state, and paypush on an empty data
folder of its own, in a temporary working directory), the servers
alternating: paypush (the default: store on disk, --durability disk), nchan,
paypush-redis, then for the throughput, latency and memory rows
paypush-process (--durability process) and paypush-memory (--in-memory),
which also gets the flat-cost rows. Every paypush runs with --workers 1, as
nchan.conf runs one nginx worker. A section first shows the targets of
issue 26 in each repetition: --in-memory against nchan, the durable default
against --in-memory plus that run's fdatasync p99 and the store thread's
CPU, and the durable default's callbacks/s against nchan's; then the same
figures for the design's floor (tools/floor: warp filters, a shared map of
oneshot senders and a warp::sse reply, nothing else, on one thread), which
runs in the latency row at 2 000/s, the flat-cost rows and callbacks/s with
a stream.
With Debian's pushpin, Pushpin is a second peer (scripts/bench_compare/
pushpin.py: its stock message_rate limit off, the stream closed after its
event, its memory and CPU summed over all its processes, its origin's not
counted) in the memory, latency (1 000 and 2 000/s) and callbacks/s with a
stream rows. Last, the store's own figures: the folder's size after 1 000 000 callbacks
and the restart time with them on disk. With redis-server and redis-cli, the
scale-out rows: 3 paypush instances on one Redis against 3 on a 3-primary,
3-replica Redis Cluster (loopback ports 16380-16385 and their bus ports),
with Redis commands and pub/sub messages per callback, and callbacks/s on
clusters of 1 and 2 shards too, with the CPU per checkout of the primaries
and the replicas. All servers are
stopped at the end.
Besides SSE, the long-poll (/status, nchan's longpoll) and WebSocket (/ws,
nchan's websocket) transports get memory and latency rows: nchan runs on a
copy of nchan.conf with two subscriber locations added on the same channels,
/sub-poll/{id} and /sub-ws/{id} (kept if the file has them).
HTTP/2 cleartext (h2c): memory and latency of streams carried over a few h2c
connections (loadgen --h2c-connections) for paypush and for nchan (the copy
of nchan.conf also listens with `http2` on a plain port); HAProxy + paypush
(h2c between them) against nginx + nchan alone for browser-style HTTP/1.1
streams; and a million streams waiting in one paypush over 200 h2c
connections while callbacks are measured at 2 000/s.
Everything talks to 127.0.0.1 only; every run is bounded in count and time.
"""


def options(argv):
    parser = argparse.ArgumentParser(prog="bench-compare", usage=argparse.SUPPRESS,
                                     description=USAGE, add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-scaleout", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    if args.help:
        print(USAGE, end="")
        sys.exit(0)
    if unknown:
        print(f"bench-compare: unknown argument {unknown[0]}", file=sys.stderr)
        sys.exit(2)
    # As the shell version: --quick sets 1 repetition, a later --reps wins.
    reps = 5
    for arg in argv:
        if arg == "--quick":
            reps = 1
        elif arg == "--reps":
            reps = args.reps
    args.reps = reps
    return args


def sizes(quick):
    """How many streams and callbacks each scenario uses."""
    if quick:
        return dict(mem_small=2000, mem_big=3000, lat_idle=1000, lat_targets=1000,
                    tput_callbacks=50000, tput_duration="2s", tput_streams=3000,
                    flat_sizes=[500, 3000], h2c_streams=3000, proxy_streams=2000,
                    big_h2c_streams=10000, store_callbacks=100000)
    return dict(mem_small=10000, mem_big=19000, lat_idle=10000, lat_targets=5000,
                tput_callbacks=250000, tput_duration="5s", tput_streams=18000,
                flat_sizes=[1000, 10000, 19000], h2c_streams=20000, proxy_streams=8000,
                big_h2c_streams=1000000, store_callbacks=1000000)


def command(*args, check=False):
    """A command's output, stripped ("" if it cannot run)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=check)
    except OSError:
        return ""
    return (out.stdout + out.stderr).strip() if args[0] == "nginx" else out.stdout.strip()


def machine():
    """What the report says about the machine and the versions measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in command("lscpu").splitlines()
                if line.startswith("Model name:")), "")
    mem = next((line.split()[1] for line in command("free", "-g").splitlines()
                if line.startswith("Mem:")), "")
    nginx = re.sub(r".*nginx/", "", command("nginx", "-v"))
    nchan = command("dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan")
    nchan = re.sub(r"\+.*", "", re.sub(r"^[0-9]*:", "", nchan))
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gib": mem,
        "paypush_version": command("git", "describe", "--always", "--dirty") or "unknown",
        "nginx_version": nginx,
        "nchan_version": nchan,
        "pushpin_version": re.sub(r"-.*", "", command("dpkg-query", "-W", "-f", "${Version}",
                                                      "pushpin")),
    }


def check_tools(nchan_conf_path, paypush_port):
    missing = [tool for tool in ("cargo", "curl", "python3", "nginx") if not shutil.which(tool)]
    if not os.path.isfile(NCHAN_MODULE):
        missing.append(f"{NCHAN_MODULE} (libnginx-mod-nchan)")
    if not os.path.isfile(nchan_conf_path):
        missing.append(f"{nchan_conf_path} (NCHAN_CONF)")
    if missing:
        log(f"bench-compare: missing: {' '.join(missing)}")
        log("  Debian: apt-get install nginx libnginx-mod-nchan curl python3")
        sys.exit(1)
    for port in (paypush_port, NCHAN_PORT):
        if answers(port):
            log(f"bench-compare: something already listens on 127.0.0.1:{port}; stop it first")
            sys.exit(1)


class Bench:
    """One run of the whole benchmark: its settings, servers and results."""

    def __init__(self, repo, opts):
        self.repo = repo
        self.reps = opts.reps
        self.size = sizes(opts.quick)
        self.paypush_port = int(os.environ.get("PAYPUSH_BENCH_PORT", "8080"))
        self.redis_port = int(os.environ.get("PAYPUSH_BENCH_REDIS_PORT", "16379"))
        self.servers = ["paypush", "nchan"]
        # The second peer, in the rows of a waiting SSE stream over HTTP/1.1:
        # memory, latency and callbacks/s with a stream.
        self.peers = ["pushpin"] if shutil.which("pushpin") else []
        if not self.peers:
            log("bench-compare: no pushpin, so no Pushpin figures")
        if shutil.which("redis-server"):
            self.servers.append("paypush-redis")
        else:
            log("bench-compare: no redis-server, so no Redis-mode figures")
        # The fixed design's shape alone (tools/floor), in the rows the
        # targets compare: how much of a gap to nchan the shape itself leaves.
        self.floor = ["floor"]
        # The other ways paypush keeps outcomes, measured where the store could matter.
        self.store_modes = ["paypush-process", "paypush-memory"]
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target")
        self.paypush_bin = os.path.join(target, "release", "paypush")
        self.loadgen_bin = os.path.join(target, "release", "loadgen")

    def prepare(self):
        """The folder of the raw output, and nchan's configuration in it."""
        repo = self.repo
        self.work = tempfile.mkdtemp(prefix="bench-compare.", dir="/tmp")
        self.results_path = os.path.join(self.work, "results.jsonl")
        self.runs, self.syncs = [], []
        open(self.results_path, "w").close()
        log_out(f"== raw output in {self.work}")
        conf_path = os.environ.get("NCHAN_CONF") or os.path.join(repo, "benches", "nchan.conf")
        self.nchan_conf_used = os.path.join(self.work, "nchan.conf")
        with open(conf_path) as f, open(self.nchan_conf_used, "w") as out:
            out.write(nchan_conf(f.read()))
        self.server = Servers(self.work, self.paypush_bin, self.paypush_port, self.redis_port,
                              self.nchan_conf_used)

    def run(self, server, scenario, rep, *args):
        """One scenario on a fresh server: a scenario named *-poll or *-ws
        uses that transport, *-h2c SSE over h2c connections (paypush then
        allows 150 000 streams, or a tenth more than the run opens: h2c
        streams cost no file descriptor), any other SSE over HTTP/1.1."""
        transport = loadgen_transport = "sse"
        if scenario.endswith("-poll"):
            transport = loadgen_transport = "poll"
        elif scenario.endswith("-ws"):
            transport = loadgen_transport = "ws"
        elif scenario.endswith("-h2c"):
            transport = "h2c"
        subscribe, publish = loadgen.urls(server, transport, self.paypush_port)
        extra = []
        if server == "pushpin":
            subscribe, publish, extra = pushpin.urls()
        streams = int(args[list(args).index("--streams") + 1]) if "--streams" in args else 0
        env = ({"PAYPUSH_MAX_STREAMS": str(max(150000, streams * 11 // 10))}
               if transport == "h2c" else {})
        self.server.start(server, env)
        try:
            log_path = os.path.join(self.work, f"{server}-{scenario}-{rep}.txt")
            text = loadgen.run(self.loadgen_bin, [
                "--transport", loadgen_transport, "--subscribe", subscribe, "--publish", publish,
                "--server-pid", self.server.pids, "--sources", str(loadgen.SOURCES),
                "--label", f"{server}/{scenario}/{rep}", *extra, *map(str, args)], log_path)
            # paypush's syncs in a run with callbacks: whether a slow run met
            # a slow disk, and the p99 and CPU of a sync that the targets use.
            if server == "paypush" and not scenario.startswith("mem-"):
                writer_ns, _ = store.store_cost(self.server.pid, self.work)
                figures = metrics.sync_figures(http_get(self.paypush_port, "/metrics"),
                                               f"{server}/{scenario}/{rep}", writer_ns)
                self.syncs.append(figures)
        finally:
            self.server.stop()
        line = metrics.last_json_text(text)
        if line is not None:
            with open(self.results_path, "a") as f:
                f.write(line + "\n")
            r = json.loads(line)
            self.runs.append(r)
            print(loadgen.summary(r), flush=True)

    def scenarios(self):
        z, servers, store_modes = self.size, self.servers, self.store_modes
        latency = ["--streams", z["lat_idle"] + z["lat_targets"], "--callbacks", z["lat_targets"]]
        for rep in range(1, self.reps + 1):
            log_out(f"== repetition {rep} of {self.reps}")
            peers = self.peers
            for server in servers + store_modes + peers:
                self.run(server, "mem-small", rep, "--streams", z["mem_small"], "--callbacks", 0)
            for server in servers:
                self.run(server, "mem-big", rep, "--streams", z["mem_big"], "--callbacks", 0)
            for rate in (1000, 2000, 5000):
                modes = servers + store_modes + self.floor if rate == 2000 else servers
                modes = modes + (peers if rate < 5000 else [])
                for server in modes:
                    self.run(server, f"latency-{rate}", rep, *latency,
                             "--rate", rate, "--deadline", "5s")
            for transport in ("poll", "ws"):
                for server in servers:
                    self.run(server, f"mem-big-{transport}", rep, "--streams", z["mem_big"],
                             "--callbacks", 0)
                for server in servers:
                    self.run(server, f"latency-2000-{transport}", rep, *latency,
                             "--rate", 2000, "--deadline", "5s")
            # HTTP/2 cleartext: nchan says nothing until its message, so its
            # streams count once their headers arrive; paypush's at their
            # pending event.
            for server in ("paypush", "nchan"):
                ready = "headers" if server == "nchan" else "pending"
                h2c = ["--h2c-connections", H2C_CONNECTIONS, "--ready", ready]
                self.run(server, "mem-h2c", rep, "--streams", z["h2c_streams"], "--callbacks", 0,
                         *h2c)
                self.run(server, "latency-2000-h2c", rep, *latency, "--rate", 2000,
                         "--deadline", "5s", *h2c)
            for server in ("haproxy-paypush", "nchan"):
                self.run(server, "mem-proxy", rep, "--streams", z["proxy_streams"],
                         "--callbacks", 0)
            for size in z["flat_sizes"]:
                for server in servers + ["paypush-memory"] + self.floor:
                    self.run(server, f"flat-{size}", rep, "--streams", size,
                             "--callbacks", 1000, "--rate", 2000, "--deadline", "5s")
            for server in servers + store_modes:
                self.run(server, "tput-nostream", rep, "--streams", 0,
                         "--callbacks", z["tput_callbacks"], "--duration", z["tput_duration"],
                         "--connections", 64)
            for server in servers + store_modes + peers + self.floor:
                self.run(server, "tput-stream", rep, "--streams", z["tput_streams"],
                         "--callbacks", z["tput_streams"], "--connections", 64)

    def big_h2c(self):
        z = self.size
        log_out(f"== {z['big_h2c_streams']} streams over {BIG_H2C_CONNECTIONS} h2c connections, "
                "callbacks at 2,000/s")
        self.run("paypush", "big-h2c", 1, "--streams", z["big_h2c_streams"],
                 "--callbacks", z["lat_targets"], "--rate", 2000, "--deadline", "5s",
                 "--h2c-connections", BIG_H2C_CONNECTIONS, "--ready", "pending",
                 "--open-timeout", "800s")


H2C_CONNECTIONS = 10                     # h2c connections carrying the streams
BIG_H2C_CONNECTIONS = 200               # 5 000 streams each at full size


def log_out(message):
    print(message, flush=True)


def main(argv):
    opts = options(argv)
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    os.chdir(repo)
    nchan_conf_path = os.environ.get("NCHAN_CONF") or os.path.join(repo, "benches", "nchan.conf")
    paypush_port = int(os.environ.get("PAYPUSH_BENCH_PORT", "8080"))
    subprocess.run(["scripts/test-deps", "--bench"], check=True)
    check_tools(nchan_conf_path, paypush_port)

    bench = Bench(repo, opts)
    log_out("== building paypush, loadgen and floor (release)")
    subprocess.run(["cargo", "build", "--release", "--bin", "paypush"], check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "loadgen", "-p", "floor"], check=True)
    bench.prepare()

    scaleout_runs = []
    try:
        bench.scenarios()
        if not opts.no_scaleout:
            scaleout_runs = scaleout.measure(bench)
        bench.big_h2c()
        store_row = store.measure(bench)
    finally:
        bench.server.stop()

    log_out("== hub micro-benchmarks (criterion)")
    hub_log = os.path.join(bench.work, "bench-hub.txt")
    with open(hub_log, "wb") as out:
        if subprocess.run(["cargo", "bench", "--bench", "hub"], stdout=out,
                          stderr=subprocess.STDOUT).returncode != 0:
            log(f"   cargo bench failed, see {hub_log}")
    with open(hub_log, encoding="utf-8", errors="replace") as f:
        hub = metrics.criterion_times(f.read())

    command_line = "scripts/bench-compare"
    if opts.quick:
        command_line += " --quick"
    elif opts.reps != 5:
        command_line += f" --reps {opts.reps}"
    z = bench.size
    results = {
        "settings": {
            "mem_small": z["mem_small"], "mem_big": z["mem_big"], "lat_idle": z["lat_idle"],
            "tput_streams": z["tput_streams"], "flat_sizes": z["flat_sizes"],
            "h2c_streams": z["h2c_streams"], "h2c_connections": H2C_CONNECTIONS,
            "proxy_streams": z["proxy_streams"], "big_h2c_connections": BIG_H2C_CONNECTIONS,
            "reps": opts.reps, "servers": bench.servers, "store_modes": bench.store_modes,
            "peers": bench.peers,
            "command_line": command_line,
        },
        "machine": machine(),
        "runs": bench.runs,
        "syncs": bench.syncs,
        "store": store_row,
        "hub": hub,
        "scaleout": scaleout_runs,
    }
    with open(os.path.join(bench.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = report.render(results)
    os.makedirs("docs", exist_ok=True)
    with open("docs/performance.md", "w") as f:
        f.write(text)
    print(text, end="")
    log_out(f"== written to docs/performance.md; raw results in {bench.results_path}")
