"""Helpers for Python runners of the conformance suite (README.md), standard library only.

- :func:`load_cases`: cases.json, and the (store, case) pairs a runner runs;
- :class:`Harness`: harness.py as a subprocess (one per store), its commands as methods;
- :func:`value_bytes` / :func:`identity_value`: a case's values and identities as Python objects;
- :func:`check`: compares what a client did with a step's ``expect`` and says what differs.

Used by clients/python/tests/test_conformance.py and test_interop.py; runners in other languages
implement the same few rules themselves.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CASES = HERE / "cases.json"
STORES = ("embedded", "redis")


def load_cases(path: Path = CASES) -> List[Dict[str, Any]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("version") != 1:
        raise ValueError("cases.json: version %r, this runner knows 1" % (document.get("version"),))
    return list(document["cases"])


def case_params(cases: List[Dict[str, Any]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(store, case) for every store each case lists, store by store (one harness at a time)."""
    for store in STORES:
        for case in cases:
            if store in case.get("stores", STORES):
                yield store, case


def value_bytes(value: Any) -> Optional[bytes]:
    """A case's value as bytes (``None`` for null)."""
    if value is None:
        return None
    if "utf8" in value:
        return value["utf8"].encode("utf-8")
    if "base64" in value:
        return base64.b64decode(value["base64"], validate=True)
    if "repeat" in value:
        return (value["repeat"] * int(value["count"])).encode("utf-8")
    raise ValueError("unknown value %r" % (value,))


def identity_value(identity: Any) -> Any:
    """A case's identity: an int, a str, or {"bigint": "..."} as a Python int."""
    if isinstance(identity, dict):
        return int(identity["bigint"])
    if isinstance(identity, bool) or not isinstance(identity, (int, str)):
        raise ValueError("unknown identity %r" % (identity,))
    return identity


def short(data: Any, limit: int = 120) -> str:
    text = repr(data)
    return text if len(text) <= limit else "%s... (%d chars)" % (text[:limit], len(text))


class HarnessError(RuntimeError):
    pass


class Harness:
    """harness.py for one store; ``command`` sends one command and returns its answer."""

    def __init__(self, store: str, binary: Optional[str] = None) -> None:
        argv = [sys.executable, str(HERE / "harness.py"), "--store", store]
        if binary:
            argv += ["--bin", binary]
        self.store = store
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8")
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        try:
            ready = json.loads(line)
        except ValueError:
            self.proc.kill()
            raise HarnessError("harness.py printed %r" % line) from None
        if "socket" not in ready:
            self.proc.wait()
            raise HarnessError("harness.py did not start: %s" % ready.get("error"))
        self.socket: str = ready["socket"]
        self.redis_socket: Optional[str] = ready.get("redisSocket")

    def command(self, name: str, **members: Any) -> Dict[str, Any]:
        message = dict(members)
        message["cmd"] = name
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise HarnessError("harness.py exited (%s)" % self.proc.poll())
        answer = json.loads(line)
        if not answer.get("ok"):
            raise HarnessError("harness %s failed: %s" % (name, answer.get("error")))
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (HarnessError, OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _json_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict) and expected == {"any": True}:
        return True
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and set(expected) == set(actual)
                and all(_json_matches(v, actual[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(_json_matches(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def check(op: str, expect: Optional[Dict[str, Any]], actual: Dict[str, Any]) -> Optional[str]:
    """None when ``actual`` (what the client did, normalized) satisfies ``expect``; else what differs.

    ``actual`` is ``{"error": {"code": C, "message": M}}`` for a client error, ``{"error": {"fill": M}}``
    for a fill's own error rethrown, else per op: get ``{"hit", "value": bytes|None, "stale"}``, set
    ``{"ok"}``, delete/deleteHash ``{"deleted"}``, fetch ``{"value": bytes|None, "fillCalled"}``, call
    ``{"result"}``, redis ``{"reply"}``.
    """
    if expect is None:
        if "error" in actual:
            return "expected success, got error %s" % short(actual["error"], 300)
        return None
    if "error" in expect:
        want = expect["error"]
        got = actual.get("error")
        if got is None:
            return "expected error %s, got %s" % (want, short(actual, 300))
        if "fill" in want:
            if got.get("fill") != want["fill"]:
                return "expected the fill's own error %r rethrown, got %s" % (want["fill"], short(got, 300))
            return None
        if got.get("code") != want["code"]:
            return "expected error code %s, got %s" % (want["code"], short(got, 300))
        contains = want.get("messageContains")
        if contains is not None and contains not in str(got.get("message", "")):
            return "expected the error message to contain %r, got %r" % (contains, got.get("message"))
        return None
    if "error" in actual:
        return "expected %s, got error %s" % (short(expect, 200), short(actual["error"], 300))
    problems = []
    for member, want in expect.items():
        got = actual.get(member)
        if member == "value":
            want_bytes = value_bytes(want)
            if want_bytes != got:
                problems.append("value: expected %s, got %s" % (short(want_bytes), short(got)))
        elif member in ("result", "reply"):
            if not _json_matches(want, got):
                problems.append("%s: expected %s, got %s" % (member, short(want, 300), short(got, 300)))
        elif want != got or type(want) is not type(got):
            problems.append("%s: expected %r, got %r" % (member, want, got))
    return "; ".join(problems) or None


def default_binary() -> str:
    return os.environ.get("CACHED_BIN") or str(REPO_ROOT / ".build" / "debug" / "cached")
