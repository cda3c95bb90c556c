"""Sync handlers for the benchmark's handler keys (run by ``python -m redis_cache.worker``).

``cold`` appends one line per call to ``$BENCH_COUNT_FILE`` and sleeps ``$BENCH_HANDLER_SECONDS``
(default 0.2) before answering, so the benchmark can count calls and compare waiters' latency with
the handler's duration. ``fast`` answers at once (for ``cached-bench --mix get-miss``).
"""

import json
import os
import time


def cold(identity, *args, **kwargs):
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        with open(path, "a") as f:
            f.write("%s %d\n" % (identity, time.monotonic_ns()))
    time.sleep(float(os.environ.get("BENCH_HANDLER_SECONDS", "0.2")))
    return json.dumps({"id": identity, "name": "cold entry"})


def fast(identity, *args, **kwargs):
    return json.dumps({"id": identity, "name": "filled"})
