"""The shim against the real cached daemon and a private redis-server.

The values are checked in Redis directly, under pyredis-cache's key names.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from helpers import Daemon, RedisServer, Resp, wait_until
from redis_cache import (CacheClient, Connection, ConnectionPool, DaemonError, HashCacheClient,
                         InvalidParamsError, LengthError)
from redis_cache.errors import METHOD_NOT_FOUND

STUDENTS: Dict[int, Dict[str, Any]] = {
    12: {"name": "Jane Roe", "age": 15},
    14: {"name": "Richard Roe", "age": 17},
}


class ListLog:
    def __init__(self) -> None:
        self.errors: List[str] = []

    def error(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)


def make_sync_func(calls: List[Any]) -> Any:
    # "The first argument should define the uniqueness of the data"
    def sync_func(student_id: int, *lots_of_args: Any, **kwargs: Any) -> Dict[str, Any]:
        calls.append((student_id, lots_of_args, kwargs))
        data = dict(STUDENTS.get(student_id, {"name": "Student %d" % student_id}))
        data.update(kwargs)
        return data
    return sync_func


def test_readme_simple_example(cached: Daemon, redis: Resp) -> None:
    calls: List[Any] = []
    cache = CacheClient(cached.socket, "Student", make_sync_func(calls), set_func=json.dumps,
                        get_func=json.loads, expire_time=10)

    # This will set cache for ID: 12
    assert cache.set(12) == 1
    assert json.loads(redis("GET", "000STUDENT#0000000012")) == STUDENTS[12]
    assert 0 < redis("TTL", "000STUDENT#0000000012") <= 10

    # This will set cache for ID: 13, with custom data
    assert cache.set(13, data={"name": "John Doe", "age": 16}) == 1
    assert json.loads(redis("GET", "000STUDENT#0000000013")) == {"name": "John Doe", "age": 16}

    # This will get cache for ID: 12 (no need to do a set, it will automatically set the data)
    assert cache.get(12) == STUDENTS[12]
    assert cache.get(13) == {"name": "John Doe", "age": 16}
    assert len(calls) == 1  # only the first set(12) called sync_func

    # The get function will pass extra arguments to the sync_func
    assert cache.get(14, age=15) == {"name": "Richard Roe", "age": 15}
    assert calls[-1] == (14, (), {"age": 15})
    assert json.loads(redis("GET", "000STUDENT#0000000014")) == {"name": "Richard Roe", "age": 15}
    assert 0 < redis("TTL", "000STUDENT#0000000014") <= 10
    assert cache.get(14, age=99) == {"name": "Richard Roe", "age": 15}  # now a hit
    assert len(calls) == 2

    # This will delete the cache for ID: 12
    assert cache.delete(12) == 1
    assert redis("EXISTS", "000STUDENT#0000000012") == 0
    assert cache.delete(12) == 0


def test_readme_simple_example_with_swapped_connection_pool(cached: Daemon, redis: Resp,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHED_SOCKET", cached.socket)
    # from redis import ConnectionPool  ->  from redis_cache import ConnectionPool
    redis_pool = ConnectionPool()
    cache = CacheClient(redis_pool, "Student", make_sync_func([]), set_func=json.dumps, get_func=json.loads)
    assert cache.get(12) == STUDENTS[12]
    assert json.loads(redis("GET", "000STUDENT#0000000012")) == STUDENTS[12]
    assert redis("TTL", "000STUDENT#0000000012") == -1  # expire_time=0: persistent


def test_readme_hash_example(cached: Daemon, redis: Resp) -> None:
    calls: List[Any] = []
    hcache = HashCacheClient(cached.socket, "Class", "Student", make_sync_func(calls),
                             set_func=json.dumps, get_func=json.loads)

    # This will set cache for ID: 12 for hash_id: 3
    assert hcache.set(3, 12) == 1
    assert json.loads(redis("HGET", "00000CLASS#0000000003", "000STUDENT#0000000012")) == STUDENTS[12]

    # This will get cache for ID: 12 for hash_id: 3
    assert hcache.get(3, 12) == STUDENTS[12]
    assert len(calls) == 1
    assert hcache.get(3, 14) == STUDENTS[14]
    assert json.loads(redis("HGET", "00000CLASS#0000000003", "000STUDENT#0000000014")) == STUDENTS[14]
    assert redis("TTL", "00000CLASS#0000000003") == -1

    # This will delete the cache for ID: 12 for hash_id: 3
    assert hcache.delete(3, 12) == 1
    assert redis("HEXISTS", "00000CLASS#0000000003", "000STUDENT#0000000012") == 0
    assert hcache.delete(3, 12) == 0

    # This will delete the hash with hash_id: 3
    assert hcache.delete_hash(3) == 1
    assert redis("EXISTS", "00000CLASS#0000000003") == 0
    assert hcache.delete_hash(3) == 0


def test_readme_async_examples(cached: Daemon, redis: Resp) -> None:
    calls: List[Any] = []

    async def sync_func(student_id: int, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        await asyncio.sleep(0)
        return make_sync_func(calls)(student_id, *args, **kwargs)

    cache = CacheClient(cached.socket, "Student", sync_func, set_func=json.dumps, get_func=json.loads,
                        expire_time=10, asynchronous=True)
    hcache = HashCacheClient(cached.socket, "Class", "Student", sync_func, set_func=json.dumps,
                             get_func=json.loads, asynchronous=True)

    async def some_func() -> None:
        data = await cache.get(23)
        assert data == {"name": "Student 23"}
        assert await cache.get(23) == data
        assert await cache.set(13, data={"name": "John Doe", "age": 16}) == 1
        assert await cache.get(14, age=15) == {"name": "Richard Roe", "age": 15}
        assert await hcache.set(3, 12) == 1
        assert await hcache.get(3, 12) == STUDENTS[12]
        results = await asyncio.gather(*(cache.get(100 + i) for i in range(20)))
        assert results == [{"name": "Student %d" % (100 + i)} for i in range(20)]

    asyncio.run(some_func())
    assert json.loads(redis("GET", "000STUDENT#0000000023")) == {"name": "Student 23"}
    assert 0 < redis("TTL", "000STUDENT#0000000023") <= 10
    assert json.loads(redis("GET", "000STUDENT#0000000013"))["name"] == "John Doe"
    assert json.loads(redis("HGET", "00000CLASS#0000000003", "000STUDENT#0000000012")) == STUDENTS[12]
    assert json.loads(redis("GET", "000STUDENT#0000000119")) == {"name": "Student 119"}
    assert [c[0] for c in calls].count(23) == 1
    assert cache.delete(23) == 1 and hcache.delete_hash(3) == 1


def test_values_are_bytes_exactly(cached: Daemon, redis: Resp) -> None:
    blob = bytes(range(256)) * 3
    cache = CacheClient(cached.socket, "Blobs", lambda i: blob)
    assert cache.set(1) == 1
    assert redis("GET", "00000BLOBS#0000000001") == blob
    assert cache.get(1) == blob
    redis("SET", "00000BLOBS#0000000002", "d\xe9j\xe0 vu ☃".encode())
    assert cache.get(2) == "d\xe9j\xe0 vu ☃".encode()
    assert cache.set("name", data="text") == 1  # a str identity, used verbatim
    assert redis("GET", "00000BLOBS#name") == b"text"
    assert cache.set(-7, data=b"neg") == 1
    assert redis("GET", "00000BLOBS#-000000007") == b"neg"


def test_invalid_params(cached: Daemon) -> None:
    cache = CacheClient(cached.socket, "Student", lambda i: "x")
    with pytest.raises(InvalidParamsError):
        cache.get("bad\nidentity")  # refused by the daemon (-32602)
    with pytest.raises(LengthError):
        CacheClient(cached.socket, "St", lambda i: "x").get(1)
    assert cache.get(1) == "x"  # the connection is still fine


def test_threads_share_one_client(cached: Daemon, redis: Resp) -> None:
    calls: List[int] = []
    lock = threading.Lock()

    def sync_func(identity: int) -> str:
        with lock:
            calls.append(identity)
        return "value-%d" % identity

    cache = CacheClient(cached.socket, "Threads", sync_func)
    errors: List[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(200):
                identity = (n * 7 + i) % 50
                value = cache.get(identity)
                assert value in ("value-%d" % identity, b"value-%d" % identity), value
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(calls)) == 50 and len(calls) < 8 * 200  # fills happened, hits were served
    for identity in range(50):
        assert redis("GET", "000THREADS#%010d" % identity) == b"value-%d" % identity
    # Connections are reused: one per thread (plus this thread's and the fixture's pings),
    # not one per call.
    stats = cache.connection.call("stats")
    assert stats["connections"]["total"] < 20, stats["connections"]


def test_fork_child_uses_its_own_socket(cached: Daemon, redis: Resp) -> None:
    conn = Connection(cached.socket)
    cache = CacheClient(conn, "Forks", lambda i: "v%d" % i)
    assert cache.set(1) == 1
    parent_inode = os.fstat(conn._local.state.sock.fileno()).st_ino
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            ok = cache.get(1) == b"v1" and cache.set(2) == 1 and cache.get(2) == b"v2"
            child_inode = os.fstat(conn._local.state.sock.fileno()).st_ino
            os.write(w, json.dumps({"ok": ok, "inode": child_inode}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert report["ok"] is True
    assert report["inode"] != parent_inode
    # The parent's socket is untouched and still in use.
    assert cache.get(2) == b"v2" and cache.get(1) == b"v1"
    assert os.fstat(conn._local.state.sock.fileno()).st_ino == parent_inode
    assert redis("GET", "00000FORKS#0000000002") == b"v2"


def test_fallback_when_daemon_stops(daemon_bin: Path, redis_server: RedisServer, redis: Resp,
                                    sockdir: Path) -> None:
    daemon = Daemon(daemon_bin, sockdir, redis_server.url)
    log = ListLog()
    calls: List[Any] = []
    cache = CacheClient(daemon.socket, "Fallback", make_sync_func(calls), set_func=json.dumps,
                        get_func=json.loads, log=log)
    hcache = HashCacheClient(daemon.socket, "Class", "Fallback", make_sync_func(calls), set_func=json.dumps,
                             get_func=json.loads, log=log)
    try:
        assert cache.set(1) == 1 and hcache.set(3, 1) == 1  # connections are open now
    finally:
        daemon.stop()
    assert log.errors == []
    assert cache.get(1, 2, age=3) == {"name": "Student 1", "age": 3}
    assert calls[-1] == (1, (2,), {"age": 3})
    assert cache.set(1) == 0
    assert cache.delete(1) == 0
    assert hcache.get(3, 1) == {"name": "Student 1"}
    assert hcache.set(3, 1) == 0 and hcache.delete(3, 1) == 0 and hcache.delete_hash(3) == 0
    assert len(log.errors) == 7
    # A daemon that was never there at all.
    never = CacheClient(str(sockdir / "never.sock"), "Fallback", make_sync_func(calls), log=log)
    assert never.get(5) == {"name": "Student 5"} and never.set(5) == 0 and never.delete(5) == 0
    assert len(log.errors) == 10


def test_fallback_when_redis_is_down(daemon_bin: Path, workdir: Path, sockdir: Path) -> None:
    own_redis = RedisServer(sockdir / "redis")
    daemon = Daemon(daemon_bin, sockdir, own_redis.url)
    log = ListLog()
    try:
        cache = CacheClient(Connection(daemon.socket, timeout=20), "Outage", lambda i: "fresh-%d" % i, log=log)
        assert cache.set(1, data="cached") == 1
        own_redis.stop()
        assert cache.get(1) in ("fresh-1", b"cached")  # a daemon-side copy may still answer
        assert cache.get(2) == "fresh-2"
        assert cache.set(3) == 0
        assert log.errors, "the outage was not logged"
    finally:
        daemon.stop()
        own_redis.stop()


def skip_without_release(daemon: Daemon) -> None:
    """Skips the test if this cached build has no `release` method yet."""
    probe = Connection(daemon.socket)
    try:
        probe.call("release", {"key": "Probe", "identity": 0, "lease": "no-such-lease"})
    except DaemonError as e:
        if e.code == METHOD_NOT_FOUND:
            pytest.skip("this cached build answers -32601 for `release` (method not found): "
                        "rebuild the daemon with `release` to run this test")
        raise
    except InvalidParamsError:
        pass  # the method exists; it only disliked the made-up token
    finally:
        probe.close()


class Boom(Exception):
    pass


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["simple", "hash"])
def test_failed_fill_hands_the_lease_to_the_waiting_client(cached: Daemon, redis: Resp, kind: str,
                                                           asynchronous: bool) -> None:
    """A's sync_func raises on a miss: A's get raises it, and B, waiting behind A's lease, gets
    the lease at once (A releases it) instead of after lease_timeout (5 s by default)."""
    skip_without_release(cached)
    boom = Boom("the database is down")
    holder_started = threading.Event()
    may_fail = threading.Event()
    b_done = threading.Event()
    filled: List[int] = []

    def failing(student_id: int) -> Dict[str, Any]:
        holder_started.set()
        assert may_fail.wait(20)
        raise boom

    def filling(student_id: int) -> Dict[str, Any]:
        filled.append(student_id)
        return {"name": "Student %d" % student_id}

    async def async_failing(student_id: int) -> Dict[str, Any]:
        holder_started.set()
        while not may_fail.is_set():
            await asyncio.sleep(0.005)
        raise boom

    async def async_filling(student_id: int) -> Dict[str, Any]:
        return filling(student_id)

    def make(sync_func: Any) -> Any:
        # A Connection each: two connections to the daemon, as two processes would have.
        if kind == "hash":
            return HashCacheClient(Connection(cached.socket), "Class", "Student", sync_func,
                                   set_func=json.dumps, get_func=json.loads, asynchronous=asynchronous)
        return CacheClient(Connection(cached.socket), "Student", sync_func, set_func=json.dumps,
                           get_func=json.loads, expire_time=10, asynchronous=asynchronous)

    a = make(async_failing if asynchronous else failing)
    b = make(async_filling if asynchronous else filling)

    def get(client: Any) -> Any:
        return client.get(3, 31) if kind == "hash" else client.get(31)

    async def a_async() -> Any:
        try:
            return await get(a)
        except Boom as e:
            return e
        finally:
            # Keep A's stream open until B is done: a closed connection would also pass the lease on.
            while not b_done.is_set():
                await asyncio.sleep(0.01)

    outcome: Dict[str, Any] = {}

    def run_a() -> None:
        if asynchronous:
            outcome["a"] = asyncio.run(a_async())
            return
        try:
            outcome["a"] = get(a)
        except Boom as e:
            outcome["a"] = e
        b_done.wait(20)  # keep A's thread, and so its socket, open until B is done

    def run_b() -> None:
        try:
            outcome["b"] = asyncio.run(get(b)) if asynchronous else get(b)
            outcome["b_done"] = time.monotonic()
        finally:
            b_done.set()

    stats = Connection(cached.socket)
    waits_before = stats.call("stats")["fills"]["leaseWaits"]
    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    try:
        assert holder_started.wait(10), "A never got the lease"
        thread_b = threading.Thread(target=run_b)
        thread_b.start()
        wait_until(lambda: stats.call("stats")["fills"]["leaseWaits"] > waits_before, 10,
                   "B waiting behind A's lease")
        failed_at = time.monotonic()
        may_fail.set()
        thread_b.join(20)
    finally:
        may_fail.set()
        b_done.set()
        thread_a.join(20)
        stats.close()

    assert outcome["a"] is boom  # A's get raised sync_func's exception itself
    assert outcome["b"] == {"name": "Student 31"} and filled == [31]
    elapsed = outcome["b_done"] - failed_at
    assert elapsed < 1.0, "B waited %.2f s after A's fill failed (lease_timeout is 5 s)" % elapsed
    if kind == "hash":
        stored = redis("HGET", "00000CLASS#0000000003", "000STUDENT#0000000031")
    else:
        stored = redis("GET", "000STUDENT#0000000031")
        assert 0 < redis("TTL", "000STUDENT#0000000031") <= 10
    assert json.loads(stored) == {"name": "Student 31"}


FILL_WORKER = Path(__file__).resolve().parents[3] / "Tests" / "Fixtures" / "daemon" / "fill_worker.py"


def test_get_entry_reports_hits_and_stale_values(daemon_bin: Path, redis_server: RedisServer, redis: Resp,
                                                 sockdir: Path) -> None:
    """A key with a stale window: past its ttl the value is answered at once, marked stale."""
    config = """
