"""Concurrent gets of one cold entry through a key with a sync handler.

PROCESSES processes each open PER_PROCESS connections to the daemon, wait at a common start
signal, then each connection sends one ``get`` of the same (never used) entry. Prints one JSON
object: answers, errors, distinct values, the waiters' latency (ms) from their own send, and
CLOCK_MONOTONIC stamps (ns) of the first send and of the first and last answer received, which
the caller sets against the handler's own start and end stamps.

``--socket`` may be given several times (several daemons): process i then talks to socket
i mod N, and the output adds ``perSocket``, the same figures for each socket's share.
"""

import argparse
import json
import os
import selectors
import socket
import sys
import time


def child(args, path, ready_w, go_r, out_w):
    conns = []
    for _ in range(args.per_process):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        conns.append(s)
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    req = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "get",
                      "params": {"key": args.key, "identity": args.identity}}).encode() + b"\n"
    sel = selectors.DefaultSelector()
    sent = {}
    for s in conns:
        sent[s.fileno()] = time.monotonic_ns()
        s.sendall(req)
        sel.register(s, selectors.EVENT_READ, bytearray())
    results = []
    pending = len(conns)
    deadline = time.monotonic() + args.timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            now = time.monotonic_ns()
            chunk = key.fileobj.recv(65536)
            key.data.extend(chunk)
            if b"\n" in key.data or not chunk:
                sel.unregister(key.fileobj)
                pending -= 1
                line = bytes(key.data).split(b"\n", 1)[0]
                results.append({"ms": (now - sent[key.fileobj.fileno()]) / 1e6,
                                "sentAt": sent[key.fileobj.fileno()], "receivedAt": now,
                                "answer": line.decode("utf-8", "replace"), "socket": path})
    results.extend({"ms": None, "answer": "timeout", "socket": path} for _ in range(pending))
    os.write(out_w, (json.dumps(results) + "\n").encode())


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", action="append", required=True, help="a daemon's socket; repeat for several daemons")
    p.add_argument("--key", default="Cold")
    p.add_argument("--identity", type=int, required=True)
    p.add_argument("--processes", type=int, default=50)
    p.add_argument("--per-process", type=int, default=20)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    outs = []
    for i in range(args.processes):
        # One pipe per child: a child's results are longer than PIPE_BUF, so shared-pipe writes could interleave.
        out_r, out_w = os.pipe()
        outs.append(out_r)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(go_w)
                for fd in outs:
                    os.close(fd)
                child(args, args.socket[i % len(args.socket)], ready_w, go_r, out_w)
            finally:
                os._exit(0)
        pids.append(pid)
        os.close(out_w)
    os.close(ready_w)
    os.close(go_r)
    ready = 0
    while ready < args.processes:
        b = os.read(ready_r, args.processes)
        if not b:
            break
        ready += len(b)
    start = time.monotonic_ns()
    os.write(go_w, b"g" * args.processes)
    # Drain every child's pipe as it writes (a full pipe would block the child).
    data = b""
    sel = selectors.DefaultSelector()
    for fd in outs:
        sel.register(fd, selectors.EVENT_READ)
    chunks = {fd: b"" for fd in outs}
    while sel.get_map():
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if chunk:
                chunks[key.fd] += chunk
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
    data = b"\n".join(chunks[fd] for fd in outs)
    for pid in pids:
        os.waitpid(pid, 0)
    results = []
    for line in filter(None, data.splitlines()):
        results.extend(json.loads(line))
    summary = summarize(results, start)
    summary.update({"requests": args.processes * args.per_process, "processesReady": ready})
    if len(args.socket) > 1:
        summary["perSocket"] = [summarize([r for r in results if r["socket"] == path], start) for path in args.socket]
    print(json.dumps(summary))


def summarize(results, start):
    ok = [r for r in results if r["answer"].startswith("{") and '"result"' in r["answer"]]
    values = set()
    hits = 0
    for r in ok:
        result = json.loads(r["answer"])["result"]
        values.add(json.dumps(result.get("value"), sort_keys=True))
        hits += result.get("hit") is True
    lat = sorted(r["ms"] for r in ok if r["ms"] is not None)
    first_send = min((r["sentAt"] for r in results if r.get("sentAt")), default=start)
    last_send = max((r["sentAt"] for r in results if r.get("sentAt")), default=start)
    errors = [r["answer"] for r in results if r not in ok]
    return {
        "answered": len(ok), "hits": hits,
        "errors": len(errors), "firstError": errors[0][:300] if errors else None, "distinctValues": len(values),
        "p50Ms": percentile(lat, 50), "p99Ms": percentile(lat, 99), "maxMs": lat[-1] if lat else None,
        "minMs": lat[0] if lat else None, "sendSpreadMs": (last_send - first_send) / 1e6,
        "firstSentAt": first_send,
        "firstReceivedAt": min((r["receivedAt"] for r in ok), default=None),
        "lastReceivedAt": max((r["receivedAt"] for r in ok), default=None),
    }


if __name__ == "__main__":
    main()
