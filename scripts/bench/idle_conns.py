"""Opens N idle connections to the daemon and holds them.

Each connection sends one ping and reads its answer (so the daemon has accepted it), then stays
idle. When all are up it writes READY_FILE, and holds them until STOP_FILE exists or --hold passes.
"""

import argparse
import json
import os
import selectors
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--hold", type=float, default=120.0)
    args = p.parse_args()

    sockets = []
    failures = 0
    first_error = None
    ping = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    for _ in range(args.connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(args.socket)
            s.sendall(ping)
        except OSError as e:
            failures += 1
            first_error = first_error or repr(e)
            s.close()
            continue
        s.setblocking(False)
        sockets.append(s)
        sel.register(s, selectors.EVENT_READ, bytearray())
    answered = 0
    refused = 0
    deadline = time.monotonic() + 60
    pending = len(sockets)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            buf = key.data
            try:
                chunk = key.fileobj.recv(4096)
            except OSError as e:
                chunk = b""
                first_error = first_error or repr(e)
            if chunk:
                buf.extend(chunk)
            if b"\n" in buf or not chunk:
                sel.unregister(key.fileobj)
                pending -= 1
                if b'"pong"' in buf:
                    answered += 1
                else:
                    refused += 1
                    first_error = first_error or bytes(buf[:200]).decode("utf-8", "replace")
    report = {
        "requested": args.connections, "connected": len(sockets), "answered": answered, "refused": refused,
        "connectFailures": failures, "firstError": first_error, "seconds": round(time.monotonic() - t0, 3),
    }
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(args.ready_file + ".tmp", args.ready_file)
    end = time.monotonic() + args.hold
    while time.monotonic() < end and not os.path.exists(args.stop_file):
        time.sleep(0.05)
    for s in sockets:
        s.close()


if __name__ == "__main__":
    sys.exit(main())
