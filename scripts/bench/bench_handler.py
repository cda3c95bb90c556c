"""Sync handlers for the benchmark's handler keys (run by ``python -m redis_cache.worker``).

``cold`` sleeps ``$BENCH_HANDLER_SECONDS`` (default 0.2), then appends one line per call to
``$BENCH_COUNT_FILE`` (identity, start and end stamps) before answering, so the benchmark can count
calls and set the waiters' latency against the handler's own duration. With ``$BENCH_VALUE_STAMP``
set, the value also carries ``filledAt`` (the call's end, CLOCK_MONOTONIC ns), so a reader can tell
which fill a value came from and how old it is. ``fast`` answers at once (for ``cached-bench --mix get-miss``).
"""

import json
import os
import time


def cold(identity, *args, **kwargs):
    start = time.monotonic_ns()
    time.sleep(float(os.environ.get("BENCH_HANDLER_SECONDS", "0.2")))
    end = time.monotonic_ns()
    entry = {"id": identity, "name": "cold entry"}
    if os.environ.get("BENCH_VALUE_STAMP"):
        entry["filledAt"] = end
    value = json.dumps(entry)
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        # One line per call: identity, then the call's own start and end (CLOCK_MONOTONIC, ns).
        with open(path, "a") as f:
            f.write("%s %d %d\n" % (identity, start, end))
    return value


def fast(identity, *args, **kwargs):
    return json.dumps({"id": identity, "name": "filled"})
