#!/usr/bin/env python3
"""A sync-handler worker for the WorkerPool tests (docs/worker-protocol.md), stdlib only.

Usage: testworker.py [MODE]. The mode of one call is kwargs["mode"] if given, else MODE (default echo):
  echo          answers "<key>:<identity>:<args as JSON>:<kwargs as JSON, sorted>"
  slow          sleeps kwargs["delay"] seconds (default 0.5), then answers "slow:<identity>:<pid>"
  null          answers null
  error         answers a JSON-RPC error {"code": 7, "message": "origin said no"}
  binary        answers bytes 00 ff fe 80 41 as {"value": <base64>, "encoding": "base64"}
  object        answers {"value": "<identity>"} (no encoding: UTF-8)
  crash         exits with status 3 in the middle of the call
  hang          never answers
  garbage       writes a line that is not JSON
  huge-line     writes a line of kwargs["bytes"] (default 2 MB) "x" bytes, then a newline
  wrong-id      answers with an id that is not the request's
  unsolicited   answers, then writes an extra answer nobody asked for
  stderr-flood  writes kwargs["mb"] (default 100) MB to stderr, then answers "flooded"
  counter       appends a line to the file $COUNTER_FILE, answers "<pid>"
  env           answers the value of the variable kwargs["name"] ("<unset>" if unset)
  cwd           answers the working directory
  pid           answers the worker's pid
  exit-at-start (as MODE only) exits with status 1 before reading anything
"""
import base64
import json
import os
import sys
import time

default_mode = sys.argv[1] if len(sys.argv) > 1 else "echo"
if default_mode == "exit-at-start":
    sys.stderr.write("exit-at-start: bye\n")
    sys.exit(1)

out = sys.stdout


def send(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()


for line in sys.stdin:
    request = json.loads(line)
    rid = request["id"]
    params = request["params"]
    kwargs = params.get("kwargs", {})
    mode = kwargs.get("mode", default_mode)
    identity = params["identity"]
    if mode == "echo":
        value = "%s:%s:%s:%s" % (params["key"], identity, json.dumps(params.get("args", [])),
                                 json.dumps(kwargs, sort_keys=True))
        if "hashKey" in params:
            value += ":%s:%s" % (params["hashKey"], params["hashId"])
        send({"jsonrpc": "2.0", "id": rid, "result": value})
    elif mode == "slow":
        time.sleep(float(kwargs.get("delay", 0.5)))
        send({"jsonrpc": "2.0", "id": rid, "result": "slow:%s:%d" % (identity, os.getpid())})
    elif mode == "null":
        send({"jsonrpc": "2.0", "id": rid, "result": None})
    elif mode == "error":
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": 7, "message": "origin said no"}})
    elif mode == "binary":
        data = base64.b64encode(bytes([0x00, 0xFF, 0xFE, 0x80, 0x41])).decode()
        send({"jsonrpc": "2.0", "id": rid, "result": {"value": data, "encoding": "base64"}})
    elif mode == "object":
        send({"jsonrpc": "2.0", "id": rid, "result": {"value": str(identity)}})
    elif mode == "crash":
        os._exit(3)
    elif mode == "hang":
        while True:
            time.sleep(60)
    elif mode == "garbage":
        out.write("this is not json\n")
        out.flush()
    elif mode == "huge-line":
        n = int(kwargs.get("bytes", 2 * 1024 * 1024))
        chunk = "x" * 65536
        while n > 0:
            out.write(chunk[: min(n, len(chunk))])
            n -= len(chunk)
        out.write("\n")
        out.flush()
    elif mode == "wrong-id":
        send({"jsonrpc": "2.0", "id": rid + 1000, "result": "wrong"})
    elif mode == "unsolicited":
        send({"jsonrpc": "2.0", "id": rid, "result": "first"})
        send({"jsonrpc": "2.0", "id": rid, "result": "again"})
    elif mode == "stderr-flood":
        mb = int(kwargs.get("mb", 100))
        block = ("e" * 1023 + "\n") * 1024
        for _ in range(mb):
            sys.stderr.write(block)
        sys.stderr.flush()
        send({"jsonrpc": "2.0", "id": rid, "result": "flooded"})
    elif mode == "counter":
        with open(os.environ["COUNTER_FILE"], "a") as f:
            f.write("%d\n" % os.getpid())
        send({"jsonrpc": "2.0", "id": rid, "result": str(os.getpid())})
    elif mode == "env":
        send({"jsonrpc": "2.0", "id": rid, "result": os.environ.get(kwargs["name"], "<unset>")})
    elif mode == "cwd":
        send({"jsonrpc": "2.0", "id": rid, "result": os.getcwd()})
    elif mode == "pid":
        send({"jsonrpc": "2.0", "id": rid, "result": str(os.getpid())})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown mode %s" % mode}})
