"""The servers under test, started and stopped the same way every time:
paypush (store on disk, `--durability process`, `--in-memory`, Redis mode),
nginx + nchan, Pushpin (`pushpin.py`), HAProxy in front of paypush, the
design's floor (`tools/floor`: the fixed shape of paypush and nothing else,
a yardstick for the targets), and a redis-server of their own.
Each scenario runs on a freshly started server, in a fresh working
directory, and everything listens on 127.0.0.1 only."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NCHAN_PREFIX = "/tmp/paypush-nchan"      # the pid and log paths nchan.conf names
NCHAN_PORT = 18081                       # the port nchan.conf listens on
NCHAN_H2C_PORT = 18082                   # the h2c port added to it
HAPROXY_PORT = 18090                     # HAProxy in front of paypush (h2c upstream)

# Flags every paypush of the benchmark runs with: one thread serving
# connections, as nchan.conf runs one nginx worker (the store's writer has
# its own thread, as nginx's would have its own I/O).
PAYPUSH_FLAGS = ["--push-timeout", "10m", "--keep-alive", "15s", "--workers", "1"]


def answers(port):
    """Whether anything answers HTTP on 127.0.0.1:PORT (any status), as
    `curl -s -o /dev/null --max-time 1` succeeds."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def http_get(port, path, timeout=5):
    """The body of GET http://127.0.0.1:PORT/PATH, or "" (as `curl -s`)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.read().decode("utf-8", "replace")
    except OSError:
        return ""


def ok(port, path, timeout=5):
    """Whether GET answers 2xx or 3xx (as `curl -sf`)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port):
    for _ in range(100):
        if answers(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"bench-compare: nothing answers on 127.0.0.1:{port}")


def redis_ping(port):
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out == "PONG"


