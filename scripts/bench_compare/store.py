"""The store's own figures (`--durability disk`, the default): the data
folder's size after many callbacks for distinct payments, what a sync costs
this machine, and the restart time with them on disk."""

import glob
import json
import os
import shutil
import signal
import subprocess
import time

from . import loadgen, metrics
from .servers import http_get, log, ok


def store_cost(pid, work):
    """The store writer's CPU time so far (ns) and the write requests
    completed by the disk under the data folder (each "n/a" if not found)."""
    cpu = writes = "n/a"
    for thread in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(os.path.join(thread, "comm")) as f:
                if f.read().strip() == "paypush-store":
                    with open(os.path.join(thread, "schedstat")) as s:
                        cpu = s.read().split(" ")[0].strip()
        except OSError:
            pass
    dev = os.stat(work).st_dev
    disk_stat = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat"
    if os.access(disk_stat, os.R_OK):
        with open(disk_stat) as f:
            writes = f.read().split()[4]
    return cpu, writes


def measure(bench):
    callbacks = bench.size["store_callbacks"]
    print(f"== the store: {callbacks} callbacks, then a restart", flush=True)
    work, server, port = bench.work, bench.server, bench.paypush_port
    subscribe, publish = loadgen.urls("paypush", "sse", port)
    server.start("paypush")
    cpu_before, writes_before = store_cost(server.pid, work)
    fill_log = os.path.join(work, "store-fill.txt")
    with open(fill_log, "wb") as out:
        code = subprocess.run([
            bench.loadgen_bin, "--subscribe", subscribe, "--publish", publish,
            "--sources", str(loadgen.SOURCES), "--label", "store/fill/1", "--streams", "0",
            "--callbacks", str(callbacks), "--connections", "64"],
            stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        log(f"   loadgen failed, see {fill_log}")
    store_metrics = http_get(port, "/metrics")
    with open(os.path.join(work, "store-metrics.txt"), "w") as f:
        f.write(store_metrics)
    cpu_after, writes_after = store_cost(server.pid, work)
    data = os.path.join(work, "data")
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait()
    server.proc = server.pid = None
    # Measured once stopped: a running store also holds up to 2 MiB of
    # prepared zeros (the rest of its segment, and the next one), which a
    # clean stop cuts off and deletes.
    size = subprocess.run(["du", "-sb", data], capture_output=True, text=True).stdout.split()[0]
    restart_start = time.monotonic_ns()
    # Restarted as the shell version did: in the checkout, logging at info
    # (the log says how many outcomes were restored).
    server.start_paypush(["--data-dir", data], {}, cwd=bench.repo, rust_log="info",
                         log="store-restart.log")
    server.kind = "paypush"
    while not ok(port, "/readyz"):
        time.sleep(0.01)
    restart_ms = (time.monotonic_ns() - restart_start) // 1_000_000
    server.stop()
    shutil.rmtree(data, ignore_errors=True)
    with open(os.path.join(work, "store-restart.log"), encoding="utf-8", errors="replace") as f:
        restart_log = f.read()
    row = metrics.store_figures(store_metrics, size, restart_ms, callbacks, restart_log,
                                cpu_before, cpu_after, writes_before, writes_after)
    print(json.dumps(row), flush=True)
    return row
