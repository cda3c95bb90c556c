#!/usr/bin/env python3
"""Sync handler of the Go client's tests: identity N > 0 answers "handled:N", 0 no entry, -1 fails,
-2 sleeps past the handler's timeout; a string identity s answers "handled:s"."""
import json
import sys
import time

for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    identity = request["params"]["identity"]
    answer = {"jsonrpc": "2.0", "id": request["id"]}
    if identity == 0:
        answer["result"] = None
    elif identity == -1:
        answer["error"] = {"code": 1, "message": "worker.py: identity -1 fails"}
    else:
        if identity == -2:
            time.sleep(5)
        answer["result"] = "handled:%s" % (identity,)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
