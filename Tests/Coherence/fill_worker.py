#!/usr/bin/env python3
"""The sync handler of the coherence checker (docs/worker-protocol.md), standard library only.

Every answer is a new, unique value: ``F|<entry>|<pid>-<n>|<production instant>``, where ``<entry>`` is
the entry's Redis address (``000FILLED#0000000003``, or ``HASH/FIELD`` for a hash entry) and the
production instant is ``time.monotonic_ns()`` taken just before the answer is written, so the checker
knows the fill's write cannot have taken effect earlier. A short random pause (0 to 4 ms) before it
lets concurrent misses join the flight.

``--tag T`` makes the third part ``T.<pid>-<n>`` (the checker tags each daemon's workers ``d1``, ``d2``...,
so a value names the daemon that produced and stored it); ``--log PATH`` appends every value produced to
PATH, one a line (the checker counts the handler calls from it).
"""

import argparse
import json
import os
import random
import sys
import time


def address(name: str, identity: object) -> str:
    ident = identity if isinstance(identity, str) else "%010d" % int(str(identity))
    return name.zfill(10).upper() + "#" + ident


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="")
    ap.add_argument("--log", default="")
    a = ap.parse_args()
    pid = os.getpid()
    worker = "%s.%d" % (a.tag, pid) if a.tag else str(pid)
    log = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if a.log else -1
    n = 0
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        params = request["params"]
        entry = address(params["key"], params["identity"])
        if "hashKey" in params:
            entry = address(params["hashKey"], params["hashId"]) + "/" + entry
        time.sleep(random.random() * 0.004)
        n += 1
        value = "F|%s|%s-%d|%d" % (entry, worker, n, time.monotonic_ns())
        if log >= 0:
            os.write(log, (value + "\n").encode())
        out.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": value}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
