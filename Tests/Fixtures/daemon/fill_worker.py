#!/usr/bin/env python3
"""A sync-handler worker for the daemon integration tests (docs/worker-protocol.md).

Behaviour comes from the environment, so one script serves every test:
  FILL_COUNTER  file to append one line to per call (counts handler calls across workers)
  FILL_DELAY    seconds to sleep per call (default 0)
  FILL_MODE     value (default): answers "<key>:<identity>:<args>:<kwargs>"
                null: answers null; error: answers a JSON-RPC error; crash: exits mid-call
                fail-once: the first call (per counter file) errors, later calls answer a value
                version: answers "v<FILL_VERSION>:<identity>"
"""
import json
import os
import sys
import time

counter = os.environ.get("FILL_COUNTER")
delay = float(os.environ.get("FILL_DELAY", "0"))
mode = os.environ.get("FILL_MODE", "value")


def count() -> int:
    if not counter:
        return 0
    with open(counter, "a") as f:
        f.write("%d\n" % os.getpid())
    with open(counter) as f:
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
    if mode == "error" or (mode == "fail-once" and n == 1):
        answer = {"jsonrpc": "2.0", "id": rid, "error": {"code": 7, "message": "origin said no"}}
    elif mode == "null":
        answer = {"jsonrpc": "2.0", "id": rid, "result": None}
    elif mode == "version":
        answer = {"jsonrpc": "2.0", "id": rid, "result": "v%s:%s" % (os.environ.get("FILL_VERSION", "0"), params["identity"])}
    else:
        value = "%s:%s:%s:%s" % (params["key"], params["identity"], json.dumps(params.get("args", [])), json.dumps(params.get("kwargs", {}), sort_keys=True))
        answer = {"jsonrpc": "2.0", "id": rid, "result": value}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
