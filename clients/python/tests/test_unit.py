"""Unit tests against the in-memory fake daemon: framing, flows, error mapping, encoding."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import redis_cache
from fake_daemon import FakeDaemon
from helpers import wait_until
from redis_cache import (CacheClient, Connection, ConnectionPool, HashCacheClient, InvalidParamsError,
                         LengthError)
from redis_cache._base import _background_releases
from redis_cache.connection import resolve_connection


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Any] = []

    def __call__(self, identity: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((identity, args, kwargs))
        return {"id": identity, "args": list(args), "kwargs": kwargs}


class ListLog:
    def __init__(self) -> None:
        self.errors: List[str] = []

    def error(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)


def test_public_api() -> None:
    for name in ("CacheClient", "HashCacheClient", "CacheEntry", "Connection", "ConnectionPool", "LengthError"):
        assert hasattr(redis_cache, name)
    from redis_cache.simple import CacheClient as C
    from redis_cache.hash import HashCacheClient as H
    from redis_cache.utils import LengthError as L, default_passage, key_generator
    assert (C, H, L) == (CacheClient, HashCacheClient, LengthError)
    assert default_passage(b"x") == b"x"
    assert key_generator("Student", 12) == "000STUDENT#0000000012"
    assert key_generator("Class", 3) == "00000CLASS#0000000003"
    assert (Path(redis_cache.__file__).parent / "py.typed").exists()


def test_first_argument_chooses_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHED_SOCKET", "/tmp/from-env.sock")
    assert resolve_connection("/tmp/a.sock").path == "/tmp/a.sock"
    assert resolve_connection(tmp_path / "b.sock").path == str(tmp_path / "b.sock")
    assert resolve_connection("/tmp/a.sock") is resolve_connection("/tmp/a.sock")  # shared
    conn = Connection("/tmp/c.sock")
    assert resolve_connection(conn) is conn
    assert resolve_connection(object()).path == "/tmp/from-env.sock"
    assert resolve_connection(None).path == "/tmp/from-env.sock"
    assert ConnectionPool(host="localhost", port=6379, db=0).path == "/tmp/from-env.sock"
    assert ConnectionPool.from_url("redis://localhost:6379/0").path == "/tmp/from-env.sock"
    monkeypatch.delenv("CACHED_SOCKET")
    assert ConnectionPool().path == "/run/cached/cached.sock"
    assert Connection().path == "/run/cached/cached.sock"
    client = CacheClient(ConnectionPool(), "Student", Recorder())
    assert client.connection.path == "/run/cached/cached.sock"


def test_simple_roundtrip_with_lease(fake: FakeDaemon) -> None:
    sync = Recorder()
    cache = CacheClient(fake.path, "Student", sync, set_func=json.dumps, get_func=json.loads)
    assert cache.get(12, 1, age=15) == {"id": 12, "args": [1], "kwargs": {"age": 15}}
    assert len(sync.calls) == 1
    get_req = fake.requests[0][1]
    assert get_req["method"] == "get"
    assert get_req["params"] == {"key": "Student", "identity": 12, "args": [1], "kwargs": {"age": 15}}
    set_req = fake.requests[1][1]
    assert set_req["method"] == "set" and set_req["params"]["lease"] == "lease-1"
    assert "ttl" not in set_req["params"]
    assert fake.strings["000STUDENT#0000000012"] == json.dumps(
        {"id": 12, "args": [1], "kwargs": {"age": 15}}).encode()
    # Each request carries the connection's timeout (30 s by default): the daemon's deadline for it.
    assert fake.timeouts == [("get", 30.0), ("set", 30.0)]
    # now a hit: get_func receives bytes
    seen: List[Any] = []
    cache.get_func = lambda b: seen.append(b) or json.loads(b)
    assert cache.get(12) == {"id": 12, "args": [1], "kwargs": {"age": 15}}
    assert isinstance(seen[0], bytes) and len(sync.calls) == 1
    assert cache.set(13, data={"name": "John Doe", "age": 16}) == 1
    assert json.loads(fake.strings["000STUDENT#0000000013"]) == {"name": "John Doe", "age": 16}
    assert cache.set(14) == 1 and sync.calls[-1] == (14, (), {})
    assert cache.delete(12) == 1
    assert cache.delete(12) == 0
    # One socket for all those calls.
    assert len(fake.connections) == 1


def test_default_passage_returns_bytes_on_hit(fake: FakeDaemon) -> None:
    cache = CacheClient(fake.path, "Plain", lambda i: "value-%s" % i)
    assert cache.get(1) == "value-1"  # a miss returns sync_func's data itself
    assert cache.get(1) == b"value-1"  # a hit returns the stored bytes, as with redis-py


def test_binary_values_travel_as_base64(fake: FakeDaemon) -> None:
    blob = bytes(range(256))
    cache = CacheClient(fake.path, "Blob", lambda i: blob)
    assert cache.set(1) == 1
    params = fake.requests[-1][1]["params"]
    assert params["encoding"] == "base64"
    assert fake.strings["000000BLOB#0000000001"] == blob
    assert cache.get(1) == blob
    assert cache.set(2, data="héllo ☃") == 1
    assert "encoding" not in fake.requests[-1][1]["params"]
    assert cache.get(2) == "héllo ☃".encode()


def test_numbers_are_stored_like_redis_py(fake: FakeDaemon) -> None:
    cache = CacheClient(fake.path, "Nums", lambda i: 0)
    assert cache.set(1, data=42) == 1 and fake.strings["000000NUMS#0000000001"] == b"42"
    assert cache.set(2, data=1.5) == 1 and fake.strings["000000NUMS#0000000002"] == b"1.5"


def test_unstorable_value_is_logged_not_raised(fake: FakeDaemon) -> None:
    log = ListLog()
    cache = CacheClient(fake.path, "Nones", lambda i: None, log=log)
    assert cache.get(1) is None  # sync_func's data is returned; nothing stored
    assert cache.set(2, data=True) == 0  # redis-py refused bools too (DataError)
    assert len(log.errors) == 2 and "NoneType" in log.errors[0]
    assert fake.strings == {}


def test_expire_time_sends_ttl(fake: FakeDaemon) -> None:
    cache = CacheClient(fake.path, "Student", Recorder(), set_func=json.dumps, expire_time=10)
    cache.get(5)
    assert fake.requests[-1][1]["params"]["ttl"] == 10
    cache.set(6)
    assert fake.requests[-1][1]["params"]["ttl"] == 10
    assert fake.ttls == {"000STUDENT#0000000005": 10, "000STUDENT#0000000006": 10}


def test_identity_conversion(fake: FakeDaemon) -> None:
    sync = Recorder()
    cache = CacheClient(fake.path, "Student", sync, set_func=json.dumps)
    cache.set(12.9)
    cache.set(True)
    cache.set("abc")
    cache.set(-5)
    sent = [r["params"]["identity"] for _, r in fake.requests]
    assert sent == [12, 1, "abc", -5]
    assert [type(x) for x in sent] == [int, int, str, int]
    assert sync.calls[0][0] == 12.9  # sync_func still gets the identity as given
    assert set(fake.strings) == {"000STUDENT#0000000012", "000STUDENT#0000000001", "000STUDENT#abc",
                                 "000STUDENT#-000000005"}
    with pytest.raises(TypeError):
        cache.get(None)
    with pytest.raises(TypeError):
        cache.get(b"12")


def test_length_error_before_any_io(fake: FakeDaemon) -> None:
    sync = Recorder()
    with pytest.raises(LengthError):
        CacheClient(fake.path, "ab", sync).get(1)
    with pytest.raises(LengthError):
        CacheClient(fake.path, "ab", sync).set(1)
    with pytest.raises(LengthError):
        HashCacheClient(fake.path, "xy", "Student", sync).delete_hash(1)
    with pytest.raises(InvalidParamsError):
        CacheClient(fake.path, "has space", sync).get(1)
    assert issubclass(LengthError, InvalidParamsError)
    assert sync.calls == [] and fake.requests == []


def test_invalid_params_answer_raises(fake: FakeDaemon) -> None:
    fake.error_for["get"] = (-32602, "\"identity\" must not contain control characters")
    cache = CacheClient(fake.path, "Student", Recorder())
    with pytest.raises(InvalidParamsError, match="control characters"):
        cache.get("a\x01b")


@pytest.mark.parametrize("code", [-32000, -32002, -32003, -32006, -32007])
def test_store_errors_fall_back(fake: FakeDaemon, code: int) -> None:
    for method in ("get", "set", "delete", "deleteHash"):
        fake.error_for[method] = (code, "store unavailable")
    log = ListLog()
    sync = Recorder()
    cache = CacheClient(fake.path, "Student", sync, log=log, set_func=json.dumps)
    assert cache.get(1, 2, x=3) == {"id": 1, "args": [2], "kwargs": {"x": 3}}
    assert sync.calls == [(1, (2,), {"x": 3})]
    assert cache.set(1) == 0
    assert cache.delete(1) == 0
    hcache = HashCacheClient(fake.path, "Class", "Student", sync, log=log, set_func=json.dumps)
    assert hcache.get(3, 1) == {"id": 1, "args": [], "kwargs": {}}
    assert hcache.set(3, 1) == 0 and hcache.delete(3, 1) == 0 and hcache.delete_hash(3) == 0
    assert len(log.errors) == 7 and all("store unavailable" in e for e in log.errors)


def test_no_daemon_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = CacheClient(str(tmp_path / "nobody.sock"), "Student", Recorder())
    with caplog.at_level(logging.ERROR):
        assert cache.get(7) == {"id": 7, "args": [], "kwargs": {}}
        assert cache.set(7) == 0
        assert cache.delete(7) == 0
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3
    assert "cannot connect" in caplog.records[0].getMessage()


def test_garbled_answer_falls_back(fake: FakeDaemon) -> None:
    fake.raw_reply = b"this is not json\n"
    log = ListLog()
    cache = CacheClient(fake.path, "Student", Recorder(), log=log)
    assert cache.get(1)["id"] == 1
    assert "garbled" in log.errors[0]


def test_timeout_falls_back_and_drops_the_socket(fake: FakeDaemon) -> None:
    fake.delay = lambda r: 1.0 if r["method"] == "get" else 0.0
    log = ListLog()
    cache = CacheClient(Connection(fake.path, timeout=0.1), "Student", Recorder(), log=log)
    assert cache.get(1)["id"] == 1
    assert "did not answer" in log.errors[0]
    fake.delay = lambda r: 0.0
    assert cache.set(1, data="x") == 1  # a new socket; the late answer never confuses it
    assert len(fake.connections) == 2


def test_reconnects_after_the_daemon_drops_the_connection(fake: FakeDaemon) -> None:
    log = ListLog()
    cache = CacheClient(fake.path, "Student", Recorder(), log=log)
    assert cache.set(1, data="one") == 1
    fake.drop_connections()
    assert cache.get(1) == b"one"  # the stale socket is retried once on a fresh one
    assert log.errors == []
    assert len(fake.connections) == 2


def test_miss_without_lease_and_refused_lease(fake: FakeDaemon) -> None:
    fake.give_leases = False
    cache = CacheClient(fake.path, "Student", Recorder(), set_func=json.dumps)
    assert cache.get(1)["id"] == 1
    assert "lease" not in fake.requests[-1][1]["params"]
    assert fake.requests[-1][1]["method"] == "set"
    fake.give_leases = True
    fake.refuse_leases = True
    log = ListLog()
    cache.log = log
    assert cache.get(2)["id"] == 2  # a refused lease is not an error for get
    assert log.errors == [] and "000STUDENT#0000000002" not in fake.strings


def test_daemon_side_fill(fake: FakeDaemon) -> None:
    fake.handlers["Student"] = lambda identity, args, kwargs: json.dumps({"from": "daemon", "id": identity}).encode()
    sync = Recorder()
    cache = CacheClient(fake.path, "Student", sync, set_func=json.dumps, get_func=json.loads)
    assert cache.get(4, "x") == {"from": "daemon", "id": 4}
    assert sync.calls == [] and fake.methods() == ["get"]
    fake.handlers["Student"] = lambda identity, args, kwargs: None  # handler returned null
    assert cache.get(5)["id"] == 5
    assert sync.calls == [(5, (), {})] and fake.methods()[-1] == "set"


def test_non_json_args_are_not_sent(fake: FakeDaemon) -> None:
    marker = object()
    sync = Recorder()
    cache = CacheClient(fake.path, "Student", sync, set_func=str)
    cache.get(1, marker, db=marker)
    assert "args" not in fake.requests[0][1]["params"] and "kwargs" not in fake.requests[0][1]["params"]
    assert sync.calls == [(1, (marker,), {"db": marker})]


def test_hash_client(fake: FakeDaemon) -> None:
    sync = Recorder()
    hcache = HashCacheClient(fake.path, "Class", "Student", sync, set_func=json.dumps, get_func=json.loads)
    assert hcache.set(3, 12) == 1
    params = fake.requests[-1][1]["params"]
    assert params["hashKey"] == "Class" and params["hashId"] == 3 and "ttl" not in params
    assert fake.hashes == {"00000CLASS#0000000003": {"000STUDENT#0000000012": json.dumps(
        {"id": 12, "args": [], "kwargs": {}}).encode()}}
    assert hcache.get(3, 12) == {"id": 12, "args": [], "kwargs": {}}
    assert hcache.get(3, 13)["id"] == 13
    assert len(sync.calls) == 2
    assert hcache.delete(3, 12) == 1 and hcache.delete(3, 12) == 0
    assert hcache.delete_hash(3) == 1 and hcache.delete_hash(3) == 0
    assert fake.requests[-1][1]["params"] == {"hashKey": "Class", "hashId": 3}


def test_async_clients(fake: FakeDaemon) -> None:
    calls: List[Any] = []

    async def sync(identity: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(identity)
        await asyncio.sleep(0)
        return {"id": identity}

    cache = CacheClient(fake.path, "Student", sync, set_func=json.dumps, get_func=json.loads, asynchronous=True)
    hcache = HashCacheClient(fake.path, "Class", "Student", sync, set_func=json.dumps, get_func=json.loads,
                             asynchronous=True)
    assert asyncio.iscoroutinefunction(cache.get) and asyncio.iscoroutinefunction(cache.set)

    async def main() -> None:
        assert await cache.get(23) == {"id": 23}
        assert await cache.get(23) == {"id": 23}
        assert await cache.set(24) == 1
        assert await cache.set(25, data={"x": 1}) == 1
        assert await hcache.get(3, 12) == {"id": 12}
        assert await hcache.get(3, 12) == {"id": 12}
        assert await hcache.set(3, 13, data={"y": 2}) == 1
        assert cache.delete(23) == 1  # delete stays a plain method, as in pyredis-cache
        assert hcache.delete_hash(3) == 1

    asyncio.run(main())
    assert calls == [23, 24, 12]


def test_async_answers_out_of_order_on_one_socket(fake: FakeDaemon) -> None:
    # Later requests are answered first: the reader must dispatch by id.
    fake.delay = lambda r: 0.3 - 0.01 * (r["params"]["identity"] if r.get("params") else 0)
    for i in range(20):
        fake.strings["000STUDENT#%010d" % i] = str(i).encode()

    async def sync(identity: Any) -> Any:
        raise AssertionError("all hits")

    cache = CacheClient(fake.path, "Student", sync, get_func=lambda b: int(b), asynchronous=True)

    async def main() -> List[Any]:
        return list(await asyncio.gather(*(cache.get(i) for i in range(20))))

    assert asyncio.run(main()) == list(range(20))
    assert len(fake.connections) == 1  # all twenty shared one stream


def test_async_fallback(tmp_path: Path) -> None:
    log = ListLog()

    async def sync(identity: Any, *args: Any) -> Any:
        return ("fallback", identity, args)

    cache = CacheClient(str(tmp_path / "none.sock"), "Student", sync, log=log, asynchronous=True)

    async def main() -> None:
        assert await cache.get(1, 2) == ("fallback", 1, (2,))
        assert await cache.set(1) == 0

    asyncio.run(main())
    assert len(log.errors) == 2


def test_async_fallback_on_store_error(fake: FakeDaemon) -> None:
    fake.error_for["get"] = (-32000, "store unavailable")
    fake.error_for["set"] = (-32002, "store timeout")
    log = ListLog()

    async def sync(identity: Any) -> Any:
        return identity * 2

    cache = CacheClient(fake.path, "Student", sync, log=log, asynchronous=True)

    async def main() -> None:
        assert await cache.get(21) == 42
        assert await cache.set(21) == 0

    asyncio.run(main())
    assert log.errors == ["[CACHED] store unavailable (-32000)", "[CACHED] store timeout (-32002)"]


def test_fork_uses_a_new_socket(fake: FakeDaemon) -> None:
    cache = CacheClient(fake.path, "Student", Recorder(), set_func=json.dumps)
    assert cache.set(1) == 1
    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            ok = cache.get(1) == b'{"id": 1, "args": [], "kwargs": {}}' and cache.set(2) == 1
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"ok"
    os.waitpid(pid, 0)
    assert cache.get(2) == b'{"id": 2, "args": [], "kwargs": {}}'
    assert fake.connections == [parent, pid]
    assert {p for p, req in fake.requests if req["params"].get("identity") == 2 and req["method"] == "set"} == {pid}
    assert all(p == parent for p, req in fake.requests[-1:])


def test_one_socket_per_thread(fake: FakeDaemon) -> None:
    import threading
    fake.strings["000STUDENT#0000000001"] = b"v"
    cache = CacheClient(fake.path, "Student", Recorder())
    errors: List[BaseException] = []

    def run() -> None:
        try:
            for _ in range(50):
                assert cache.get(1) == b"v"
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fake.connections) == 4


def test_async_reconnects_and_times_out(fake: FakeDaemon) -> None:
    log = ListLog()

    async def sync(identity: Any) -> Any:
        return "fresh-%s" % identity

    cache = CacheClient(Connection(fake.path, timeout=0.2), "Student", sync, log=log, asynchronous=True)

    async def main() -> None:
        assert await cache.set(1, data="one") == 1
        fake.drop_connections()
        await asyncio.sleep(0.05)
        assert await cache.get(1) == b"one"  # a new stream, transparently
        fake.delay = lambda r: 1.0 if r["method"] == "get" else 0.0
        assert await cache.get(1) == "fresh-1"  # timed out: fallback
        fake.delay = lambda r: 0.0
        assert await cache.get(1) == b"one"  # the late answer is ignored by id

    asyncio.run(main())
    assert len(log.errors) == 1 and "did not answer" in log.errors[0]
    assert len(fake.connections) == 2


# -- a failed fill gives its lease back ------------------------------------------------------


class Boom(Exception):
    pass


class LevelLog:
    """A log object with every level (the ListLog above only has ``error``, like old code may)."""

    def __init__(self) -> None:
        self.records: List[Any] = []

    def _add(self, level: str, msg: str, *args: Any) -> None:
        self.records.append((level, msg % args))

    def debug(self, msg: str, *args: Any) -> None:
        self._add("debug", msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._add("warning", msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._add("error", msg, *args)

    def levels(self) -> List[str]:
        return [level for level, _ in self.records]


def _client(target: Any, kind: str, sync_func: Any, asynchronous: bool = False, **options: Any) -> Any:
    if kind == "hash":
        return HashCacheClient(target, "Class", "Student", sync_func, asynchronous=asynchronous, **options)
    return CacheClient(target, "Student", sync_func, asynchronous=asynchronous, **options)


def _get(client: Any, kind: str, identity: Any) -> Any:
    """``client.get`` for entry ``identity`` (of hash 3); runs the coroutine of an async client."""
    result = client.get(3, identity) if kind == "hash" else client.get(identity)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def _address(kind: str, identity: Any) -> Dict[str, Any]:
    address: Dict[str, Any] = {"key": "Student", "identity": identity}
    if kind == "hash":
        address.update(hashKey="Class", hashId=3)
    return address


def _answer_to(fake: FakeDaemon, method: str) -> Any:
    answers = [answer for request, answer in fake.answers if request["method"] == method]
    assert len(answers) == 1, answers
    return answers[0]


def _failing(boom: BaseException, asynchronous: bool, calls: List[Any]) -> Any:
    def failing(identity: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(identity)
        raise boom

    async def async_failing(identity: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(identity)
        await asyncio.sleep(0)
        raise boom

    return async_failing if asynchronous else failing


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["plain", "hash"])
def test_raising_sync_func_releases_its_lease_then_reraises(fake: FakeDaemon, kind: str,
                                                           asynchronous: bool) -> None:
    boom = Boom("the database is down")
    calls: List[Any] = []
    log = LevelLog()
    client = _client(fake.path, kind, _failing(boom, asynchronous, calls), asynchronous, log=log)
    with pytest.raises(Boom) as excinfo:
        _get(client, kind, 12)
    assert excinfo.value is boom  # the very exception, not a wrapper or a copy
    assert boom.__context__ is None and boom.__cause__ is None
    assert excinfo.traceback[-1].name in ("failing", "async_failing")  # raised where it was raised
    assert calls == [12]
    assert fake.methods() == ["get", "release"]
    assert fake.requests[1][1]["params"] == dict(_address(kind, 12), lease="lease-1")
    assert _answer_to(fake, "release")["result"] == {"released": True}
    assert fake.leases == {} and fake.strings == {} and fake.hashes == {}
    assert log.records == []


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("failure", ["method-not-found", "store-error", "timeout"])
def test_a_failed_release_never_masks_the_exception(fake: FakeDaemon, failure: str,
                                                    asynchronous: bool) -> None:
    if failure == "method-not-found":  # a daemon from before `release`
        fake.error_for["release"] = (-32601, "method not found")
    elif failure == "store-error":
        fake.error_for["release"] = (-32603, "internal error")
    else:
        fake.delay = lambda r: 1.0 if r["method"] == "release" else 0.0
    boom = Boom("sync_func failed")
    log = LevelLog()
    client = _client(Connection(fake.path, timeout=0.2), "plain", _failing(boom, asynchronous, []),
                     asynchronous, log=log)
    with pytest.raises(Boom) as excinfo:
        _get(client, "plain", 5)
    assert excinfo.value is boom and boom.__context__ is None
    assert fake.methods() == ["get", "release"]
    assert log.levels() == ["debug" if failure == "method-not-found" else "warning"]
    assert "cannot release the lease" in log.records[0][1]
    # A log object with nothing but `error` (all pyredis-cache needed) is fine too.
    old_style = ListLog()
    client.log = old_style
    with pytest.raises(Boom):
        _get(client, "plain", 6)
    assert old_style.errors == []


def test_release_failure_goes_to_a_standard_logger(fake: FakeDaemon, caplog: pytest.LogCaptureFixture) -> None:
    fake.error_for["release"] = (-32000, "store unavailable")
    client = CacheClient(fake.path, "Student", _failing(Boom("x"), False, []),
                         log=logging.getLogger("app.cache"))
    with caplog.at_level(logging.DEBUG, logger="app.cache"):
        with pytest.raises(Boom):
            client.get(1)
    assert [(r.name, r.levelno) for r in caplog.records] == [("app.cache", logging.WARNING)]
    assert "store unavailable" in caplog.records[0].getMessage()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["plain", "hash"])
def test_a_waiting_client_gets_the_released_lease_at_once(fake: FakeDaemon, kind: str,
                                                          asynchronous: bool) -> None:
    fake.lease_timeout = 5.0
    holder_started = threading.Event()
    may_fail = threading.Event()
    boom = Boom("fill failed")
    filled: List[Any] = []

    def failing(identity: Any) -> Any:
        holder_started.set()
        assert may_fail.wait(10)
        raise boom

    def filling(identity: Any) -> Any:
        filled.append(identity)
        return "filled-%s" % identity

    async def async_failing(identity: Any) -> Any:
        holder_started.set()
        while not may_fail.is_set():
            await asyncio.sleep(0.005)
        raise boom

    async def async_filling(identity: Any) -> Any:
        return filling(identity)

    # Two connections, as two processes (or threads) would have.
    a = _client(Connection(fake.path), kind, async_failing if asynchronous else failing, asynchronous)
    b = _client(Connection(fake.path), kind, async_filling if asynchronous else filling, asynchronous)
    outcome: Dict[str, Any] = {}

    b_done = threading.Event()

    def run_a() -> None:
        try:
            outcome["a"] = _get(a, kind, 7)
        except BaseException as e:
            outcome["a"] = e
        # Keep a's thread, and so its socket, open: a closed connection would also hand the lease
        # over. (An async client's stream closes with asyncio.run, after the release, which is
        # why the release's own answer is checked below.)
        b_done.wait(10)

    def run_b() -> None:
        try:
            outcome["b"] = _get(b, kind, 7)
            outcome["b_done"] = time.monotonic()
        finally:
            b_done.set()

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert holder_started.wait(5)
    thread_b = threading.Thread(target=run_b)
    thread_b.start()
    wait_until(lambda: fake.lease_waits == 1, 5, "b waiting behind a's lease")
    failed_at = time.monotonic()
    may_fail.set()
    thread_a.join(10)
    thread_b.join(10)
    assert outcome["a"] is boom
    assert outcome["b"] == "filled-7" and filled == [7]
    assert outcome["b_done"] - failed_at < 1.0  # not lease_timeout (5 s)
    assert fake.methods() == ["get", "get", "release", "set"]
    assert _answer_to(fake, "release")["result"] == {"released": True}  # passed on by the release
    assert fake.requests[3][1]["params"]["lease"] == "lease-2"  # b filled with the lease a gave back
    assert _answer_to(fake, "set")["result"] == {"stored": True}
    if kind == "hash":
        assert fake.hashes["00000CLASS#0000000003"]["000STUDENT#0000000007"] == b"filled-7"
    else:
        assert fake.strings["000STUDENT#0000000007"] == b"filled-7"


def test_without_release_the_waiter_gets_the_lease_after_lease_timeout(fake: FakeDaemon) -> None:
    # A daemon from before `release`: the shim's release fails quietly, the lease expires.
    fake.error_for["release"] = (-32601, "method not found")
    fake.lease_timeout = 0.4
    holder_started = threading.Event()
    may_fail = threading.Event()

    def failing(identity: Any) -> Any:
        holder_started.set()
        assert may_fail.wait(10)
        raise Boom()

    a = CacheClient(Connection(fake.path), "Student", failing)
    b = CacheClient(Connection(fake.path), "Student", lambda i: "b-%s" % i)
    b_done = threading.Event()

    def run_a() -> None:
        with pytest.raises(Boom):
            a.get(1)
        b_done.wait(10)  # keep a's socket open: a closed connection would pass the lease on

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert holder_started.wait(5)
    started = time.monotonic()
    threading.Timer(0.05, may_fail.set).start()
    assert b.get(1) == "b-1"
    b_done.set()
    assert time.monotonic() - started >= 0.3
    assert _answer_to(fake, "release")["error"]["code"] == -32601
    thread_a.join(5)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_unstorable_or_raising_set_func_releases(fake: FakeDaemon, asynchronous: bool) -> None:
    async def async_none(identity: Any) -> Any:
        return None

    def boom_set(data: Any) -> Any:
        raise ValueError("cannot serialise %r" % (data,))

    log = LevelLog()
    nones = CacheClient(fake.path, "Nones", async_none if asynchronous else (lambda i: None),
                        log=log, asynchronous=asynchronous)
    assert _get(nones, "plain", 1) is None  # nothing to store: the lease goes back
    assert fake.methods() == ["get", "release"]
    assert log.levels() == ["error"] and "NoneType" in log.records[0][1]

    async def async_data(identity: Any) -> Any:
        return {"id": identity}

    raising = CacheClient(fake.path, "Student", async_data if asynchronous else (lambda i: {"id": i}),
                          set_func=boom_set, asynchronous=asynchronous)
    with pytest.raises(ValueError, match="cannot serialise"):
        _get(raising, "plain", 2)
    assert fake.methods()[2:] == ["get", "release"]
    assert all(answer["result"] == {"released": True} for request, answer in fake.answers
               if request["method"] == "release")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_set_errors_and_lost_connections(fake: FakeDaemon, asynchronous: bool) -> None:
    async def async_data(identity: Any) -> Any:
        return "v%s" % identity

    sync_func = async_data if asynchronous else (lambda i: "v%s" % i)
    log = LevelLog()
    # The daemon answers the set with an error: the lease is given back.
    fake.error_for["set"] = (-32003, "OOM command not allowed")
    client = CacheClient(Connection(fake.path, timeout=0.3), "Student", sync_func, log=log,
                         asynchronous=asynchronous)
    assert _get(client, "plain", 1) == "v1"
    assert fake.methods() == ["get", "set", "release"] and fake.leases == {}
    assert log.levels() == ["error"]
    # The set gets no answer in time (sync: the socket is dropped; async: the lease expires on
    # the daemon): no release is sent, the daemon hands the lease over by itself.
    del fake.error_for["set"]
    fake.delay = lambda r: 1.0 if r["method"] == "set" else 0.0
    assert _get(client, "plain", 2) == "v2"
    assert fake.methods()[3:] == ["get", "set"]
    assert log.levels() == ["error", "error"] and "did not answer" in log.records[1][1]


def test_cancelled_async_fill_releases_in_the_background(fake: FakeDaemon) -> None:
    async def main() -> None:
        began = asyncio.Event()

        async def slow(identity: Any) -> Any:
            began.set()
            await asyncio.sleep(30)

        client = CacheClient(fake.path, "Student", slow, asynchronous=True)
        task = asyncio.ensure_future(client.get(9))
        await asyncio.wait_for(began.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(_background_releases) == 1  # the release runs on as a task of its own
        for _ in range(500):
            if not _background_releases:
                break
            await asyncio.sleep(0.01)
        assert not _background_releases

    asyncio.run(main())
    assert fake.methods() == ["get", "release"]
    assert _answer_to(fake, "release")["result"] == {"released": True}


def test_fake_daemon_lease_protocol(fake: FakeDaemon) -> None:
    """The fake's lease flow, as the daemon's (so the tests above test the shim, not the fake)."""
    from redis_cache.errors import DaemonError
    holder, other = Connection(fake.path), Connection(fake.path)
    entry = {"key": "Student", "identity": 1}
    first = holder.call("get", entry)
    assert first == {"hit": False, "value": None, "lease": "lease-1"}
    # lease:false neither takes a lease nor waits behind one.
    assert other.call("get", dict(entry, **{"lease": False})) == {"hit": False, "value": None}
    with pytest.raises(InvalidParamsError):
        other.call("get", dict(entry, **{"lease": "no"}))
    with pytest.raises(InvalidParamsError):
        other.call("release", dict(entry, lease=7))
    with pytest.raises(InvalidParamsError):
        other.call("release", dict(entry, lease="lease-1", ttl=1))
    assert other.call("release", dict(entry, lease="lease-0")) == {"released": False}
    assert other.call("release", {"key": "Student", "identity": 2, "lease": "lease-1"}) == {"released": False}
    # The holder asking again gets a new token; the old one is dead.
    assert holder.call("get", entry)["lease"] == "lease-2"
    assert holder.call("release", dict(entry, lease="lease-1")) == {"released": False}
    assert holder.call("release", dict(entry, lease="lease-2")) == {"released": True}
    assert holder.call("release", dict(entry, lease="lease-2")) == {"released": False}
    # A write or delete revokes; the holder's disconnect and lease_timeout pass the lease on.
    assert holder.call("get", entry)["lease"] == "lease-3"
    assert holder.call("delete", entry) == {"deleted": 0}
    assert holder.call("release", dict(entry, lease="lease-3")) == {"released": False}
    assert holder.call("get", entry)["lease"] == "lease-4"
    holder.close()
    wait_until(lambda: fake.leases == {}, 5, "the lease to end with its connection")
    fake.lease_timeout = 0.2
    assert other.call("get", entry)["lease"] == "lease-5"
    started = time.monotonic()
    assert holder.call("get", entry)["lease"] == "lease-6"  # waited for lease-5 to expire
    assert 0.15 <= time.monotonic() - started < 2
    with pytest.raises(DaemonError) as excinfo:
        holder.call("nosuchmethod", {})
    assert excinfo.value.code == -32601


def test_the_timeout_sent_follows_the_connection(fake: FakeDaemon) -> None:
    from redis_cache.connection import ANSWER_GRACE

    Connection(fake.path, timeout=0.25).call("ping")
    Connection(fake.path, timeout=None).call("ping")
    assert fake.timeouts == [("ping", 0.25)]  # None: nothing sent, the daemon's request_timeout applies
    connection = Connection(fake.path, timeout=0.25)
    connection.call("ping")
    assert connection._current().sock.gettimeout() == 0.25 + ANSWER_GRACE  # type: ignore[union-attr]


def test_a_deadline_answer_is_its_own_error(fake: FakeDaemon) -> None:
    from redis_cache import DeadlineExceeded

    fake.error_for["get"] = (-32009, "get: no answer within the request's deadline (0.25 s)")
    with pytest.raises(DeadlineExceeded) as raised:
        Connection(fake.path, timeout=0.25).call("get", {"key": "Student", "identity": 1})
    assert raised.value.code == -32009
    assert isinstance(raised.value, redis_cache.DaemonError)
