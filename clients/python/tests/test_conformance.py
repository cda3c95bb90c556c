"""The shim's runner of the conformance suite (clients/conformance/README.md, cases.json).

Every case of cases.json is its own test (id ``<store>-<case name>``), against a real daemon started
by clients/conformance/harness.py (one harness per store, ``reset`` before each case).

How steps map onto the shim:

- ``get``/``set``/``delete``/``deleteHash``/``call``: :meth:`redis_cache.Connection.call` (the shim's
  request call: its errors carry the JSON-RPC code, where ``CacheClient`` would fall back), with the
  shim's own value coding (``encode_value``/``decode_value``). ``get`` sends ``"lease": false``.
- ``fetch``: ``CacheClient.sync_get_entry`` (``HashCacheClient`` with ``hashKey``), whose
  ``sync_func`` is the step's fill: the shim's lease flow. The shim never raises a daemon error from
  ``get``: it logs it (``log.error``) and falls back to ``sync_func``, as pyredis-cache did. A fetch
  whose ``get`` failed that way (the error logged before the fill ran) counts as failing with the
  logged code, so ``{"error": {"code": C}}`` is checked against the shim's documented fallback.
- A step's ``timeout`` is the ``timeout`` of a :class:`Connection` for that call (the shim's only
  per-request timeout); ``near*`` clients use ``Connection(near_cache=1000)``.
- ``async`` steps run in a thread of their own (the shim's blocking path has one socket per thread).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
CONFORMANCE = HERE.parent.parent / "conformance"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(CONFORMANCE))

from conformance import (Harness, case_params, check, identity_value, load_cases, short,  # noqa: E402
                         value_bytes)
from redis_cache import CacheClient, CachedError, Connection, DaemonError, HashCacheClient, InvalidParamsError  # noqa: E402
from redis_cache._base import decode_value, encode_value  # noqa: E402

CASES = load_cases()
PARAMS = [pytest.param(store, case, id="%s-%s" % (store, case["name"])) for store, case in case_params(CASES)]
#: What this client offers of the cases' optional features.
FEATURES = {"nearCache"}
NEAR_ENTRIES = 1000

_harnesses: Dict[str, Harness] = {}


@pytest.fixture(scope="module")
def harnesses(daemon_bin: Path) -> Iterator[Dict[str, Harness]]:
    yield _harnesses
    for harness in _harnesses.values():
        harness.close()
    _harnesses.clear()


def harness_for(harnesses: Dict[str, Harness], store: str, binary: Path) -> Harness:
    harness = harnesses.get(store)
    if harness is None or harness.proc.poll() is not None:
        # One store at a time: the previous store's harness is done once the next one starts.
        for other in list(harnesses):
            harnesses.pop(other).close()
        harness = harnesses[store] = Harness(store, str(binary))
    return harness


class FillError(Exception):
    """What a step's fill raises."""


class CapturingLog:
    """The ``log`` given to the shim's clients: it records what the shim reports."""

    def __init__(self, events: List[Any]) -> None:
        self.events = events

    def error(self, message: str, *args: Any) -> None:
        self.events.append(("error", message % args if args else message))

    def warning(self, message: str, *args: Any) -> None:
        self.events.append(("warning", message % args if args else message))

    def debug(self, message: str, *args: Any) -> None:
        pass


_CODE = re.compile(r"\((-?\d+)\)\s*$")


