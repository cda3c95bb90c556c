from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the shim, without installing it
sys.path.insert(0, str(HERE))

from fake_daemon import FakeDaemon  # noqa: E402
from helpers import Daemon, RedisServer, Resp, daemon_binary  # noqa: E402

_counter = itertools.count()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Short: a Unix socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="cpy-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sockdir(workdir: Path) -> Path:
    path = workdir / ("t%d" % next(_counter))
    path.mkdir()
    return path


@pytest.fixture
def fake(sockdir: Path) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(str(sockdir / "fake.sock"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def daemon_bin() -> Path:
    binary = daemon_binary()
    if not os.access(binary, os.X_OK):
        message = "cached binary not found at %s (run `swift build` in the repo root, or set CACHED_BIN)" % binary
        if os.environ.get("CACHED_ALLOW_MISSING_DAEMON") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return binary


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Resp]:
    """A RESP client on the session's private Redis, emptied for each test."""
    client = redis_server.client()
    client("FLUSHALL")
    yield client
    client.close()


@pytest.fixture
def cached(daemon_bin: Path, redis_server: RedisServer, redis: Resp, sockdir: Path) -> Iterator[Daemon]:
    """A fresh cached daemon on the (emptied) private Redis."""
    daemon = Daemon(daemon_bin, sockdir, redis_server.url)
    yield daemon
    daemon.stop()
