"""The daemon's Prometheus endpoint (`[metrics] listen`), parsed with prometheus_client's own parser.

Not part of the shim: it lives here for the real-daemon fixtures. Its counters must move exactly as
requests are made.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from helpers import Daemon, RedisServer, Resp, wait_until
from redis_cache import Connection

parser = pytest.importorskip("prometheus_client.parser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(port: int, request: bytes, timeout: float = 5.0) -> Tuple[int, bytes]:
    """Sends raw request bytes; the status code and body of the answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def scrape(port: int) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    status, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
    for family in parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float], name: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_parse_and_move_with_requests(daemon_bin: Path, redis_server: RedisServer, redis: Resp,
                                              sockdir: Path) -> None:
    port = free_port()
    worker = Path(__file__).resolve().parents[3] / "Tests" / "Fixtures" / "daemon" / "fill_worker.py"
    # A small local copy (16 shards of 1 KiB each) so that reading many entries evicts some.
    config = ('[local_cache]\nmax_bytes = 16384\n\n[metrics]\nlisten = "127.0.0.1:%d"\n\n[keys.Student]\nttl = 60\n\n'
              '[keys.Filled]\nttl = 60\nhandler = ["%s", "%s"]\n\n[keys.Bulk]\nttl = 60\n') % (port, sys.executable, worker)
    daemon = Daemon(daemon_bin, sockdir, redis_server.url, name="metrics", config=config)
    try:
        wait_until(lambda: _listening(port), 10, "the metrics listener")
        conn = Connection(daemon.socket)
        entry = {"key": "Student", "identity": 12}
        assert conn.call("set", dict(entry, value="v")) == {"stored": True}
        first = scrape(port)
        conn.call("get", entry)  # read from Redis: now in the local copy
        before = scrape(port)
        # That read went to Redis: timed under source="redis", and the node's round trips moved.
        redis_gets = ("cached_request_duration_seconds_count", dict(method="get", source="redis"))
        assert value(before, redis_gets[0], **redis_gets[1]) == (value(first, redis_gets[0], **redis_gets[1]) or 0) + 1
        node = [labels for (name, labels) in before if name == "cached_redis_command_duration_seconds_count"]
        assert len(node) == 1, node
        round_trips = before[("cached_redis_command_duration_seconds_count", node[0])]
        assert round_trips > first[("cached_redis_command_duration_seconds_count", node[0])]
        assert value(before, "cached_redis_node_up", **dict(node[0]), role="master") == 1.0
        assert (value(before, "cached_redis_node_last_change_timestamp_seconds", **dict(node[0]), role="master") or 0) > 1.7e9
        assert conn.call("get", entry) == {"hit": True, "value": "v"}
        after = scrape(port)
        # A hit moves the key's hits by exactly one, the get requests by one, and the memory-answer latency
        # histogram by one (its buckets are cumulative and end with +Inf = count).
        assert value(after, "cached_get_hits_total", key="Student") == value(before, "cached_get_hits_total", key="Student") + 1
        assert value(after, "cached_requests_total", method="get") == value(before, "cached_requests_total", method="get") + 1
        memory = dict(method="get", source="memory")
        assert value(after, "cached_request_duration_seconds_count", **memory) == (
            value(before, "cached_request_duration_seconds_count", **memory) or 0) + 1
        assert value(after, "cached_request_duration_seconds_bucket", le="+Inf", **memory) == value(
            after, "cached_request_duration_seconds_count", **memory)
        assert value(after, "cached_request_duration_seconds_bucket", le="10.0", **memory) == value(
            after, "cached_request_duration_seconds_count", **memory)  # nothing took 10 s
        # The hit itself sent nothing to Redis.
        assert after[("cached_redis_command_duration_seconds_count", node[0])] == before[("cached_redis_command_duration_seconds_count", node[0])]
        # An invalid request moves the errors by method and code, and the error latency.
        errors = value(after, "cached_request_errors_total", method="get", code="-32602") or 0.0
        with pytest.raises(Exception):
            conn.call("get", {"key": "Student"})  # no identity
        bad = scrape(port)
        assert value(bad, "cached_request_errors_total", method="get", code="-32602") == errors + 1
        assert (value(bad, "cached_request_duration_seconds_count", method="get", source="error") or 0) >= 1
        assert value(after, "cached_store_up") == 1.0
        assert (value(after, "cached_uptime_seconds") or 0) > 0
        # An invalidation from Redis moves the invalidations received.
        invalidations = value(after, "cached_local_cache_invalidations_total") or 0.0
        redis("SET", "000STUDENT#0000000012", "changed")
        assert wait_until(lambda: (value(scrape(port), "cached_local_cache_invalidations_total") or 0) > invalidations, 5,
                          "an invalidation")
        # A handler fill moves the fills and the handler's calls.
        flights = value(scrape(port), "cached_fill_flights_total") or 0.0
        assert conn.call("get", {"key": "Filled", "identity": 1})["value"] == "Filled:1:[]:{}"
        filled = scrape(port)
        assert value(filled, "cached_fill_flights_total") == flights + 1
        assert value(filled, "cached_handler_calls_total", key="FILLED") == 1  # as stats.handlers names it
        assert value(filled, "cached_handler_duration_seconds_count", key="FILLED") == 1
        assert value(filled, "cached_request_duration_seconds_count", method="get", source="fill") == 1
        # A FLUSHALL reaches the local copy as "invalidate everything": counted by reason.
        flushed = value(filled, "cached_local_cache_flushes_by_reason_total", reason="invalidate_all") or 0.0
        redis("FLUSHALL")
        assert wait_until(lambda: (value(scrape(port), "cached_local_cache_flushes_by_reason_total", reason="invalidate_all")
                                   or 0) > flushed, 5, "a flush counted as invalidate_all")
        # Reading more than the local copy holds evicts: counted.
        for i in range(200):
            redis("SET", "000000BULK#%010d" % i, "x" * 300)  # key.zfill(10)
        for i in range(200):
            assert conn.call("get", {"key": "Bulk", "identity": i})["value"] == "x" * 300
        filled = scrape(port)
        assert (value(filled, "cached_local_cache_evictions_total") or 0) > 0
        # Every metric the Grafana dashboard (packaging/) asks for is exported.
        dashboard = json.loads((Path(__file__).resolve().parents[3] / "packaging" / "grafana-dashboard.json").read_text())
        wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
                  for name in re.findall(r"cached_[a-z_]+", target["expr"])}
        exported = {name for name, _ in filled}
        assert wanted and wanted <= exported, sorted(wanted - exported)
        # The JSON-RPC method answers the same text.
        text = conn.call("metrics")
        assert isinstance(text, str) and "# TYPE cached_requests_total counter" in text
        list(parser.text_string_to_metric_families(text))
    finally:
        daemon.stop()


