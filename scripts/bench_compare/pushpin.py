"""Pushpin (Debian's `pushpin` 1.36) as a second peer: a GRIP proxy that holds
the event streams itself, in front of an origin that only says "hold this
request on channel ID".

What runs, all on 127.0.0.1, started by `Pushpin.start(work_dir)` in a fresh
folder `pushpin.XXXXXXXX` of WORK_DIR (pushpin.conf, routes, `run/` for the
ZeroMQ sockets and pid files, `pushpin.log`, `origin/`):

- the `pushpin` runner, in the foreground as our child and the leader of a
  new session, and the services it starts (each in a process group of its
  own): `condure` (the client connections, port PUSHPIN_PORT), `zurl` (the
  HTTP client the proxy reaches the origin with), `pushpin-proxy` and
  `pushpin-handler` (holds the streams, takes the publishes on
  PUSHPIN_PUBLISH_PORT). All their output goes to `pushpin.log`.
  `pids()` is these five processes: the runner and all its descendants.
- the origin: an nginx of its own (prefix folder `origin/`, its own pid
  file, port PUSHPIN_ORIGIN_PORT, one worker), answering every
  `GET /sub/ID` at once with an empty `200 text/event-stream` and the GRIP
  headers `Grip-Hold: stream`, `Grip-Channel: ID` and `Grip-Keep-Alive` (a
  `:` comment every 15 s, as paypush's `--keep-alive 15s`). It is asked
  once per stream, when the stream opens, and never again. Its processes
  are NOT counted in `pids()`: `origin_pids()` gives them separately.

Subscribe: `GET http://127.0.0.1:18083/sub/{id}` (an event stream: headers
at once, no pending event, so loadgen's `--ready auto` finds `headers`, as
for nchan). Publish: `POST http://127.0.0.1:18084/publish/` with
PUBLISH_BODY (loadgen's `--body`): the outcome as an unnamed `data:` event,
which loadgen counts as the outcome as it does nchan's message, then a
second item that closes the stream, so Pushpin ends the response (chunked,
last chunk) right after the event, as paypush does.

The configuration, for fairness with nchan.conf: no `message_rate` or
`message_hwm` limit (the stock config has 2500/s and 25000), up to 20000
client connections (`client_maxconn`, condure's `--stream-maxconn`), log
level 1 (warnings only; 2 logs every request and every publish). Left as
Pushpin has them, since pushpin.conf cannot set them: condure's 2 worker
threads (the runner passes no `--workers`), condure's listen backlog (1024,
not nchan.conf's 4096), and two `client_buffer_size` buffers (stock 8192)
per client connection in condure, most of the memory per stream.

Two things of Pushpin's own that the numbers carry:
- the publish API answers every request with `Connection: close`, so each
  callback opens a new connection (loadgen reconnects before timing the
  next one; the connection is not in the latency);
- pushpin-proxy hands each new stream to zurl over a ZeroMQ socket whose
  queue is fixed at 100 messages (OUT_HWM in zhttpmanager.cpp); when more
  are waiting, it answers `502` at once. loadgen's default 256 streams
  being opened at once hits that now and then on a busy machine, so
  `urls()` asks for `--connect-concurrency 64` (the opening takes as long:
  Pushpin opens about 1500 streams/s here either way).
"""

import http.client
import os
import signal
import subprocess
import tempfile
import time

from .servers import alive, answers

PUSHPIN_PORT = 18083            # client-facing HTTP (condure)
PUSHPIN_PUBLISH_PORT = 18084    # the handler's HTTP publish API (push_in_http_port)
PUSHPIN_ORIGIN_PORT = 18085     # the origin nginx that answers with GRIP instructions

STREAMS_MAX = 20000             # the process open-file limit (hard) on the bench machine

