"""The near cache (``near_cache=N``): hits from the process, coherent through the daemon's notifications.

Real daemon, real redis-server, real processes: a write in one process is never answered as the old value
by another process's near cache once the writer's ``set`` has returned.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from helpers import Daemon, RedisServer, Resp, wait_until
from redis_cache import CacheClient, Connection, HashCacheClient


def requests(socket_path: str) -> int:
    return int(Connection(socket_path).call("stats")["requests"])


def fail(identity: Any) -> Any:
    raise AssertionError("no fill expected for %r" % (identity,))


CONFIG = "[keys.Student]\nttl = 60\n\n[keys.Cohort]\nttl = 60\n"


@pytest.fixture
def cached(daemon_bin: Path, redis_server: RedisServer, redis: Resp, sockdir: Path) -> Iterator[Daemon]:
    daemon = Daemon(daemon_bin, sockdir, redis_server.url, config=CONFIG)
    yield daemon
    daemon.stop()


@pytest.fixture(params=["redis", "embedded"])
def any_store(request: Any, daemon_bin: Path, redis_server: RedisServer, redis: Resp, sockdir: Path) -> Iterator[Daemon]:
    """Also the embedded store, where nothing but the daemon's own notifications can reach a near cache
    (with Redis, Redis's invalidation of the write would follow a moment later)."""
    daemon = Daemon(daemon_bin, sockdir, redis_server.url if request.param == "redis" else None, config=CONFIG)
    yield daemon
    daemon.stop()


def test_off_by_default_and_on_by_argument_or_environment(cached: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHED_NEAR_CACHE", raising=False)
    assert CacheClient(cached.socket, "Student", fail).near_cache == 0
    assert CacheClient(cached.socket, "Student", fail, near_cache=5).near_cache == 5
    monkeypatch.setenv("CACHED_NEAR_CACHE", "7")
    client = HashCacheClient(cached.socket, "Cohort", "Student", fail)
    assert client.near_cache == 7 and client.connection.near_cache >= 7


def test_hits_come_from_the_process_and_get_func_runs_on_each(cached: Daemon, redis: Resp) -> None:
    redis("SET", "000STUDENT#0000000001", '{"name": "a"}')
    import json
    client = CacheClient(cached.socket, "Student", fail, get_func=json.loads, near_cache=100)
    first = client.sync_get(1)  # from Redis through the daemon
    second = client.sync_get(1)  # from the daemon's memory: may now be kept
    assert first == second == {"name": "a"}
    before = requests(cached.socket)
    for _ in range(50):
        value = client.sync_get(1)
        assert value == {"name": "a"}
        value["name"] = "changed by the caller"  # a fresh object each time: callers never share one
    assert requests(cached.socket) == before + 1  # only the stats call itself: no get reached the daemon
    plain = CacheClient(cached.socket, "Student", fail)
    assert plain.sync_get_entry(1).data == b'{"name": "a"}'


def test_writes_through_the_daemon_are_seen_at_once(any_store: Daemon) -> None:
    cached = any_store
    reader = CacheClient(cached.socket, "Student", fail, near_cache=100)
    writer = CacheClient(Connection(cached.socket), "Student", fail)
    for i in range(200):
        writer.sync_set(2, data="v%d" % i)
        assert reader.sync_get(2) == b"v%d" % i
        assert reader.sync_get(2) == b"v%d" % i  # now perhaps from the near cache: still the new value
        if i % 50 == 49:
            writer.delete(2)
            reader_entry = CacheClient(cached.socket, "Student", lambda identity: "filled", near_cache=100)
            assert reader_entry.sync_get(2) == "filled"


def test_changes_straight_to_redis_and_flushes_reach_it(cached: Daemon, redis: Resp) -> None:
    redis("SET", "000STUDENT#0000000003", "v1")
    client = CacheClient(cached.socket, "Student", fail, near_cache=100)
    assert client.sync_get(3) == client.sync_get(3) == b"v1"
    redis("SET", "000STUDENT#0000000003", "v2")
    assert wait_until(lambda: client.sync_get(3) == b"v2", 5, "the near cache to drop v1")
    assert client.sync_get(3) == b"v2"
    redis("FLUSHALL")
    redis("SET", "000STUDENT#0000000003", "v3")
    assert wait_until(lambda: client.sync_get(3) == b"v3", 5, "the flush to reach the near cache")


def _writer(socket_path: str, rounds: int, ready: Any, go: Any, done: Any) -> None:
    writer = CacheClient(Connection(socket_path), "Student", fail)
    ready.set()
    for i in range(rounds):
        go.wait()
        go.clear()
        writer.sync_set(4, data="w%d" % i)
        done.set()  # after set returned


def test_another_process_never_answers_the_old_value_after_the_set_returned(any_store: Daemon) -> None:
    cached = any_store
    ctx = multiprocessing.get_context("fork")
    ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
    rounds = 300
    CacheClient(cached.socket, "Student", fail).sync_set(4, data="start")
    reader = CacheClient(cached.socket, "Student", fail, near_cache=100)
    assert reader.sync_get(4) == b"start"
    process = ctx.Process(target=_writer, args=(cached.socket, rounds, ready, go, done))
    process.start()
    try:
        assert ready.wait(30)
        for i in range(rounds):
            for _ in range(3):
                reader.sync_get(4)  # keep it in the near cache
            go.set()
            assert done.wait(10)
            done.clear()
            assert reader.sync_get(4) == b"w%d" % i, "round %d" % i
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0


def test_a_forked_child_starts_empty_with_its_own_connection(any_store: Daemon) -> None:
    cached = any_store
    writer = CacheClient(Connection(cached.socket), "Student", fail)
    writer.sync_set(5, data="parent")
    reader = CacheClient(cached.socket, "Student", fail, near_cache=100)
    assert reader.sync_get(5) == reader.sync_get(5) == reader.sync_get(5) == b"parent"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent changes the entry; an inherited near cache would answer "parent"
        os.close(write)
        os.read(read, 1)
        ok = reader.sync_get(5) == b"changed"
        os._exit(0 if ok else 1)
    os.close(read)
    writer.sync_set(5, data="changed")
    os.write(write, b"x")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert reader.sync_get(5) == b"changed"


def test_threads_each_keep_their_own_and_stay_coherent(any_store: Daemon) -> None:
    cached = any_store
    writer = CacheClient(Connection(cached.socket), "Student", fail)
    reader = CacheClient(cached.socket, "Student", fail, near_cache=100)
    writer.sync_set(6, data="0")
    errors: list = []
    lock = threading.Lock()
    latest = [0]

    def read() -> None:
        try:
            for _ in range(300):
                with lock:
                    floor = latest[0]
                value = int(reader.sync_get(6))
                if value < floor:
                    errors.append((value, floor))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(1, 150):
        writer.sync_set(6, data=str(i))
        with lock:
            latest[0] = i  # set returned: no reader may answer less from now on
    for t in threads:
        t.join()
    assert errors == []


def test_the_asyncio_client_keeps_and_drops_the_same_way(any_store: Daemon) -> None:
    cached = any_store
    async def sync_func(identity: Any) -> Any:
        raise AssertionError("no fill expected")

    async def run() -> None:
        writer = CacheClient(Connection(cached.socket), "Student", sync_func, asynchronous=True)
        reader = CacheClient(cached.socket, "Student", sync_func, asynchronous=True, near_cache=100)
        await writer.async_set(7, data="a0")
        for i in range(100):
            await writer.async_set(7, data="a%d" % i)
            assert await reader.async_get(7) == b"a%d" % i
            assert await reader.async_get(7) == b"a%d" % i
        before = requests(cached.socket)
        for _ in range(20):
            assert await reader.async_get(7) == b"a99"
        assert requests(cached.socket) == before + 1  # answered in the process

    asyncio.run(run())


@pytest.mark.parametrize("bound", [0.3, 0.0], ids=["bounded", "unbounded"])
def test_a_stalled_daemon_leaves_no_old_near_hit_past_the_bound(
        bound: float, daemon_bin: Path, redis_server: RedisServer, redis: Resp, sockdir: Path) -> None:
    """The daemon stopped with SIGSTOP (an overloaded or swapped host) while the entry changes in Redis: it
    cannot pass the invalidation on, and its proof page stops. With the bound, the near cache stops answering
    the old value within ``max_staleness``; without it (the twin), it answers the old value all along."""
    import signal
    import time

    config = "[local_cache]\nmax_staleness = %s\n\n" % bound + CONFIG
    daemon = Daemon(daemon_bin, sockdir, redis_server.url, config=config)
    try:
        # Once the listener is up (its coming up tells every near cache to drop everything).
        wait_until(lambda: Connection(daemon.socket).call("stats")["store"]["localCache"]["enabled"], 10, "tracking")
        redis("SET", "000STUDENT#0000000005", "v1")
        client = CacheClient(Connection(daemon.socket, timeout=0.2, near_cache=100), "Student", lambda i: "filled")
        assert client.sync_get(5) == client.sync_get(5) == b"v1"
        before = requests(daemon.socket)
        assert client.sync_get(5) == b"v1"
        assert requests(daemon.socket) == before + 1  # a near hit: only the stats call reached the daemon
        pid = daemon.process.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # kill() returns before every thread has stopped: wait until each one is (state T).
            def stopped() -> bool:
                tasks = os.listdir("/proc/%d/task" % pid)
                return all(open("/proc/%d/task/%s/stat" % (pid, t)).read().rsplit(")", 1)[1].split()[0] == "T"
                           for t in tasks)
            wait_until(stopped, 5, "the daemon to stop")
            redis("SET", "000STUDENT#0000000005", "v2")
            written = time.monotonic()
            last_old = None
            old = 0
            while time.monotonic() < written + 1.5:
                try:
                    value = client.sync_get(5)
                except Exception:  # the stopped daemon does not answer a near miss
                    value = None
                if value == b"v1":
                    old += 1
                    last_old = time.monotonic() - written
                time.sleep(0.005)
        finally:
            os.kill(daemon.process.proc.pid, signal.SIGCONT)
        if bound:
            assert last_old is None or last_old <= bound + 0.1, "old value %.3f s after the write" % last_old
            assert wait_until(lambda: client.sync_get(5) == b"v2", 10, "the new value after SIGCONT")
        else:
            assert old > 10 and last_old is not None and last_old > 1.2, (old, last_old)
    finally:
        daemon.stop()