def test_metrics_listener_refuses_what_it_does_not_serve(daemon_bin: Path, redis_server: RedisServer, redis: Resp,
                                                         sockdir: Path) -> None:
    port = free_port()
    daemon = Daemon(daemon_bin, sockdir, redis_server.url, name="metrics-bad",
                    config='[metrics]\nlisten = "127.0.0.1:%d"\n' % port)
    try:
        wait_until(lambda: _listening(port), 10, "the metrics listener")
        assert http(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 404
        assert http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")[0] == 405
        assert http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")[0] == 431
        assert http(port, b"\x00\x01garbage\r\n\r\n")[0] == 400
        # A client that sends nothing is closed (10 s idle), and others are served meanwhile.
        with socket.create_connection(("127.0.0.1", port), timeout=15) as idle:
            assert http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
            started = time.monotonic()
            assert idle.recv(1) == b""
            assert 5 < time.monotonic() - started < 14
    finally:
        daemon.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_cachectl_stats_watch_prints_a_line_a_second(daemon_bin: Path, redis_server: RedisServer, redis: Resp,
                                                     sockdir: Path) -> None:
    import subprocess
    import threading

    daemon = Daemon(daemon_bin, sockdir, redis_server.url, name="watch")
    cachectl = daemon_bin.parent / "cachectl"
    watcher = subprocess.Popen([str(cachectl), "stats", "--socket", daemon.socket, "--watch"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def load() -> None:
        conn = Connection(daemon.socket)
        conn.call("set", {"key": "Student", "identity": 1, "value": "v"})
        while not stop.is_set():
            conn.call("get", {"key": "Student", "identity": 1})
            time.sleep(0.005)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert watcher.stdout is not None
        header = watcher.stdout.readline()
        assert header.split()[:2] == ["requests/s", "hit"]
        lines = [watcher.stdout.readline().split() for _ in range(3)]
        for fields in lines:
            assert int(fields[0]) > 20  # the loader's gets, each second
            assert fields[1].endswith("%") and float(fields[1][:-1]) > 90  # hits from the local copy
            assert re.fullmatch(r"\d+us|[\d.]+ms", fields[4]), fields  # the gets' p99 over that second
            assert fields[-2:] == ["up", "(redis)"]
    finally:
        stop.set()
        loader.join()
        watcher.kill()
        watcher.wait()
        daemon.stop()
