#!/usr/bin/env python3
"""What the staleness bound cannot give (docs/reliability.md, "Every topology"): a Sentinel failover while
`cached` can still reach the old master.

Starts a master, a replica and three Sentinels on free loopback ports (the replica and the Sentinels as the
user `nobody`), and a `cached` (root) with `redis-sentinel://` and `max_staleness = 0.5`. An entry is read
through the daemon (a local hit), then iptables drops every packet that `nobody`'s processes send to the
master: the Sentinels and the replica lose it, the daemon does not. Once a Sentinel names the replica, a new
value is written on it, and the daemon is watched:

- case `sentinels-reachable`: the daemon hears `+switch-master` and moves; the figure is how long after the
  write on the new master it still answered the old master's value;
- case `daemon-cut-off`: the daemon's own packets to the Sentinels are dropped too (it is on the old
  master's side of the partition); the figure is how long it kept answering the old value (watched 10 s).

Loopback only; every rule is tagged and removed in a `finally`. Needs root. Not part of `make test`:
`python3 scripts/measure/sentinel_partition.py [--bin .build/debug/cached]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TAG = "cached-measure-%d" % os.getpid()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5).stdout.strip()


class Rules:
    def __init__(self) -> None:
        self.rules: list[list[str]] = []

    def add(self, rule: list[str]) -> None:
        full = rule + ["-m", "comment", "--comment", TAG, "-j", "DROP"]
        subprocess.run(["iptables", "-w", "-I", "OUTPUT", *full], check=True)
        self.rules.append(full)

    def clear(self) -> None:
        for rule in reversed(self.rules):
            subprocess.run(["iptables", "-w", "-D", "OUTPUT", *rule])
        self.rules.clear()


def daemon_call(path: str, method: str, params: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(path)
        s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def value(path: str) -> object:
    try:
        return daemon_call(path, "get", {"key": "Student", "identity": 1}).get("result", {}).get("value")
    except (OSError, ValueError):
        return None


def run_case(binary: str, case: str) -> dict:
    d = tempfile.mkdtemp(prefix="cached-partition-")
    os.chmod(d, 0o777)
    procs: list[subprocess.Popen] = []
    rules = Rules()
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    try:
        pm, pr = free_port(), free_port()
        sentinels = [free_port() for _ in range(3)]
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        procs.append(subprocess.Popen(["redis-server", "--port", str(pm), "--dir", d, *base], stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(nobody + ["redis-server", "--port", str(pr), "--dir", d, "--replicaof", "127.0.0.1", str(pm), *base],
                                      stdout=subprocess.DEVNULL))
        for i, sp in enumerate(sentinels):
            conf = os.path.join(d, "sentinel-%d.conf" % i)
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n" % (sp, d, pm))
            os.chmod(conf, 0o666)
            procs.append(subprocess.Popen(nobody + ["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL))
        time.sleep(2.5)
        config = os.path.join(d, "cached.toml")
        with open(config, "w") as f:
            f.write("[local_cache]\nmax_staleness = 0.5\n[keys.Student]\nttl = 600\n")
        sock = os.path.join(d, "cached.sock")
        url = "redis-sentinel://" + ",".join("127.0.0.1:%d" % p for p in sentinels) + "/mymaster"
        procs.append(subprocess.Popen([binary, "--config", config, "--socket", sock, "--redis", url],
                                      stdout=open(os.path.join(d, "cached.log"), "w"), stderr=subprocess.STDOUT))
        cli(pm, "SET", "000STUDENT#0000000001", "old")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and value(sock) != "old":
            time.sleep(0.1)
        for _ in range(3):
            value(sock)  # a local hit now
        rules.add(["-m", "owner", "--uid-owner", "nobody", "-p", "tcp", "-d", "127.0.0.1", "--dport", str(pm)])
        if case == "daemon-cut-off":
            for sp in sentinels:
                rules.add(["-m", "owner", "--uid-owner", "0", "-p", "tcp", "-d", "127.0.0.1", "--dport", str(sp)])
        cut = time.monotonic()
        promoted = None
        while time.monotonic() < cut + 20:
            if cli(pr, "ROLE").startswith("master"):
                promoted = time.monotonic()
                break
            time.sleep(0.02)
        if promoted is None:
            return {"case": case, "error": "no promotion within 20 s"}
        cli(pr, "SET", "000STUDENT#0000000001", "new")
        written = time.monotonic()
        last_old = None
        old = 0
        first_new = None
        while time.monotonic() < written + 10:
            v = value(sock)
            if v == "old":
                old += 1
                last_old = time.monotonic() - written
            elif v == "new" and first_new is None:
                first_new = time.monotonic() - written
                if case == "sentinels-reachable":
                    break
            time.sleep(0.005)
        return {"case": case, "promotion_after_cut_s": round(promoted - cut, 3),
                "old_answers_after_write": old, "last_old_after_write_ms": None if last_old is None else round(last_old * 1000, 1),
                "first_new_after_write_ms": None if first_new is None else round(first_new * 1000, 1), "watched_s": 10}
    finally:
        rules.clear()
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "..", ".build", "debug", "cached"))
    a = ap.parse_args()
    if os.getuid() != 0:
        print("needs root (iptables)", file=sys.stderr)
        return 2
    for case in ("sentinels-reachable", "daemon-cut-off"):
        print(json.dumps(run_case(os.path.abspath(a.bin), case)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
