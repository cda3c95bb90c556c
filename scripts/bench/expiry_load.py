"""A steady read load on one hot entry across its expiry boundaries (the `expiry` rows of `make bench`).

Open loop: one ``get`` of KEY/IDENTITY every 1/RATE s for SECONDS, each sent on an idle connection
of a pool (a new connection is opened when every one is busy, as a web worker would), so gets that
arrive while the entry is being refilled pile up instead of being held back by the client. Latency
is from each get's own send to its answer line. The entry is expected to be filled already (the
caller's warm-up get); its handler puts ``filledAt`` (CLOCK_MONOTONIC ns, the fill's end) into the
value, so each answer says how old its value was.

Prints one JSON object: counts (answered, errors, ``hit: false`` answers = gets that waited for a
fill, ``stale: true`` answers, ``cached: false`` answers, gets slower than half the handler), the
latency percentiles (ms) of all gets and of the stale answers, the bursts of slow gets (one per
expiry boundary that made readers wait), answers marked fresh whose value was older than TTL at
their send (``overdueFresh``, more than 20 ms past) and stale answers older than TTL + STALE_TTL
(``overdueStale``), the fills seen (distinct ``filledAt``), the client's own scheduling lag, and the
load's start and end stamps (CLOCK_MONOTONIC ns, to count the handler calls made during the load).
"""

import argparse
import asyncio
import json
import time


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def load(args):
    loop = asyncio.get_running_loop()
    idle = []
    opened = 0

    async def connect():
        nonlocal opened
        opened += 1
        return await asyncio.open_unix_connection(args.socket, limit=1 << 22)

    for _ in range(args.connections):
        idle.append(await connect())
    samples = []
    next_id = [0]

    async def one(lag_ns):
        conn = idle.pop() if idle else await connect()
        reader, writer = conn
        next_id[0] += 1
        line = json.dumps({"jsonrpc": "2.0", "id": next_id[0], "method": "get",
                           "params": {"key": args.key, "identity": args.identity}}).encode() + b"\n"
        sent = time.monotonic_ns()
        writer.write(line)
        try:
            answer = await asyncio.wait_for(reader.readline(), args.timeout)
        except asyncio.TimeoutError:
            samples.append({"sent": sent, "ms": None, "answer": None, "lag": lag_ns})
            writer.close()  # its late answer must not be read by the next get on it
            return
        samples.append({"sent": sent, "ms": (time.monotonic_ns() - sent) / 1e6, "answer": answer, "lag": lag_ns})
        if answer:
            idle.append(conn)
        else:
            writer.close()

    interval = 1.0 / args.rate
    n = int(args.seconds * args.rate)
    started_at = time.monotonic_ns()
    start = loop.time()
    tasks = []
    for i in range(n):
        at = start + i * interval
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(int(max(0.0, loop.time() - at) * 1e9))))
    ended_at = time.monotonic_ns()
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return samples, started_at, ended_at, opened


