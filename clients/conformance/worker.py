#!/usr/bin/env python3
"""The sync handler of the conformance suite's cached.toml (docs/worker-protocol.md), stdlib only.

Key Handled: identity N > 0 answers "handled:N"; 0 answers null (no such entry); -1 answers an
error ("handler failed for -1": clients get -32004); -2 sleeps 3.5 s, past the key's 2 s timeout
(clients get -32005); any other identity (a string, a negative below -2) answers "handled:<identity>".
Key Fresh: answers "fresh:<identity>".
"""
import json
import sys
import time


def load(key, identity):
    if key.lower() == "fresh":
        return "fresh:%s" % (identity,)
    if identity == 0:
        return None
    if identity == -1:
        raise RuntimeError("handler failed for -1")
    if identity == -2:
        time.sleep(3.5)
    return "handled:%s" % (identity,)


out = sys.stdout
for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    params = request.get("params", {})
    try:
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": load(params.get("key", ""), params.get("identity"))}
    except Exception as error:
        answer = {"jsonrpc": "2.0", "id": request["id"], "error": {"code": 1, "message": str(error)}}
    out.write(json.dumps(answer) + "\n")
    out.flush()