[keys.Student]
ttl = 1
stale_ttl = 30
handler = ["%s", "%s"]
environment = { FILL_DELAY = "0.5" }
""" % (sys.executable, FILL_WORKER)
    daemon = Daemon(daemon_bin, sockdir, redis_server.url, name="stale", config=config)
    try:
        calls: List[Any] = []
        cache = CacheClient(daemon.socket, "Student", make_sync_func(calls), get_func=lambda b: b.decode())
        first = cache.sync_get_entry(12)
        assert first == ("Student:12:[]:{}", False, False)  # filled by the daemon's handler
        assert cache.sync_get_entry(12) == ("Student:12:[]:{}", True, False)
        # Stored for ttl + stale_ttl: pyredis-cache readers see plain bytes with a longer TTL.
        assert redis("GET", "000STUDENT#0000000012") == b"Student:12:[]:{}"
        assert 1 < redis("PTTL", "000STUDENT#0000000012") / 1000.0 <= 31
        time.sleep(1.3)
        started = time.monotonic()
        stale = cache.sync_get_entry(12)
        assert time.monotonic() - started < 0.4  # not the handler's 0.5 s
        assert stale.hit and stale.stale and stale.data == "Student:12:[]:{}"
        assert cache.sync_get(12) == "Student:12:[]:{}"  # the pyredis-cache API is unchanged
        asyncio.run(_async_entry(daemon.socket))
        assert calls == []  # the shim never called its own sync_func: the daemon filled
    finally:
        daemon.stop()


async def _async_entry(socket_path: str) -> Any:
    async def never(identity: Any) -> Any:
        raise AssertionError("not called")
    cache = CacheClient(socket_path, "Student", never, get_func=lambda b: b.decode(), asynchronous=True)
    entry = await cache.async_get_entry(12)
    assert entry.data == "Student:12:[]:{}" and entry.hit
    return entry


# -- deadlines ------------------------------------------------------------------------------------


def test_the_shims_timeout_is_the_daemons_deadline(cached: Daemon) -> None:
    """The shim sends its timeout: a get stuck behind another client's lease is answered -32009 by the
    daemon at that deadline (not by the socket timeout), and the socket stays in use."""
    from redis_cache import DeadlineExceeded

    holder = Connection(cached.socket)
    entry = {"key": "Student", "identity": 31}
    lease = holder.call("get", entry)["lease"]
    assert lease
    waiter = Connection(cached.socket, timeout=0.3)
    assert waiter.call("ping") == "pong"
    sock = waiter._current().sock  # type: ignore[union-attr]
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        waiter.call("get", entry)
    elapsed = time.monotonic() - started
    assert raised.value.code == -32009
    assert 0.29 <= elapsed < 0.35, elapsed
    assert waiter._current().sock is sock, "a deadline answer keeps the socket"  # type: ignore[union-attr]
    assert holder.call("set", dict(entry, value="filled", lease=lease)) == {"stored": True}
    assert waiter.call("get", entry)["value"] == "filled"
    stats = holder.call("stats")
    assert stats["methods"]["get"]["errorCodes"]["-32009"] == 1


def test_the_async_shim_sends_its_timeout_too(cached: Daemon) -> None:
    from redis_cache import DeadlineExceeded

    holder = Connection(cached.socket)
    entry = {"key": "Student", "identity": 32}
    assert holder.call("get", entry)["lease"]
    waiter = Connection(cached.socket, timeout=0.25)

    async def ask() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await waiter.acall("get", entry)
        return time.monotonic() - started

    elapsed = asyncio.run(ask())
    assert 0.24 <= elapsed < 0.32, elapsed


def test_the_drop_in_client_falls_back_at_the_deadline(cached: Daemon) -> None:
    """pyredis-cache's CacheClient handles the deadline as it handled a RedisError: it calls sync_func."""
    holder = Connection(cached.socket)
    assert holder.call("get", {"key": "Student", "identity": 12})["lease"]
    calls: List[Any] = []
    log = ListLog()
    client = CacheClient(Connection(cached.socket, timeout=0.2), "Student", make_sync_func(calls), log=log)
    started = time.monotonic()
    assert client.get(12)["name"] == "Jane Roe"
    assert time.monotonic() - started < 0.4
    assert calls and log.errors, (calls, log.errors)
