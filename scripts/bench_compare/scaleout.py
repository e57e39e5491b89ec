"""Scale-out: 3 paypush instances on one Redis (`redis3`) against 3 on a
3-primary, 3-replica Redis Cluster (`cluster3`, loopback ports 16380-16385
and their bus ports), with the Redis commands and pub/sub messages each
callback costs and the CPU of the Redis primaries and replicas; and the
same 3 instances on a cluster of 1 and 2 shards (`cluster1`, `cluster2`,
each primary with a replica), to see how callbacks/s grow with shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import loadgen, metrics
from .servers import PAYPUSH_FLAGS, answers, http_get, log, ok, redis_ping, wait_for_redis

CLUSTER_PORTS = [16380, 16381, 16382, 16383, 16384, 16385]


def redis_cmd(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True).stdout


def cpu_seconds(pid):
    """User plus system CPU of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shards_of(kind):
    """How many primaries a cluster kind has (`cluster3`: 3)."""
    return int(kind[len("cluster"):])


def form_cluster(ports, shards, log_file):
    """Joins `ports` into a cluster: the first `shards` split the slots, and
    each of the rest replicates one of them (what `redis-cli --cluster
    create` does, which wants 3 primaries at least)."""
    for i, port in enumerate(ports[:shards]):
        redis_cmd(port, "cluster", "addslotsrange", str(i * 16384 // shards),
                  str((i + 1) * 16384 // shards - 1))
    for port in ports[1:]:
        redis_cmd(ports[0], "cluster", "meet", "127.0.0.1", str(port))
    ids = [redis_cmd(port, "cluster", "myid").strip() for port in ports]
    for replica, primary in zip(ports[shards:], ids[:shards]):
        for _ in range(100):
            answer = redis_cmd(replica, "cluster", "replicate", primary)
            if answer.strip() == "OK":
                break
            time.sleep(0.1)
        else:
            log_file.write(f"cannot make {replica} a replica of {primary}: {answer}\n".encode())


class Scaleout:
    def __init__(self, bench):
        self.bench = bench
        self.ports = [bench.paypush_port + i for i in range(3)]
        self.instances = []
        self.redis_nodes = []

    def primaries(self, kind):
        """The ports of the Redis servers whose commands are counted."""
        if kind == "redis3":
            return [self.bench.redis_port]
        return [port for port in CLUSTER_PORTS[:2 * shards_of(kind)]
                if redis_cmd(port, "role").split("\n", 1)[0].strip() == "master"]

    def start(self, kind):
        work = self.bench.work
        redis_log = open(os.path.join(work, "redis.log"), "ab")
        if kind == "redis3":
            self.redis_nodes = [subprocess.Popen(
                ["redis-server", "--port", str(self.bench.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"], stdout=redis_log, stderr=subprocess.STDOUT)]
            wait_for_redis(self.bench.redis_port)
            backend = ["--redis-url", f"redis://127.0.0.1:{self.bench.redis_port}"]
        else:
            ports = CLUSTER_PORTS[:2 * shards_of(kind)]
            self.redis_nodes = []
            for port in ports:
                folder = os.path.join(work, "cluster", str(port))
                shutil.rmtree(folder, ignore_errors=True)
                os.makedirs(folder)
                self.redis_nodes.append(subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf", "--dir", folder],
                    stdout=redis_log, stderr=subprocess.STDOUT))
            for port in ports:
                for _ in range(100):
                    if redis_ping(port):
                        break
                    time.sleep(0.1)
            form_cluster(ports, shards_of(kind), redis_log)
            # Formed, and every replica in sync (a full sync waits
            # repl-diskless-sync-delay, 5 s): until then WAIT cannot succeed.
            for port in ports:
                for _ in range(300):
                    if "cluster_state:ok" in redis_cmd(port, "cluster", "info") and any(
                            line.strip() in ("role:master", "master_link_status:up")
                            for line in redis_cmd(port, "info", "replication").splitlines()):
                        break
                    time.sleep(0.1)
            backend = ["--redis-cluster", f"redis://127.0.0.1:{ports[0]}"]
        redis_log.close()
        env = dict(os.environ, RUST_LOG="warn")
        with open(os.path.join(work, "paypush.log"), "ab") as out:
            self.instances = [subprocess.Popen(
                [self.bench.paypush_bin, "--bind", f"127.0.0.1:{port}", *backend, *PAYPUSH_FLAGS],
                env=env, stdout=out, stderr=subprocess.STDOUT) for port in self.ports]
        for port in self.ports:
            for _ in range(300):
                if ok(port, "/readyz"):
                    break
                time.sleep(0.1)

    def stop(self):
        for procs in (self.instances, self.redis_nodes):
            for p in procs:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
            for p in procs:
                p.wait()
        self.instances, self.redis_nodes = [], []

    def run(self, kind, scenario, rep, *args):
        """One scenario on fresh servers; the primaries' command counters are
        reset just before the load and read after it, with the instances'
        pub/sub message counters."""
        self.start(kind)
        try:
            targets = []
            for port in self.ports:
                targets += ["--subscribe", f"http://127.0.0.1:{port}/push?payRecordId={{id}}",
                            "--publish", f"GET http://127.0.0.1:{port}/pay-callback?payRecordId={{id}}"]
            primaries = self.primaries(kind)
            for port in primaries:
                redis_cmd(port, "config", "resetstat")
            log_path = os.path.join(self.bench.work, f"{kind}-{scenario}-{rep}.txt")
            pids = ",".join(str(p.pid) for p in self.instances)
            nodes = [(p, p.args[2] in map(str, primaries)) for p in self.redis_nodes]
            before = [cpu_seconds(p.pid) for p, _ in nodes]
            text = loadgen.run(self.bench.loadgen_bin, [
                *targets, "--server-pid", pids, "--sources", str(loadgen.SOURCES),
                "--label", f"{kind}/{scenario}/{rep}", *map(str, args)], log_path)
            time.sleep(0.5)   # let the last unsubscriptions land
            spent = [cpu_seconds(p.pid) - b for (p, _), b in zip(nodes, before)]
            primary_cpu = sum(c for c, (_, primary) in zip(spent, nodes) if primary)
            replica_cpu = sum(c for c, (_, primary) in zip(spent, nodes) if not primary)
            commands = sum(metrics.commands_sent(redis_cmd(port, "info", "commandstats"))
                           for port in primaries)
            messages = sum(metrics.pubsub_messages(http_get(port, "/metrics"))
                           for port in self.ports)
        finally:
            self.stop()
        r = metrics.last_json_line(text)
        if r is None:
            return None
        r["redis_commands"], r["pubsub_messages"] = commands, messages
        # Over the whole load run, streams opening included: per checkout.
        r["redis_primary_cpu_s"], r["redis_replica_cpu_s"] = primary_cpu, replica_cpu
        good = max(r["callbacks_ok"], 1)
        print("   %-28s cb/s %.0f  p99 %.3f ms  Redis commands/callback %.2f  "
              "messages/callback %.2f  Redis CPU/checkout %.1f + %.1f µs  lost %d"
              % (r["label"], r["callbacks_per_second"], r["latency"]["p99_ms"],
                 r["redis_commands"] / good, r["pubsub_messages"] / good,
                 primary_cpu / good * 1e6, replica_cpu / good * 1e6, r["lost"]),
              file=sys.stderr, flush=True)
        return r


def measure(bench):
    """The scale-out runs (with redis-server and redis-cli, and the three
    ports free), as loadgen JSON lines with the Redis figures added."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        return []
    scale = Scaleout(bench)
    for port in scale.ports:
        if answers(port):
            log(f"bench-compare: something already listens on 127.0.0.1:{port}; no scale-out rows")
            return []
    print("== scale-out: 3 instances on one Redis, then on a Redis Cluster of 3, 1 and 2 "
          "shards", flush=True)
    z, runs = bench.size, []
    path = os.path.join(bench.work, "scaleout.jsonl")
    tput = ("tput-stream", ["--streams", z["tput_streams"], "--callbacks", z["tput_streams"],
                            "--connections", 64])
    latency = ("latency-2000", ["--streams", z["lat_idle"] + z["lat_targets"],
                                "--callbacks", z["lat_targets"], "--rate", 2000,
                                "--deadline", "5s"])
    try:
        for rep in range(1, bench.reps + 1):
            for kind, scenarios in (("redis3", (tput, latency)), ("cluster3", (tput, latency)),
                                    ("cluster1", (tput,)), ("cluster2", (tput,))):
                for scenario, args in scenarios:
                    r = scale.run(kind, scenario, rep, *args)
                    if r is not None:
                        runs.append(r)
                        with open(path, "a") as f:
                            f.write(json.dumps(r) + "\n")
    finally:
        scale.stop()
    return runs
