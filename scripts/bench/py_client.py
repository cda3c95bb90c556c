"""Per-call cost of a cache hit from Python, in one process.

Modes (each runs in its own virtual environment):
  shim      redis_cache.CacheClient(socket, KEY, ..., get_func=json.loads).get(i)   (the cached shim)
  shim-near the same with near_cache=KEYSPACE (hits from the process, coherent through the daemon)
  redispy   json.loads(r.get("000PYBENCH#%010d" % i))                             (redis-py straight to Redis)
  redispy-csc  the same with redis-py's client-side caching (RESP3, cache_config=CacheConfig());
            redis-py refuses it below Redis 7.4, so its version floor is lowered to the server's (its RESP3
            tracking works on 7.0)
  pyredis   redis_cache.CacheClient(ConnectionPool(...), KEY, ..., get_func=json.loads).get(i)  (pyredis-cache 0.1.3)
  populate  store KEYSPACE JSON values in Redis with the pyredis-cache layout (redis-py)

Prints one JSON object: microseconds per call (median of the rounds) and what was checked.
"""

import argparse
import json
import statistics
import sys
import time


def key_name(key, identity):
    return "%s#%010d" % (key.zfill(10).upper(), identity)


def value_for(identity):
    return {"id": identity, "name": "student %d" % identity, "tags": ["a", "b", "c"], "score": 12.5}


def redis_client(args, csc=False):
    import redis

    extra = {}
    if csc:
        import redis.connection
        from redis.cache import CacheConfig

        redis.connection.CacheProxyConnection.MIN_ALLOWED_VERSION = "7.0.0"
        extra = {"protocol": 3, "cache_config": CacheConfig(max_size=max(10000, args.keyspace))}
    if args.redis_socket:
        return redis.Redis(unix_socket_path=args.redis_socket, **extra)
    return redis.Redis(host="127.0.0.1", port=args.redis_port, **extra)


def redis_pool(args):
    import redis

    if args.redis_socket:
        return redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path=args.redis_socket)
    return redis.ConnectionPool(host="127.0.0.1", port=args.redis_port)


def never(identity, *a, **k):
    raise AssertionError("sync_func called for %r: the entry should have been a hit" % (identity,))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True, choices=["shim", "shim-near", "redispy", "redispy-csc", "pyredis", "populate"])
    p.add_argument("--socket", help="cached socket (shim)")
    p.add_argument("--redis-port", type=int)
    p.add_argument("--redis-socket")
    p.add_argument("--key", default="PyBench")
    p.add_argument("--keyspace", type=int, default=1000)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    if args.mode == "populate":
        r = redis_client(args)
        pipe = r.pipeline(transaction=False)
        for i in range(args.keyspace):
            pipe.set(key_name(args.key, i), json.dumps(value_for(i)))
        pipe.execute()
        print(json.dumps({"populated": args.keyspace}))
        return

    if args.mode in ("shim", "shim-near"):
        from redis_cache import CacheClient

        near = args.keyspace if args.mode == "shim-near" else 0
        client = CacheClient(args.socket, args.key, never, get_func=json.loads, near_cache=near)
        call = client.get
    elif args.mode == "pyredis":
        from redis_cache import CacheClient

        client = CacheClient(redis_pool(args), args.key, never, get_func=json.loads)
        call = client.get
    else:
        r = redis_client(args, csc=args.mode == "redispy-csc")
        names = [key_name(args.key, i) for i in range(args.keyspace)]

        def call(i):
            return json.loads(r.get(names[i]))

    # Warm up (connections, caches: the near cache keeps an entry from its second read), and check the
    # answers once.
    for i in list(range(args.keyspace)) * 2:
        got = call(i)
        if got != value_for(i):
            print(json.dumps({"mode": args.mode, "error": "wrong value for %d: %r" % (i, got)}))
            sys.exit(1)

    per_round = max(1, args.calls // args.rounds)
    ks = args.keyspace
    results = []
    for _ in range(args.rounds):
        t0 = time.perf_counter_ns()
        for n in range(per_round):
            call(n % ks)
        results.append((time.perf_counter_ns() - t0) / per_round / 1000.0)
    print(json.dumps({
        "mode": args.mode,
        "usPerCall": round(statistics.median(results), 2),
        "usPerCallBest": round(min(results), 2),
        "rounds": [round(x, 2) for x in results],
        "callsPerRound": per_round,
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