def wait_for_redis(port):
    for _ in range(100):
        if redis_ping(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"bench-compare: redis-server does not answer on {port}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nchan_conf(conf):
    """nchan.conf with long-poll and WebSocket subscribers on the same
    channels, and h2c on a second port (nginx's `http2` on a plain listener,
    with room for thousands of streams per connection as paypush allows)."""
    common = ("nchan_channel_id $1; nchan_subscriber_first_message oldest; "
              "nchan_message_buffer_length 1; nchan_message_timeout 15m;")
    extra = ("        # added by scripts/bench-compare: the other transports, same channels\n"
             f"        location ~ ^/sub-poll/(\\w+)$ {{ nchan_subscriber longpoll; {common} }}\n"
             f"        location ~ ^/sub-ws/(\\w+)$ {{ nchan_subscriber websocket; {common} }}\n\n")
    if "/sub-poll/" not in conf:
        at = conf.index("        location ~ ^/pub/")
        conf = conf[:at] + extra + conf[at:]
    listen = "        listen 127.0.0.1:18081 backlog=4096;\n"
    if listen in conf and ":18082" not in conf:
        conf = conf.replace(listen, listen + "        listen 127.0.0.1:18082 http2;\n"
                            "        http2_max_concurrent_streams 10000;\n")
    return conf


HAPROXY_CFG = """defaults
    mode http
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend checkout
    bind 127.0.0.1:{haproxy_port}
    default_backend paypush
backend paypush
    http-reuse always
    server a 127.0.0.1:{paypush_port} proto h2
"""


class Servers:
    """One server under test at a time: `start(kind)`, `stop()`.

    `pid` is what runs now (paypush's pid, nginx's master), `pids` the
    comma-separated pids whose memory and CPU loadgen reads."""

    def __init__(self, work, paypush_bin, paypush_port, redis_port, nchan_conf_used):
        self.work = work
        self.paypush_bin = paypush_bin
        self.paypush_port = paypush_port
        self.redis_port = redis_port
        self.nchan_conf_used = nchan_conf_used
        self.proc = None        # paypush, a child
        self.pid = None
        self.pids = ""
        self.kind = ""
        self.redis = None
        self.pushpin = None     # a pushpin.Pushpin while one runs

    def log(self, name):
        return open(os.path.join(self.work, name), "ab")

    def start_paypush(self, flags, env_extra, cwd=None, rust_log="warn", log="paypush.log"):
        """paypush on the benchmark's port, in a fresh working directory
        (nothing in the checkout) unless `cwd` is given."""
        env = dict(os.environ, RUST_LOG=rust_log, **env_extra)
        self.spawn([self.paypush_bin, "--bind", f"127.0.0.1:{self.paypush_port}", *flags],
                   log, env, cwd)

    def spawn(self, argv, log, env=None, cwd=None):
        """A server process, its output in LOG, in a fresh working directory
        (nothing in the checkout) unless `cwd` is given."""
        if cwd is None:
            cwd = tempfile.mkdtemp(prefix="run.", dir=self.work)
        with self.log(log) as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.pids = str(self.pid)

    def start(self, kind, env_extra=None):
        env_extra = env_extra or {}
        self.kind = kind
        data = os.path.join(self.work, "data")
        if kind in ("paypush", "paypush-process", "paypush-memory"):
            flags = {"paypush": ["--data-dir", data],
                     "paypush-process": ["--data-dir", data, "--durability", "process"],
                     "paypush-memory": ["--in-memory"]}[kind]
            shutil.rmtree(data, ignore_errors=True)
            self.start_paypush(flags + PAYPUSH_FLAGS, env_extra)
            wait_for_port(self.paypush_port)
        elif kind == "floor":
            # Its address and its runtime threads: one, as paypush's --workers 1.
            self.spawn([os.path.join(os.path.dirname(self.paypush_bin), "floor"),
                        f"127.0.0.1:{self.paypush_port}", "1"], "floor.log")
            wait_for_port(self.paypush_port)
        elif kind == "paypush-redis":
            with self.log("redis.log") as out:
                self.redis = subprocess.Popen(
                    ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no"], stdout=out, stderr=subprocess.STDOUT)
            wait_for_redis(self.redis_port)
            self.start_paypush(["--redis-url", f"redis://127.0.0.1:{self.redis_port}"]
                               + PAYPUSH_FLAGS, env_extra)
            wait_for_port(self.paypush_port)
        elif kind == "haproxy-paypush":
            self.start("paypush", env_extra)
            self.kind = "haproxy-paypush"
            cfg = os.path.join(self.work, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(HAPROXY_CFG.format(haproxy_port=HAPROXY_PORT,
                                           paypush_port=self.paypush_port))
            pidfile = os.path.join(self.work, "haproxy.pid")
            subprocess.run(["haproxy", "-f", cfg, "-D", "-p", pidfile], check=True)
            wait_for_port(HAPROXY_PORT)
            with open(pidfile) as f:
                self.pids = f"{self.pid},{f.read().split()[0]}"
        elif kind == "nchan":
            os.makedirs(NCHAN_PREFIX, exist_ok=True)
            subprocess.run(["nginx", "-p", NCHAN_PREFIX, "-c", self.nchan_conf_used,
                            "-g", "daemon on;"], check=True, env=dict(os.environ, **env_extra))
            wait_for_port(NCHAN_PORT)
            with open(os.path.join(NCHAN_PREFIX, "nginx.pid")) as f:
                self.pid = int(f.read().split()[0])
            workers = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True,
                                     text=True).stdout.split()
            self.pids = ",".join([str(self.pid)] + workers)
        elif kind == "pushpin":
            from .pushpin import Pushpin    # it imports this module
            self.pushpin = Pushpin()
            self.pushpin.start(self.work)
            self.pid = self.pushpin.proc.pid
            self.pids = self.pushpin.pids()
        else:
            raise ValueError(f"unknown server {kind}")

    def stop(self):
        if self.pushpin is not None:
            self.pushpin.stop()
            self.pushpin = None
            self.pid = None
        pidfile = os.path.join(self.work, "haproxy.pid")
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGTERM)
                    except (OSError, ValueError):
                        pass
            os.remove(pidfile)
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass
        self.wait_gone()
        self.proc = None
        self.pid = None
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait()
            self.redis = None

    def wait_gone(self):
        """Waits up to 10 s for the server to end, then kills it."""
        for _ in range(100):
            gone = self.proc.poll() is not None if self.proc else not alive(self.pid)
            if gone:
                return
            time.sleep(0.1)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc:
            self.proc.wait()


def log(message):
    print(message, file=sys.stderr, flush=True)
