#!/usr/bin/env python3
"""The conformance suite's harness (clients/conformance/README.md), Python 3.11 standard library only.

    python3 clients/conformance/harness.py --store embedded|redis [--bin PATH_TO_CACHED]

Starts a private redis-server (for ``--store redis``: Unix socket in a short temp dir under /tmp, port
0) and a real ``cached`` with ``cached.toml`` (run in this directory, so the handler ``worker.py`` is
found), prints one JSON line when the daemon answers ``ping``, then obeys one JSON command per stdin
line, answering each with one JSON line. Everything it started is stopped, and its temp dir removed,
on ``quit``, on EOF of stdin, and on SIGTERM/SIGINT/SIGHUP; its children also get SIGKILL should the
harness itself be killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CONFIG = HERE / "cached.toml"

# ---------------------------------------------------------------------------------------------------
# Processes


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the harness dies, whatever kills it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass
    os.setsid()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)


class Child:
    def __init__(self, argv: List[str], log_path: Path, cwd: Optional[Path] = None) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=cwd, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the daemon and its workers
            except OSError:
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        except OSError:
            pass
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------------
# Redis


class RedisReplyError(Exception):
    pass


class Resp:
    """Just enough RESP2 to run a command and read its reply."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")

    def close(self) -> None:
        for c in (self.f, self.sock):
            try:
                c.close()
            except OSError:
                pass

    def command(self, args: List[bytes]) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return ("status", rest.decode("utf-8", "replace"))
        if kind == b"-":
            return ("error", rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError("unexpected reply %r" % line[:100])


def reply_json(reply: Any) -> Any:
    """A RESP reply as the README's JSON: bulk strings as {"base64"}, status/error objects."""
    if isinstance(reply, tuple):
        return {reply[0]: reply[1]}
    if isinstance(reply, bytes):
        return {"base64": base64.b64encode(reply).decode("ascii")}
    if isinstance(reply, list):
        return [reply_json(r) for r in reply]
    return reply  # None, int


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = str(directory / "redis.sock")
        self.child: Optional[Child] = None
        self.conn: Optional[Resp] = None

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        # No save points: the data survives stopRedis because stop() runs SAVE first (dump.rdb in dir).
        self.child = Child([exe, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir),
                            "--dbfilename", "dump.rdb"], self.dir / "redis.log")
        wait_until(self._ready, 10, "redis-server at %s" % self.socket)

    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def _ready(self) -> bool:
        assert self.child is not None
        if not self.child.alive():
            raise RuntimeError("redis-server exited:\n" + self.child.output())
        if not os.path.exists(self.socket):
            return False
        try:
            r = Resp(self.socket, 1.0)
        except OSError:
            return False
        try:
            return r.command([b"PING"]) == ("status", "PONG")
        except (OSError, ConnectionError):
            return False
        finally:
            r.close()

    def command(self, args: List[bytes]) -> Any:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = Resp(self.socket)
            try:
                return self.conn.command(args)
            except (OSError, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stop(self, keep_data: bool = True) -> None:
        if self.conn is not None:
            if keep_data and self.running():
                try:
                    self.conn.command([b"SAVE"])
                except (OSError, ConnectionError):
                    pass
            self.conn.close()
            self.conn = None
        if self.child is not None:
            self.child.stop()
            self.child = None


# ---------------------------------------------------------------------------------------------------
# The daemon


def ping(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
            return bool(json.loads(s.makefile("rb").readline()).get("result") == "pong")
    except (OSError, ValueError):
        return False


def rpc(path: str, method: str, params: Optional[dict] = None) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(path)
        message = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            message["params"] = params
        s.sendall(json.dumps(message).encode() + b"\n")
        return json.loads(s.makefile("rb").readline())


class Daemon:
    def __init__(self, binary: Path, directory: Path, store: str, redis: Optional[RedisServer]) -> None:
        self.binary = binary
        self.dir = directory
        self.socket = str(directory / "cached.sock")
        self.redis = redis
        self.child: Optional[Child] = None
        # The embedded store cannot serve stale_ttl (it needs Redis's PTTL): lines marked redis-only go.
        lines = CONFIG.read_text().splitlines(keepends=True)
        if store != "redis":
            lines = [line for line in lines if "redis-only" not in line]
        self.config = directory / "cached.toml"
        self.config.write_text("".join(lines).replace("@UID@", str(os.getuid())))
        self.starts = 0

    def start(self) -> None:
        argv = [str(self.binary), "--config", str(self.config), "--socket", self.socket]
        if self.redis is not None:
            argv += ["--redis", "unix://%s?db=0" % self.redis.socket]  # as clients/python/tests/helpers.py
        self.starts += 1
        self.child = Child(argv, self.dir / "cached.log", cwd=HERE)
        try:
            wait_until(self._ready, 20, "cached at %s" % self.socket)
        except BaseException:
            self.child.kill()
            raise

    def _ready(self) -> bool:
        assert self.child is not None
        if not self.child.alive():
            raise RuntimeError("cached exited (%s):\n%s" % (self.child.proc.returncode, self.child.output()))
        return os.path.exists(self.socket) and ping(self.socket)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def store_available(self) -> bool:
        try:
            answer = rpc(self.socket, "stats")
            return bool(answer["result"]["store"]["available"])
        except (OSError, ValueError, KeyError, TypeError):
            return False


# ---------------------------------------------------------------------------------------------------
# The harness


class Harness:
    def __init__(self, store: str, binary: Path) -> None:
        self.store = store
        # Short: a Unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
        self.redis: Optional[RedisServer] = None
        if store == "redis":
            self.redis = RedisServer(self.dir)
        self.daemon = Daemon(binary, self.dir, store, self.redis)

    def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
        self.daemon.start()

    def close(self) -> None:
        try:
            self.daemon.stop()
        finally:
            try:
                if self.redis is not None:
                    self.redis.stop(keep_data=False)
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    def ready_line(self) -> dict:
        return {"socket": self.daemon.socket, "store": self.store,
                "redisSocket": self.redis.socket if self.redis is not None else None}

    def need_redis(self) -> RedisServer:
        if self.redis is None:
            raise RuntimeError("the embedded store has no Redis")
        return self.redis

    # Commands ---------------------------------------------------------------------------------------

    def cmd_reset(self, _: dict) -> dict:
        self.daemon.stop()
        if self.redis is not None:
            if not self.redis.running():
                self.redis.start()
            self.redis.command([b"FLUSHALL"])
        self.daemon.start()
        return {"ok": True}

    def cmd_restart(self, _: dict) -> dict:
        self.daemon.stop()
        self.daemon.start()
        if self.redis is not None and self.redis.running():
            wait_until(self.daemon.store_available, 10, "the daemon's Redis connections")
        return {"ok": True}

    def cmd_redis(self, command: dict) -> dict:
        redis = self.need_redis()
        args = command.get("args")
        if not isinstance(args, list) or not args:
            raise ValueError("redis: args must be a non-empty list")
        raw: List[bytes] = []
        for a in args:
            if isinstance(a, dict) and "base64" in a:
                raw.append(base64.b64decode(a["base64"]))
            elif isinstance(a, (str, int)) and not isinstance(a, bool):
                raw.append(str(a).encode("utf-8"))
            else:
                raise ValueError("redis: an argument must be a string, an integer or {\"base64\": ...}")
        return {"ok": True, "reply": reply_json(redis.command(raw))}

    def cmd_stopRedis(self, _: dict) -> dict:
        self.need_redis().stop(keep_data=True)
        # Answered once the daemon has seen Redis go (its connections closed): before that, a command sent
        # on a connection Redis is closing is -32002 (outcome unknown), not -32000, and cases would race it.
        wait_until(lambda: not self.daemon.store_available(), 10, "the daemon to see Redis stop")
        return {"ok": True}

    def cmd_startRedis(self, _: dict) -> dict:
        redis = self.need_redis()
        if not redis.running():
            redis.start()
        # Answered once the daemon is connected again, so that the next step does not race its backoff.
        wait_until(self.daemon.store_available, 10, "the daemon to reconnect to Redis")
        return {"ok": True}

    def run(self, stdin: Any, stdout: Any) -> None:
        for line in stdin:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                name = command.get("cmd") if isinstance(command, dict) else None
                if name == "quit":
                    self.close()
                    stdout.write(json.dumps({"ok": True}) + "\n")
                    stdout.flush()
                    return
                handler = getattr(self, "cmd_%s" % name, None) if isinstance(name, str) else None
                if handler is None:
                    answer = {"ok": False, "error": "unknown command %r" % (name,)}
                else:
                    answer = handler(command)
            except Exception as error:  # the harness keeps obeying; the runner sees what failed
                answer = {"ok": False, "error": "%s: %s" % (type(error).__name__, error)}
                if self.daemon.child is not None and not self.daemon.child.alive():
                    answer["error"] += "\ncached log:\n" + self.daemon.child.output()
            stdout.write(json.dumps(answer) + "\n")
            stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["embedded", "redis"], required=True)
    parser.add_argument("--bin", help="the cached binary (default: $CACHED_BIN, else .build/debug/cached)")
    options = parser.parse_args()
    binary = Path(options.bin or os.environ.get("CACHED_BIN") or REPO_ROOT / ".build" / "debug" / "cached")
    if not os.access(binary, os.X_OK):
        print(json.dumps({"ok": False, "error": "cached binary not found at %s" % binary}), flush=True)
        return 1

    harness = Harness(options.store, binary)

    def on_signal(signum: int, _frame: Any) -> None:
        harness.close()
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        try:
            harness.start()
        except Exception as error:
            print(json.dumps({"ok": False, "error": "%s: %s" % (type(error).__name__, error)}), flush=True)
            return 1
        print(json.dumps(harness.ready_line()), flush=True)
        harness.run(sys.stdin, sys.stdout)
    finally:
        harness.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
