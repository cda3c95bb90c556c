#!/usr/bin/env python3
"""A sync-handler worker for the daemon integration tests (docs/worker-protocol.md).

Behaviour comes from the environment, so one script serves every test:
  FILL_COUNTER  file to append one line to per call (counts handler calls across workers)
  FILL_DONE     file to append one line ("<FILL_VERSION> <pid>") to per call, after its answer is written
  FILL_DELAY    seconds to sleep per call (default 0)
  FILL_MODE     value (default): answers "<key>:<identity>:<args>:<kwargs>"
                null: answers null; error: answers a JSON-RPC error; crash: exits mid-call
                fail-once: the first call (per counter file) errors, later calls answer a value
                version: answers "v<FILL_VERSION>:<identity>"
                count: answers "c<n>", n = this call's number (per counter file: 1 for the first call)
                fail-after-first: the first call (per counter file) answers "c1", later calls error
"""
import fcntl
import json
import os
import sys
import time

counter = os.environ.get("FILL_COUNTER")
delay = float(os.environ.get("FILL_DELAY", "0"))
mode = os.environ.get("FILL_MODE", "value")
done = os.environ.get("FILL_DONE")


def count() -> int:
    if not counter:
        return 0
    # Under an exclusive lock, so calls in several workers (or daemons) at once get distinct numbers.
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("%d\n" % os.getpid())
        f.flush()
        f.seek(0)
        return sum(1 for _ in f)


for line in sys.stdin:
    request = json.loads(line)
    rid = request["id"]
    params = request["params"]
    n = count()
    if delay:
        time.sleep(delay)
    if mode == "crash":
        os._exit(3)
    if mode == "error" or (mode == "fail-once" and n == 1) or (mode == "fail-after-first" and n > 1):
        answer = {"jsonrpc": "2.0", "id": rid, "error": {"code": 7, "message": "origin said no"}}
    elif mode == "null":
        answer = {"jsonrpc": "2.0", "id": rid, "result": None}
    elif mode in ("count", "fail-after-first"):
        answer = {"jsonrpc": "2.0", "id": rid, "result": "c%d" % n}
    elif mode == "version":
        answer = {"jsonrpc": "2.0", "id": rid, "result": "v%s:%s" % (os.environ.get("FILL_VERSION", "0"), params["identity"])}
    else:
        value = "%s:%s:%s:%s" % (params["key"], params["identity"], json.dumps(params.get("args", [])), json.dumps(params.get("kwargs", {}), sort_keys=True))
        answer = {"jsonrpc": "2.0", "id": rid, "result": value}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    if done:
        with open(done, "a") as f:
            f.write("%s %d\n" % (os.environ.get("FILL_VERSION", "0"), os.getpid()))