# The publish request's JSON body, `{id}` being the payment id: the outcome as
# an unnamed SSE event (loadgen's outcome, as nchan relays its message), then
# a close of the stream (an http-stream item with "action": "close" carries
# no content, so it is a second item on the same channel, applied after it).
OUTCOME = 'data: {\\"payRecordId\\":\\"{id}\\",\\"status\\":\\"SUCCESS\\"}\\n\\n'
PUBLISH_BODY = ('{"items":['
                '{"channel":"{id}","formats":{"http-stream":{"content":"' + OUTCOME + '"}}},'
                '{"channel":"{id}","formats":{"http-stream":{"action":"close"}}}]}')

PUSHPIN_CONF = """[global]
include={{libdir}}/internal.conf
rundir={rundir}
ipc_prefix=pp-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{port}
logdir={logdir}
log_level={log_level}
client_buffer_size=8192
client_maxconn={maxconn}
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
# the zurl the runner starts (internal.conf names Debian's system-wide one)
zurl_out_specs=ipc://{rundir}/pp-zurl-in
zurl_out_stream_specs=ipc://{rundir}/pp-zurl-in-stream
zurl_in_specs=ipc://{rundir}/pp-zurl-out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=bench-compare
upstream_key=
updates_check=off
organization_name=

[handler]
push_in_spec=ipc://{rundir}/pp-push-in
push_in_sub_specs=ipc://{rundir}/pp-push-in-sub
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={publish_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{rundir}/pp-stats
command_spec=ipc://{rundir}/pp-command
# no message_rate / message_hwm: no rate limit, no queue limit (stock: 2500/s, 25000)
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""

ROUTES = "* 127.0.0.1:{origin_port}\n"

ORIGIN_CONF = """# The origin Pushpin proxies to: a GRIP hold instruction for every /sub/ID.
worker_processes 1;
worker_rlimit_nofile 4096;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
user root root;

events {{
    worker_connections 4000;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location ~ ^/sub/(\\w+)$ {{
            default_type text/event-stream;
            add_header Grip-Hold stream;
            add_header Grip-Channel $1;
            add_header Grip-Keep-Alive ":\\\\n\\\\n; format=cstring; timeout=15";
            return 200 "";
        }}

        location / {{
            return 404;
        }}
    }}
}}
"""


# Streams being opened at once: under pushpin-proxy's queue of 100 to zurl.
CONNECT_CONCURRENCY = 64


def urls():
    """loadgen's subscribe URL template, publish spec and extra arguments
    (the publish body, the opening concurrency) for Pushpin over SSE."""
    subscribe = f"http://127.0.0.1:{PUSHPIN_PORT}/sub/{{id}}"
    publish = f"POST http://127.0.0.1:{PUSHPIN_PUBLISH_PORT}/publish/"
    return subscribe, publish, ["--body", PUBLISH_BODY,
                                "--connect-concurrency", str(CONNECT_CONCURRENCY)]


def descendants(pid):
    """PID's descendants (children first, then theirs), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The field after the command (which may hold spaces) is the state, then the ppid.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in sorted(children.get(queue.pop(0), [])):
            found.append(child)
            queue.append(child)
    return found


