"""Heap allocations per get hit in a real daemon over a real Redis, counted by scripts/bench/malloc_counter.c
(preloaded into cached): warm the entries, then count the allocations of a run of N hits against an idle
stretch of the same length (timers and heartbeats), and answer (hits - idle) / N.

Used by test_allocations.py (the gate in `make test`) and by hand:
    python3 Tests/Allocations/allocations.py --bin .build/release/cached
"""

import argparse
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
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "conformance"))
from harness import Child, RedisServer, ping, wait_until  # noqa: E402

SHIM_SOURCE = ROOT / "scripts" / "bench" / "malloc_counter.c"
KEYS = 64


def build_shim(directory: Path) -> Path:
    out = directory / "malloc_counter.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out), str(SHIM_SOURCE), "-ldl"], check=True)
    return out


class Counted:
    """cached (with the counter preloaded) over a private redis-server."""

    def __init__(self, binary: Path, directory: Path, near: bool = False) -> None:
        self.dir = directory
        (directory / "redis").mkdir()
        self.redis = RedisServer(directory / "redis")
        self.redis.start()
        shim = build_shim(directory)
        self.count_file = directory / "allocations"
        config = directory / "cached.toml"
        config.write_text('log_level = "warning"\n[keys.Student]\nttl = 600\n')
        self.socket = str(directory / "cached.sock")
        env = dict(os.environ, LD_PRELOAD=str(shim), MALLOC_COUNTER_FILE=str(self.count_file))
        argv = [str(binary), "--config", str(config), "--socket", self.socket,
                "--redis", "unix://%s?db=0" % self.redis.socket]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(directory / "cached.log", "wb"))
        wait_until(lambda: os.path.exists(self.socket) and ping(self.socket), 30, "cached")

        self.dumps = 0

    def allocations(self) -> int:
        self.proc.send_signal(signal.SIGUSR2)
        self.dumps += 1

        def read() -> Optional[int]:
            try:
                seq, count = self.count_file.read_text().split()
            except (OSError, ValueError):
                return None
            return int(count) if int(seq) == self.dumps else None

        return wait_until(read, 5, "the allocation counter")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.redis.stop(keep_data=False)


def get_lines(n: int, start_id: int) -> bytes:
    return b"".join(
        b'{"jsonrpc":"2.0","id":%d,"method":"get","params":{"key":"Student","identity":%d}}\n' % (start_id + i, i % KEYS)
        for i in range(n))


def run_gets(sock: socket.socket, n: int, depth: int = 16) -> None:
    """n gets, `depth` lines per write (pipelined, as a busy web worker pool would send them)."""
    reader = sock.makefile("rb")
    sent = 0
    while sent < n:
        k = min(depth, n - sent)
        sock.sendall(get_lines(k, sent))
        for _ in range(k):
            answer = json.loads(reader.readline())
            if "result" not in answer or not answer["result"].get("hit"):
                raise RuntimeError("not a hit: %s" % answer)
        sent += k


def measure(binary: Path, n: int = 20000, rounds: int = 3) -> Dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="cached-alloc-"))
    daemon = Counted(binary, directory)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(daemon.socket)
            setter = s.makefile("rb")
            for i in range(KEYS):
                s.sendall(b'{"jsonrpc":"2.0","id":%d,"method":"set","params":{"key":"Student","identity":%d,"value":"{\\"name\\":\\"student %d\\"}"}}\n' % (i, i, i))
                assert json.loads(setter.readline())["result"]["stored"]
            run_gets(s, 4 * KEYS * 16)  # every entry read into the daemon's memory, the paths warm
            per_get: List[float] = []
            at_start = daemon.allocations()
            for _ in range(rounds):
                a = daemon.allocations()
                t = time.monotonic()
                run_gets(s, n)
                elapsed = time.monotonic() - t
                b = daemon.allocations()
                time.sleep(elapsed)  # the same time idle: timers, heartbeats, the proof page
                c = daemon.allocations()
                per_get.append(((b - a) - (c - b)) / n)
        per_get.sort()
        return {"allocationsPerGetHit": per_get[len(per_get) // 2], "rounds": per_get, "gets": n,
                "allocationsBeforeTheRounds": at_start}
    finally:
        daemon.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", default=str(ROOT / ".build" / "debug" / "cached"))
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(json.dumps(measure(Path(a.bin), a.n, a.rounds), indent=1))


if __name__ == "__main__":
    main()
