"""Interop with the real pyredis-cache 0.1.3, run in its own virtual environment.

The venv is made once (``python3 -m venv`` + ``pip install pyredis-cache==0.1.3 redis hiredis``)
under ``clients/python/.venv-interop`` (ignored by git), or ``$CACHED_INTEROP_VENV``. Set
``CACHED_SKIP_INTEROP=1`` to skip these tests where PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from helpers import CLIENT_ROOT, Daemon, RedisServer, Resp
from redis_cache import CacheClient, HashCacheClient

SCRIPT = r'''
import json, sys
from redis import ConnectionPool, UnixDomainSocketConnection
import redis_cache
from redis_cache import CacheClient, HashCacheClient
assert "site-packages" in redis_cache.__file__, redis_cache.__file__

pool = ConnectionPool(connection_class=UnixDomainSocketConnection, path=sys.argv[1])
def sync_func(identity, *args, **kwargs):
    return {"from": "pyredis-cache", "id": identity}
cache = CacheClient(pool, "Interop", sync_func, set_func=json.dumps, get_func=json.loads)
hcache = HashCacheClient(pool, "Klass", "Interop", sync_func, set_func=json.dumps, get_func=json.loads)
out = []
for op in json.loads(sys.argv[2]):
    name, args = op[0], op[1:]
    if name == "set":
        out.append(cache.set(args[0], data=args[1]))
    elif name == "get":
        out.append(cache.get(args[0]))
    elif name == "hset":
        out.append(hcache.set(args[0], args[1], data=args[2]))
    elif name == "hget":
        out.append(hcache.get(args[0], args[1]))
print(json.dumps(out))
'''


@pytest.fixture(scope="session")
def interop_python() -> Path:
    if os.environ.get("CACHED_SKIP_INTEROP") == "1":
        pytest.skip("CACHED_SKIP_INTEROP=1")
    venv = Path(os.environ.get("CACHED_INTEROP_VENV") or CLIENT_ROOT / ".venv-interop")
    python = venv / "bin" / "python"
    marker = venv / ".pyredis-cache-0.1.3-installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "pyredis-cache==0.1.3", "redis", "hiredis"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        if proc.returncode != 0:
            pytest.fail("cannot install pyredis-cache 0.1.3 into %s (set CACHED_SKIP_INTEROP=1 "
                        "where PyPI is unreachable):\n%s" % (venv, proc.stdout.decode()[-3000:]))
        marker.write_text("ok\n")
    return python


def run_pyredis_cache(python: Path, redis_socket: str, ops: List[Any], cwd: Path) -> List[Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(python), "-c", SCRIPT, redis_socket, json.dumps(ops)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_pyredis_cache_writes_shim_reads(interop_python: Path, redis_server: RedisServer, cached: Daemon,
                                         redis: Resp, sockdir: Path) -> None:
    written = run_pyredis_cache(interop_python, redis_server.socket, [
        ["set", 12, {"name": "written by pyredis-cache"}],
        ["hset", 3, 12, {"name": "hash written by pyredis-cache"}],
        ["get", 40],  # a miss filled by pyredis-cache's own sync_func
    ], sockdir)
    assert written == [1, 1, {"from": "pyredis-cache", "id": 40}]
    assert redis("EXISTS", "000INTEROP#0000000012") == 1

    def never(identity: Any) -> Any:
        raise AssertionError("should have been a hit for %r" % identity)

    cache = CacheClient(cached.socket, "Interop", never, set_func=json.dumps, get_func=json.loads)
    hcache = HashCacheClient(cached.socket, "Klass", "Interop", never, set_func=json.dumps, get_func=json.loads)
    assert cache.get(12) == {"name": "written by pyredis-cache"}
    assert cache.get(40) == {"from": "pyredis-cache", "id": 40}
    assert hcache.get(3, 12) == {"name": "hash written by pyredis-cache"}


def test_shim_writes_pyredis_cache_reads(interop_python: Path, redis_server: RedisServer, cached: Daemon,
                                         redis: Resp, sockdir: Path) -> None:
    def sync_func(identity: Any) -> Any:
        return {"from": "shim", "id": identity}

    cache = CacheClient(cached.socket, "Interop", sync_func, set_func=json.dumps, get_func=json.loads)
    hcache = HashCacheClient(cached.socket, "Klass", "Interop", sync_func, set_func=json.dumps,
                             get_func=json.loads)
    assert cache.set(13, data={"name": "written by the shim"}) == 1
    assert cache.get(41) == {"from": "shim", "id": 41}  # a miss filled through the daemon
    assert hcache.set(3, 13, data={"name": "hash written by the shim"}) == 1
    assert hcache.get(4, 42) == {"from": "shim", "id": 42}

    read = run_pyredis_cache(interop_python, redis_server.socket,
                             [["get", 13], ["get", 41], ["hget", 3, 13], ["hget", 4, 42]], sockdir)
    assert read == [{"name": "written by the shim"}, {"from": "shim", "id": 41},
                    {"name": "hash written by the shim"}, {"from": "shim", "id": 42}]
