"""Interop across every client: a value written by one is read byte for byte by every other.

One real daemon on a real Redis (harness.py --store redis). For every (writer, reader) pair of

    python        the shim, in process (CacheClient.set to write, Connection.call get to read)
    swift         cachectl (the Swift client's command-line tool): `set --base64 -`, `get --json`
    node          node clients/node/test/interop-cli.js
    go            clients/go/cmd/cached-interop (built once with `go build`)
    php           php clients/php/tests/interop-cli.php
    pyredis-cache pyredis-cache 0.1.3 itself, straight on Redis (a venv, as clients/python/tests/test_interop.py)

the writer stores a few values (binary bytes, all 256 byte values, non-ASCII text, empty, 1 MiB) under
integer, negative and string identities, and the reader must read exactly those bytes. pyredis-cache
cannot address string identities (its "%010d"), so it skips those entries.

The node, go and php programs speak one JSON line per request on stdin, one answer line on stdout:
    {"op":"set","socket":S,"key":K,"identity":I,"value":B64}  -> {"ok":true}
    {"op":"get","socket":S,"key":K,"identity":I}              -> {"hit":true,"value":B64} | {"hit":false,"value":null}
    errors                                                   -> {"error":{"code":C,"message":M}}
A missing program (or toolchain) FAILS its pairs: nothing here is skipped.

    python3 -m pytest clients/conformance/test_interop.py -q
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "clients" / "python"))
sys.path.insert(0, str(HERE))

from conformance import Harness, default_binary  # noqa: E402
from redis_cache import CacheClient, Connection  # noqa: E402
from redis_cache._base import decode_value  # noqa: E402

CLIENTS = ["python", "swift", "node", "go", "php", "pyredis-cache"]
KEY = "Student"

BIN = bytes([0x00, 0xFF, 0xFE, 0x80, 0x41, 0x0A, 0x0D, 0x22, 0x5C, 0xC3])
VALUES: List[Tuple[str, bytes]] = [
    ("binary", BIN),
    ("all-bytes", bytes(range(256))),
    ("non-ascii", "héllo wörld ✓ 日本語 🚀 \u2028 \"quoted\" \\ tab\t new\nline".encode("utf-8")),
    ("empty", b""),
    ("one-mib", bytes((i * 7 + 3) % 256 for i in range(1 << 20))),
]


def identities(writer: int, reader: int) -> List[Any]:
    """Identities of one pair, apart from every other pair's: an integer, a negative one, a string."""
    base = 1000 + 100 * writer + 10 * reader
    return [base, -base, "ïd-%d-%d-ü" % (writer, reader)]


class ClientError(AssertionError):
    pass


# -- the clients ------------------------------------------------------------------------------------

class LineProgram:
    """An interop program: JSON request lines on stdin, one answer line each on stdout."""

    def __init__(self, name: str, argv: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)

    def request(self, message: Dict[str, Any]) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError as e:
            line = b""
            error: Optional[OSError] = e
        else:
            error = None
        if not line:
            self.stderr.seek(0)
            raise ClientError("%s exited (%s, %s); stderr:\n%s" % (self.name, self.proc.poll(), error,
                                                                    self.stderr.read().decode(errors="replace")[-2000:]))
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