def summarize(args, samples, started_at, ended_at, opened):
    ttl_ns = int(args.ttl * 1e9)
    stale_ns = int(args.stale_ttl * 1e9)
    slack_ns = 20_000_000
    slow_ms = args.handler_seconds * 1000 / 2
    lat, stale_lat = [], []
    answered = errors = waited = stale = uncached = slow = 0
    overdue_fresh = overdue_stale = 0
    overdue_fresh_max = overdue_stale_max = None
    first_error = None
    examples = []
    fills = set()
    slow_sent = []
    for s in samples:
        result = None
        if s["answer"]:
            try:
                msg = json.loads(s["answer"])
                result = msg.get("result")
                if result is None and first_error is None:
                    first_error = json.dumps(msg.get("error"))[:300]
            except ValueError:
                pass
        if not isinstance(result, dict) or result.get("value") is None:
            errors += 1
            if first_error is None:
                first_error = s["answer"][:300].decode("utf-8", "replace") if s["answer"] else "no answer within %g s" % args.timeout
            continue
        answered += 1
        lat.append(s["ms"])
        is_stale = result.get("stale") is True
        waited += result.get("hit") is False
        stale += is_stale
        uncached += result.get("cached") is False
        if s["ms"] >= slow_ms:
            slow += 1
            slow_sent.append((s["sent"], s["ms"]))
        if is_stale:
            stale_lat.append(s["ms"])
        try:
            filled = json.loads(result["value"]).get("filledAt")
        except (ValueError, AttributeError, TypeError):
            filled = None
        if filled is None:
            continue
        fills.add(filled)
        age = s["sent"] - filled
        if is_stale:
            over = age - ttl_ns - stale_ns
            if over > slack_ns:
                overdue_stale += 1
                overdue_stale_max = max(overdue_stale_max or 0, over / 1e6)
        else:
            over = age - ttl_ns
            if over > slack_ns:
                overdue_fresh += 1
                overdue_fresh_max = max(overdue_fresh_max or 0, over / 1e6)
                if len(examples) < 8:
                    examples.append({"atMs": round((s["sent"] - started_at) / 1e6, 1), "pastTtlMs": round(over / 1e6, 1),
                                     "hit": result.get("hit"), "ms": round(s["ms"], 2)})
    # Slow gets grouped into bursts (a gap of more than a quarter TTL starts a new one): one per boundary.
    bursts = []
    for sent, ms in sorted(slow_sent):
        if bursts and sent - bursts[-1]["lastSent"] <= ttl_ns / 4:
            b = bursts[-1]
            b["gets"] += 1
            b["maxMs"] = max(b["maxMs"], ms)
            b["lastSent"] = sent
        else:
            bursts.append({"atMs": (sent - started_at) / 1e6, "gets": 1, "maxMs": ms, "lastSent": sent})
    for b in bursts:
        del b["lastSent"]
        b["atMs"] = round(b["atMs"], 1)
        b["maxMs"] = round(b["maxMs"], 1)
    lat.sort()
    stale_lat.sort()
    lags = sorted(s["lag"] / 1e6 for s in samples)
    return {
        "key": args.key, "identity": args.identity, "rate": args.rate, "seconds": args.seconds,
        "gets": len(samples), "answered": answered, "errors": errors, "firstError": first_error,
        "waited": waited, "stale": stale, "uncached": uncached, "slow": slow, "slowMs": slow_ms,
        "p50Ms": percentile(lat, 50), "p99Ms": percentile(lat, 99), "p999Ms": percentile(lat, 99.9),
        "maxMs": lat[-1] if lat else None,
        "staleP50Ms": percentile(stale_lat, 50), "staleP99Ms": percentile(stale_lat, 99),
        "staleMaxMs": stale_lat[-1] if stale_lat else None,
        "bursts": bursts, "fillsSeen": len(fills),
        "overdueFresh": overdue_fresh, "overdueFreshMaxMs": overdue_fresh_max, "overdueExamples": examples,
        "overdueStale": overdue_stale, "overdueStaleMaxMs": overdue_stale_max,
        "clientLagP99Ms": percentile(lags, 99), "clientLagMaxMs": lags[-1] if lags else None,
        "connectionsOpened": opened, "startedAt": started_at, "endedAt": ended_at,
        "latenciesMs": [round(x, 3) for x in lat],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--identity", type=int, required=True)
    p.add_argument("--rate", type=float, default=500.0, help="gets per second")
    p.add_argument("--seconds", type=float, default=7.0)
    p.add_argument("--connections", type=int, default=16, help="connections opened before the load")
    p.add_argument("--ttl", type=float, required=True)
    p.add_argument("--stale-ttl", type=float, default=0.0)
    p.add_argument("--handler-seconds", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--samples", help="also write every get to this file, one JSON line each: sent (ns), ms, answer")
    args = p.parse_args()
    samples, started_at, ended_at, opened = asyncio.run(load(args))
    if args.samples:
        with open(args.samples, "w") as f:
            for s in samples:
                f.write(json.dumps({"sent": s["sent"], "ms": s["ms"],
                                    "answer": s["answer"].decode("utf-8", "replace").strip() if s["answer"] else None}) + "\n")
    print(json.dumps(summarize(args, samples, started_at, ended_at, opened)))


if __name__ == "__main__":
    main()
