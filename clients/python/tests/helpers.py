"""Test helpers: a tiny RESP client, and starting/stopping redis-server and the cached daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

HERE = Path(__file__).resolve().parent
CLIENT_ROOT = HERE.parent  # clients/python
REPO_ROOT = CLIENT_ROOT.parent.parent


def daemon_binary() -> Path:
    return Path(os.environ.get("CACHED_BIN") or REPO_ROOT / ".build" / "debug" / "cached")


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for %s" % what)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class RedisError(Exception):
    pass


class Resp:
    """Just enough of a Redis client to check what the daemon wrote (no redis-py needed)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def __call__(self, *args: Union[str, bytes, int]) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
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
        raise RedisError("unexpected reply %r" % line)


def ping_socket(path: str, timeout: float = 1.0) -> bool:
    """True if something on ``path`` answers a JSON-RPC ping with "pong"."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
            f = s.makefile("rb")
            answer = json.loads(f.readline())
            return bool(answer.get("result") == "pong")
    except (OSError, ValueError):
        return False


class Process:
    def __init__(self, argv: List[str], log_path: Path, env: Optional[dict] = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "redis.sock")
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = Process([exe, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                                "--save", "", "--appendonly", "no", "--daemonize", "no",
                                "--dir", str(self.dir)], self.dir / "redis.log")
        wait_until(self._ready, 10, "redis-server at %s" % self.socket)
        self.url = "unix://%s?db=0" % self.socket

    def _ready(self) -> bool:
        if not self.process.alive():
            raise RuntimeError("redis-server exited:\n" + self.process.output())
        if not os.path.exists(self.socket):
            return False
        try:
            r = Resp(self.socket)
            try:
                return bool(r("PING") == "PONG")
            finally:
                r.close()
        except OSError:
            return False

    def client(self) -> Resp:
        return Resp(self.socket)

    def stop(self) -> None:
        self.process.stop()


class Daemon:
    """The real cached binary on a private socket."""

    def __init__(self, binary: Path, workdir: Path, redis_url: Optional[str], name: str = "cached",
                 config: Optional[str] = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / (name + ".sock"))
        argv = [str(binary), "--socket", self.socket, "--log-level", "info"]
        if config is not None:
            config_path = workdir / (name + ".toml")
            config_path.write_text(config)
            argv += ["--config", str(config_path)]
        if redis_url is not None:
            argv += ["--redis", redis_url]
        self.process = Process(argv, workdir / (name + ".log"))
        try:
            wait_until(self._ready, 20, "cached at %s" % self.socket)
        except BaseException:
            self.process.stop(signal.SIGKILL)
            raise

    def _ready(self) -> bool:
        if not self.process.alive():
            raise RuntimeError("cached exited (%s):\n%s" % (self.process.proc.returncode, self.process.output()))
        return os.path.exists(self.socket) and ping_socket(self.socket)

    def stop(self) -> None:
        self.process.stop()