class Adapter:
    """set(identity, bytes) and get(identity) -> bytes or None, for one client."""

    name = "?"

    def set(self, socket: str, identity: Any, value: bytes) -> None:
        raise NotImplementedError

    def get(self, socket: str, identity: Any) -> Optional[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ProgramAdapter(Adapter):
    def __init__(self, name: str, program: LineProgram, socket_of: Optional[str] = None) -> None:
        self.name = name
        self.program = program
        self.socket_of = socket_of  # pyredis-cache: Redis's socket, not the daemon's

    def set(self, socket: str, identity: Any, value: bytes) -> None:
        answer = self.program.request({"op": "set", "socket": self.socket_of or socket, "key": KEY,
                                       "identity": identity, "value": base64.b64encode(value).decode()})
        if answer != {"ok": True}:
            raise ClientError("%s set %r answered %s" % (self.name, identity, str(answer)[:300]))

    def get(self, socket: str, identity: Any) -> Optional[bytes]:
        answer = self.program.request({"op": "get", "socket": self.socket_of or socket, "key": KEY, "identity": identity})
        if "error" in answer or "hit" not in answer:
            raise ClientError("%s get %r answered %s" % (self.name, identity, str(answer)[:300]))
        if not answer["hit"]:
            return None
        return base64.b64decode(answer["value"], validate=True)

    def close(self) -> None:
        self.program.close()


class PythonAdapter(Adapter):
    name = "python"

    def _never(self, identity: Any) -> Any:
        raise ClientError("python: sync_func called for %r" % (identity,))

    def set(self, socket: str, identity: Any, value: bytes) -> None:
        if CacheClient(socket, KEY, self._never).set(identity, data=value) != 1:
            raise ClientError("python: set %r did not store" % (identity,))

    def get(self, socket: str, identity: Any) -> Optional[bytes]:
        result = Connection(socket).call("get", {"key": KEY, "identity": identity, "lease": False})
        return None if result.get("value") is None else decode_value(result)


class SwiftAdapter(Adapter):
    """cachectl, built on the Swift client (Sources/cachectl), one run per request."""

    name = "swift"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def _identity(self, identity: Any) -> List[str]:
        if isinstance(identity, str):
            return ["--string-identity", "--", KEY, identity]
        return ["--", KEY, str(identity)]

    def set(self, socket: str, identity: Any, value: bytes) -> None:
        proc = subprocess.run([self.binary, "set", "--socket", socket, "--json", "--base64", *self._identity(identity), "-"],
                              input=base64.b64encode(value), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if proc.returncode != 0 or json.loads(proc.stdout or b"null") != {"stored": True}:
            raise ClientError("cachectl set %r: status %d, %s %s" % (identity, proc.returncode, proc.stdout[:200],
                                                                    proc.stderr[:500]))

    def get(self, socket: str, identity: Any) -> Optional[bytes]:
        proc = subprocess.run([self.binary, "get", "--socket", socket, "--json", *self._identity(identity)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if proc.returncode not in (0, 1):
            raise ClientError("cachectl get %r: status %d, %s" % (identity, proc.returncode, proc.stderr[:500]))
        result = json.loads(proc.stdout)
        return None if result.get("value") is None else decode_value(result)


PYREDIS_CACHE_CLI = r'''
import base64, json, sys
from redis import ConnectionPool, UnixDomainSocketConnection
import redis_cache
from redis_cache import CacheClient
assert "site-packages" in redis_cache.__file__, redis_cache.__file__

class Miss(Exception):
    pass

def sync_func(identity, *args, **kwargs):
    raise Miss()

pools = {}
for line in sys.stdin:
    r = json.loads(line)
    pool = pools.get(r["socket"])
    if pool is None:
        pool = pools[r["socket"]] = ConnectionPool(connection_class=UnixDomainSocketConnection, path=r["socket"])
    cache = CacheClient(pool, r["key"], sync_func)
    try:
        if r["op"] == "set":
            out = {"ok": cache.set(r["identity"], data=base64.b64decode(r["value"])) == 1}
        else:
            try:
                out = {"hit": True, "value": base64.b64encode(cache.get(r["identity"])).decode()}
            except Miss:
                out = {"hit": False, "value": None}
    except Exception as e:
        out = {"error": {"code": None, "message": repr(e)}}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
'''


def pyredis_cache_python() -> Path:
    """The venv of clients/python/tests/test_interop.py (made there the same way when missing)."""
    venv = Path(os.environ.get("CACHED_INTEROP_VENV") or REPO / "clients" / "python" / ".venv-interop")
    python = venv / "bin" / "python"
    marker = venv / ".pyredis-cache-0.1.3-installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "pyredis-cache==0.1.3", "redis", "hiredis"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        if proc.returncode != 0:
            raise ClientError("cannot install pyredis-cache 0.1.3 into %s:\n%s" % (venv, proc.stdout.decode()[-3000:]))
        marker.write_text("ok\n")
    return python


def make_adapter(name: str, workdir: Path, redis_socket: str) -> Adapter:
    """The client ``name``; raises ClientError (failing its pairs) when it cannot be started."""
    if name == "python":
        return PythonAdapter()
    if name == "swift":
        cachectl = os.environ.get("CACHECTL_BIN") or str(Path(default_binary()).parent / "cachectl")
        if not os.access(cachectl, os.X_OK):
            raise ClientError("cachectl not found at %s (swift build --product cachectl, or set CACHECTL_BIN)" % cachectl)
        return SwiftAdapter(cachectl)
    if name == "node":
        script = REPO / "clients" / "node" / "test" / "interop-cli.js"
        if not script.exists() or shutil.which("node") is None:
            raise ClientError("the Node interop program is missing: node %s" % script)
        return ProgramAdapter(name, LineProgram(name, ["node", str(script)], REPO))
    if name == "go":
        source = REPO / "clients" / "go" / "cmd" / "cached-interop"
        if not source.is_dir() or shutil.which("go") is None:
            raise ClientError("the Go interop program is missing: %s (or no go toolchain)" % source)
        binary = workdir / "cached-interop"
        env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOCACHE=str(workdir / "gocache"))
        env.setdefault("GOPATH", str(workdir / "gopath"))
        proc = subprocess.run(["go", "build", "-o", str(binary), "./cmd/cached-interop"], cwd=REPO / "clients" / "go",
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        if proc.returncode != 0:
            raise ClientError("go build ./cmd/cached-interop failed:\n%s" % proc.stdout.decode(errors="replace")[-3000:])
        return ProgramAdapter(name, LineProgram(name, [str(binary)], REPO))
    if name == "php":
        script = REPO / "clients" / "php" / "tests" / "interop-cli.php"
        if not script.exists() or shutil.which("php") is None:
            raise ClientError("the PHP interop program is missing: php %s" % script)
        return ProgramAdapter(name, LineProgram(name, ["php", str(script)], REPO))
    if name == "pyredis-cache":
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        program = LineProgram(name, [str(pyredis_cache_python()), "-c", PYREDIS_CACHE_CLI], workdir, env)
        return ProgramAdapter(name, program, socket_of=redis_socket)
    raise AssertionError(name)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    binary = default_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail("cached binary not found at %s (swift build, or set CACHED_BIN)" % binary)
    h = Harness("redis", binary)
    yield h
    h.close()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cfi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def adapters(harness: Harness, workdir: Path) -> Iterator[Dict[str, Any]]:
    """Every client, started once; a client that cannot start maps to its ClientError."""
    made: Dict[str, Any] = {}
    assert harness.redis_socket is not None
    for name in CLIENTS:
        try:
            made[name] = make_adapter(name, workdir, harness.redis_socket)
        except (ClientError, OSError, subprocess.SubprocessError) as e:
            made[name] = e
    yield made
    for adapter in made.values():
        if isinstance(adapter, Adapter):
            adapter.close()


def client(adapters: Dict[str, Any], name: str) -> Adapter:
    adapter = adapters[name]
    if not isinstance(adapter, Adapter):
        pytest.fail("client %s cannot run: %s" % (name, adapter))
    return adapter  # type: ignore[no-any-return]


PAIRS = [pytest.param(w, r, id="%s-writes-%s-reads" % (w, r)) for w in CLIENTS for r in CLIENTS]


@pytest.mark.parametrize("writer,reader", PAIRS)
def test_value_written_by_one_client_is_read_identically_by_another(
        writer: str, reader: str, harness: Harness, adapters: Dict[str, Any]) -> None:
    w, r = client(adapters, writer), client(adapters, reader)
    socket = harness.socket
    wrote: List[Tuple[Any, str, bytes]] = []
    for identity in identities(CLIENTS.index(writer), CLIENTS.index(reader)):
        if isinstance(identity, str) and "pyredis-cache" in (writer, reader):
            continue  # pyredis-cache formats identities with %010d: no string identities there
        for n, (label, value) in enumerate(VALUES):
            ident = identity * 10 + n if isinstance(identity, int) else "%s-%d" % (identity, n)
            w.set(socket, ident, value)
            wrote.append((ident, label, value))
    problems = []
    for ident, label, value in wrote:
        got = r.get(socket, ident)
        if got != value:
            problems.append("%s (identity %r): %s wrote %d bytes, %s read %s" % (
                label, ident, writer, len(value), reader,
                "a miss" if got is None else "%d bytes %r" % (len(got), got[:40])))
    # Also straight in Redis, for the integer identities: the pyredis-cache layout, byte for byte.
    for ident, label, value in wrote:
        if isinstance(ident, int):
            name = "000STUDENT#%010d" % ident
            reply = harness.command("redis", args=["GET", name])["reply"]
            if reply is None or base64.b64decode(reply["base64"]) != value:
                problems.append("%s (identity %r): Redis key %s does not hold the %d bytes %s wrote"
                                % (label, ident, name, len(value), writer))
    assert not problems, "\n".join(problems)