class Client:
    """One named client of a case: its own Connection (so its own sockets)."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.near = NEAR_ENTRIES if name.startswith("near") else 0
        self.connection = Connection(path, near_cache=self.near)
        self._timed: Dict[float, Connection] = {}

    def conn(self, timeout: Optional[float]) -> Connection:
        if timeout is None:
            return self.connection
        connection = self._timed.get(timeout)
        if connection is None:
            connection = self._timed[timeout] = Connection(self.path, timeout=timeout, near_cache=self.near)
        return connection

    def close(self) -> None:
        for connection in [self.connection, *self._timed.values()]:
            connection.close()


def address(step: Dict[str, Any]) -> Dict[str, Any]:
    params: Dict[str, Any] = {"key": step["key"], "identity": identity_value(step["identity"])}
    if "hashKey" in step:
        params["hashKey"] = step["hashKey"]
        params["hashId"] = identity_value(step["hashId"])
    return params


def error_of(error: Exception) -> Dict[str, Any]:
    if isinstance(error, InvalidParamsError):
        return {"error": {"code": error.code, "message": error.message}}
    if isinstance(error, DaemonError):
        return {"error": {"code": error.code, "message": error.message}}
    raise error


class Runner:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.clients: Dict[str, Client] = {}
        self.pending: Dict[str, Any] = {}

    def client(self, name: str) -> Client:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = Client(self.harness.socket, name)
        return client

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    # Each op returns what the client did, normalized for conformance.check ---------------------------

    def op_get(self, step: Dict[str, Any]) -> Dict[str, Any]:
        params = address(step)
        params["lease"] = False
        try:
            result = self.client(step.get("client", "a")).conn(step.get("timeout")).call("get", params)
        except CachedError as e:
            return error_of(e)
        value = result.get("value")
        return {"hit": result.get("hit"), "value": None if value is None else decode_value(result),
                "stale": result.get("stale") is True}

    def op_set(self, step: Dict[str, Any]) -> Dict[str, Any]:
        params = address(step)
        value, encoding = encode_value(value_bytes(step["value"]))
        params["value"] = value
        if encoding is not None:
            params["encoding"] = encoding
        if "ttl" in step:
            params["ttl"] = step["ttl"]
        try:
            result = self.client(step.get("client", "a")).connection.call("set", params)
        except CachedError as e:
            return error_of(e)
        return {"ok": result.get("stored") is True}

    def op_delete(self, step: Dict[str, Any]) -> Dict[str, Any]:
        try:
            result = self.client(step.get("client", "a")).connection.call("delete", address(step))
        except CachedError as e:
            return error_of(e)
        return {"deleted": result.get("deleted") == 1}

    def op_deleteHash(self, step: Dict[str, Any]) -> Dict[str, Any]:
        params = {"hashKey": step["hashKey"], "hashId": identity_value(step["hashId"])}
        try:
            result = self.client(step.get("client", "a")).connection.call("deleteHash", params)
        except CachedError as e:
            return error_of(e)
        return {"deleted": result.get("deleted") == 1}

    def op_call(self, step: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return {"result": self.client(step.get("client", "a")).connection.call(step["method"], step.get("params"))}
        except CachedError as e:
            return error_of(e)

    def op_fetch(self, step: Dict[str, Any]) -> Dict[str, Any]:
        client = self.client(step.get("client", "a"))
        fill = step["fill"]
        events: List[Any] = []
        raised: List[BaseException] = []

        def sync_func(identity: Any, *args: Any, **kwargs: Any) -> Any:
            events.append(("fill",))
            time.sleep(fill.get("delayMs", 0) / 1000.0)
            if "error" in fill:
                error = FillError(fill["error"])
                raised.append(error)
                raise error
            return value_bytes(fill.get("value"))

        connection = client.conn(step.get("timeout"))
        log = CapturingLog(events)
        identity = identity_value(step["identity"])
        try:
            if "hashKey" in step:
                hashed = HashCacheClient(connection, step["hashKey"], step["key"], sync_func, log=log,
                                         near_cache=client.near)
                entry = hashed.sync_get_entry(identity_value(step["hashId"]), identity)
            else:
                simple = CacheClient(connection, step["key"], sync_func, log=log, near_cache=client.near)
                entry = simple.sync_get_entry(identity)
        except FillError as e:
            if not raised or e is not raised[0]:
                return {"error": {"fill": "a different exception object than the fill raised: %r" % e}}
            return {"error": {"fill": str(e)}}
        except InvalidParamsError as e:
            return error_of(e)
        if events and events[0][0] == "error":
            # The shim's `get` failed: it logged the daemon's error and fell back to sync_func.
            message = events[0][1]
            match = _CODE.search(message)
            return {"error": {"code": int(match.group(1)) if match else None, "message": message}}
        data = entry.data
        if data is not None and not isinstance(data, bytes):
            return {"error": {"code": None, "message": "fetch returned %s, not bytes" % short(data)}}
        return {"value": data, "fillCalled": any(e[0] == "fill" for e in events)}

    def op_redis(self, step: Dict[str, Any]) -> Dict[str, Any]:
        return {"reply": self.harness.command("redis", args=step["args"])["reply"]}

    def harness_op(self, step: Dict[str, Any]) -> Dict[str, Any]:
        self.harness.command(step["op"])
        return {}

    op_restart = op_stopRedis = op_startRedis = harness_op

    def run_step(self, index: int, step: Dict[str, Any]) -> None:
        op = step["op"]
        label = "step %d (%s)" % (index, short(step, 200))
        if op == "sleep":
            time.sleep(step["ms"] / 1000.0)
            return
        if op == "await":
            thread, box, async_label, expect = self.pending.pop(step["handle"])
            thread.join(60)
            assert not thread.is_alive(), "%s: the async step never finished" % async_label
            if "exception" in box:
                raise box["exception"]
            problem = check(box["op"], expect, box["actual"])
            assert problem is None, "%s (awaited at step %d): %s" % (async_label, index, problem)
            return
        handler = getattr(self, "op_%s" % op)
        if "async" in step:
            box: Dict[str, Any] = {"op": op}

            def target() -> None:
                try:
                    box["actual"] = handler(step)
                except BaseException as e:  # re-raised by the await
                    box["exception"] = e

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.pending[step["async"]] = (thread, box, label, step.get("expect"))
            return
        actual = handler(step)
        if op in ("restart", "stopRedis", "startRedis"):
            return
        problem = check(op, step.get("expect"), actual)
        assert problem is None, "%s: %s" % (label, problem)


@pytest.mark.parametrize("store,case", PARAMS)
def test_conformance(store: str, case: Dict[str, Any], harnesses: Dict[str, Harness], daemon_bin: Path) -> None:
    missing = set(case.get("requires", [])) - FEATURES
    if missing:
        pytest.skip("%s needs %s" % (case["name"], ", ".join(sorted(missing))))
    harness = harness_for(harnesses, store, daemon_bin)
    harness.command("reset")
    runner = Runner(harness)
    try:
        for index, step in enumerate(case["steps"]):
            runner.run_step(index, step)
        assert not runner.pending, "async steps never awaited: %s" % ", ".join(runner.pending)
    finally:
        for thread, _, _, _ in runner.pending.values():
            thread.join(10)
        runner.close()
