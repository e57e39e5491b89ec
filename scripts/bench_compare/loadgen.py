"""Running the load generator (tools/loadgen) once: its command line, its
output kept in a log file, and the one-line summary printed as it goes."""

import subprocess

from . import metrics
from .servers import HAPROXY_PORT, NCHAN_H2C_PORT, NCHAN_PORT, log

SOURCES = 32                             # loopback source addresses for the client


def urls(server, transport, paypush_port):
    """loadgen's subscribe and publish URLs for SERVER and TRANSPORT."""
    subscribe = {
        "sse": f"http://127.0.0.1:{paypush_port}/push?payRecordId={{id}}",
        "poll": f"http://127.0.0.1:{paypush_port}/status?payRecordId={{id}}&wait=25",
        "ws": f"http://127.0.0.1:{paypush_port}/ws?payRecordId={{id}}",
        "h2c": f"http://127.0.0.1:{paypush_port}/push?payRecordId={{id}}",
    }
    if server == "nchan":
        subscribe = {
            "sse": f"http://127.0.0.1:{NCHAN_PORT}/sub/{{id}}",
            "h2c": f"http://127.0.0.1:{NCHAN_H2C_PORT}/sub/{{id}}",
            "poll": f"http://127.0.0.1:{NCHAN_PORT}/sub-poll/{{id}}",
            "ws": f"http://127.0.0.1:{NCHAN_PORT}/sub-ws/{{id}}",
        }
        publish = f"POST http://127.0.0.1:{NCHAN_PORT}/pub/{{id}}"
    else:
        if server == "haproxy-paypush":
            subscribe = {"sse": f"http://127.0.0.1:{HAPROXY_PORT}/push?payRecordId={{id}}"}
        publish = f"GET http://127.0.0.1:{paypush_port}/pay-callback?payRecordId={{id}}"
    return subscribe.get(transport), publish


def run(loadgen_bin, args, log_path):
    """Runs loadgen with ARGS, its output in LOG_PATH; returns the output.
    A failure is reported, not raised: the run's figures are then missing."""
    with open(log_path, "wb") as out:
        code = subprocess.run([loadgen_bin, *args], stdout=out, stderr=subprocess.STDOUT).returncode
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if code != 0:
        log(f"   loadgen failed, see {log_path}")
        for line in text.splitlines()[-3:]:
            log(line)
    return text


def summary(r):
    """The line printed after each run."""
    lat = r["latency"]
    return (f'   {r["label"]:<28} held {r["streams_held"]}/{r["streams_requested"]}'
            f'  Pss/stream {r["pss_per_stream_kib"] or 0:.2f} KiB'
            f'  cb/s {r["callbacks_per_second"]:.0f}'
            f'  p50/p99 {lat["p50_ms"]:.3f}/{lat["p99_ms"]:.3f} ms'
            f'  lost {r["lost"]} dup {r["duplicated"]}')


def result(text):
    """The run's JSON line, parsed (None if loadgen printed none)."""
    return metrics.last_json_line(text)