class Pushpin:
    """Pushpin and its origin: `start(work_dir)`, `stop()`, `pids()`,
    `origin_pids()`."""

    def __init__(self, log_level=1):
        self.log_level = log_level  # 1: warnings; 2: also every request; 3: debug
        self.dir = None
        self.proc = None            # the pushpin runner, a process-group leader
        self.origin_prefix = None

    def start(self, work_dir):
        """Writes the configs into a fresh folder of WORK_DIR, starts the
        origin and Pushpin, and returns once Pushpin answers on PUSHPIN_PORT
        with all its services up and the origin reachable through it."""
        self.dir = tempfile.mkdtemp(prefix="pushpin.", dir=work_dir)
        rundir = os.path.join(self.dir, "run")
        logdir = os.path.join(self.dir, "log")
        # ZeroMQ ipc:// paths are Unix socket paths (at most 107 bytes).
        if len(rundir) + len("/pp-condure-out-stream") > 100:
            raise RuntimeError(f"bench-compare: {rundir} is too long for Pushpin's sockets")
        os.makedirs(rundir)
        os.makedirs(logdir)
        try:
            self.start_origin()
        except (RuntimeError, subprocess.CalledProcessError):
            self.stop()
            raise
        conf = os.path.join(self.dir, "pushpin.conf")
        with open(conf, "w") as f:
            f.write(PUSHPIN_CONF.format(rundir=rundir, logdir=logdir, port=PUSHPIN_PORT,
                                        publish_port=PUSHPIN_PUBLISH_PORT, maxconn=STREAMS_MAX,
                                        log_level=self.log_level))
        with open(os.path.join(self.dir, "routes"), "w") as f:
            f.write(ROUTES.format(origin_port=PUSHPIN_ORIGIN_PORT))
        with open(os.path.join(self.dir, "pushpin.log"), "ab") as out:
            self.proc = subprocess.Popen(
                ["pushpin", "--config", conf, "--merge-output", "--loglevel", str(self.log_level)],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            self.wait_ready()
        except RuntimeError:
            self.stop()
            raise

    def start_origin(self):
        self.origin_prefix = os.path.join(self.dir, "origin")
        os.makedirs(self.origin_prefix)
        conf = os.path.join(self.origin_prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(ORIGIN_CONF.format(prefix=self.origin_prefix, port=PUSHPIN_ORIGIN_PORT))
        subprocess.run(["nginx", "-p", self.origin_prefix, "-c", conf, "-g", "daemon on;"],
                       check=True)
        for _ in range(100):
            if answers(PUSHPIN_ORIGIN_PORT):
                return
            time.sleep(0.1)
        raise RuntimeError("bench-compare: the Pushpin origin (nginx) does not answer")

    def wait_ready(self):
        """Up to 20 s: the runner alive, the handler's publish port
        answering, and a stream through condure, the proxy, zurl, the origin
        and the handler getting its 200 head."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench-compare: pushpin exited ({self.proc.returncode}), "
                                   f"see {self.dir}/pushpin.log")
            if answers(PUSHPIN_PUBLISH_PORT) and self.stream_opens():
                return
            time.sleep(0.1)
        raise RuntimeError(f"bench-compare: pushpin does not answer, see {self.dir}/pushpin.log")

    @staticmethod
    def stream_opens():
        """Whether GET /sub/ready on PUSHPIN_PORT gets a 200 head within 1 s."""
        conn = http.client.HTTPConnection("127.0.0.1", PUSHPIN_PORT, timeout=1)
        try:
            conn.request("GET", "/sub/ready", headers={"Accept": "text/event-stream"})
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def pids(self):
        """Comma-separated pids of Pushpin itself: the runner and every
        process under it (condure, zurl, pushpin-proxy, pushpin-handler);
        not the origin. Empty once it has stopped."""
        if self.proc is None or self.proc.poll() is not None:
            return ""
        return ",".join(str(p) for p in [self.proc.pid] + descendants(self.proc.pid))

    def origin_pids(self):
        """Comma-separated pids of the origin nginx (master and worker)."""
        master = self.origin_master()
        if master is None:
            return ""
        return ",".join(str(p) for p in [master] + descendants(master))

    def origin_master(self):
        if self.origin_prefix is None:
            return None
        try:
            with open(os.path.join(self.origin_prefix, "nginx.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def stop(self):
        """Stops Pushpin (SIGTERM to the runner, which stops its services,
        each in a process group of its own) and the origin (SIGQUIT to its
        master); whatever is still there after 10 s is killed."""
        if self.proc is not None:
            members = [self.proc.pid] + descendants(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            if not wait_all_gone(members, 10, self.proc):
                kill_all(members)
            self.proc.wait()
            self.proc = None
        master = self.origin_master()
        if master is not None:
            members = [master] + descendants(master)
            try:
                os.kill(master, signal.SIGQUIT)
            except OSError:
                pass
            if not wait_all_gone(members, 10):
                kill_all(members)
        self.origin_prefix = None


def wait_all_gone(pids, seconds, child=None):
    """Whether all PIDS end within SECONDS (CHILD, a Popen among them, is
    reaped as it ends)."""
    deadline = time.monotonic() + seconds
    while True:
        if child is not None:
            child.poll()
        if not any(alive(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
