#!/usr/bin/env python3
"""Example sync handler for the key "Student" (examples/cached.toml), standard library only.

cached starts this program (`workers` copies of it) and keeps it running. When a `get` of Student
misses, cached writes one JSON-RPC request line on our stdin and waits for one answer line on our
stdout (docs/worker-protocol.md):

    > {"jsonrpc":"2.0","id":1,"method":"sync","params":{"key":"Student","identity":12,"args":[],"kwargs":{}}}
    < {"jsonrpc":"2.0","id":1,"result":"{\"id\":12,\"name\":\"Ada Lovelace\",\"class\":3}"}

cached stores the value (with the key's ttl) and answers the client; the next `get` is a hit and does
not reach us. An identity we do not know is answered with `"result": null` ("no such entry"): the
client gets `value: null` and nothing is cached.
"""
import json
import sys
import time

# The "origin": a real handler would query a database or a service here.
STUDENTS = {
    12: {"name": "Ada Lovelace", "class": 3},
    13: {"name": "Alan Turing", "class": 3},
    14: {"name": "Grace Hopper", "class": 4},
}


def load(identity):
    """The value to cache for one identity, as text; None if there is no such student."""
    time.sleep(0.05)  # pretend the origin is slow (50 ms): the second get, a cache hit, is not
    student = STUDENTS.get(identity)  # the identity is exactly what the client sent: 12, not "12"
    if student is None:
        return None
    return json.dumps({"id": identity, **student}, separators=(",", ":"))


# One request at a time: read a line, answer it with exactly one line, flush. Stop at end of input
# (cached closes our stdin to stop us; SIGTERM also works, with Python's default handling).
for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    identity = request["params"]["identity"]
    try:
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": load(identity)}
    except Exception as error:  # a failure: the waiting clients get -32004 with this message
        answer = {"jsonrpc": "2.0", "id": request["id"], "error": {"code": 1, "message": str(error)}}
    # stdout is for answers only; logs go to stderr, which cached logs with the key and our pid.
    print("student.py: loaded Student %r" % (identity,), file=sys.stderr, flush=True)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
