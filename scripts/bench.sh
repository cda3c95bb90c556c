#!/usr/bin/env bash
# `make bench`: builds release cached and cached-bench, prepares three Python virtual environments
# (the shim, redis-py, pyredis-cache 0.1.3), then runs scripts/bench/run.py, which starts a private
# redis-server and cached, measures them side by side, prints a markdown table and rewrites
# docs/benchmarks.md. Loopback/Unix sockets only, bounded request counts (a few minutes in all).
#
# Environment knobs (defaults in brackets): BENCH_SCRATCH [.build-bench], BENCH_REQUESTS [200000],
# BENCH_PIPELINED_REQUESTS [1000000], BENCH_REPEAT [3], BENCH_VALUE_SIZE [100], BENCH_KEYSPACE [10000],
# BENCH_CACHED_REDIS [tcp|unix], BENCH_OUTPUT [docs/benchmarks.md], BENCH_ARGS (extra run.py flags, e.g.
# --skip-tls / --skip-cluster to leave out the row over TLS / on a Redis Cluster, --skip-fleet / --skip-expiry
# for the cold stampede across three daemons / the expiry boundary rows, --skip-scrape for get-hit throughput
# with /metrics scraped once a second, --only tls,throughput for a quick
# partial run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SWIFT=${SWIFT:-swift}
PYTHON=${PYTHON:-python3}
SCRATCH=${BENCH_SCRATCH:-.build-bench}

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make deps / apt-get install redis-server redis-tools)" >&2; exit 1; }
done
command -v valgrind >/dev/null || echo "bench: valgrind is missing: the instructions-per-get figure is skipped (apt-get install valgrind)" >&2
command -v openssl >/dev/null || echo "bench: openssl is missing: the get-hit row over TLS is skipped (apt-get install openssl)" >&2

echo "bench: building release cached and cached-bench in $SCRATCH" >&2
# The same flags as `make release`: no run-time exclusivity checks in any module (debug builds keep them).
RELEASE=(-c release -Xswiftc -enforce-exclusivity=unchecked)
"$SWIFT" build --scratch-path "$SCRATCH" "${RELEASE[@]}" --product cached
"$SWIFT" build --scratch-path "$SCRATCH" "${RELEASE[@]}" --product cached-bench
BIN=$("$SWIFT" build --scratch-path "$SCRATCH" "${RELEASE[@]}" --show-bin-path)
# The cold-get floor: a minimal C server run against the same clients (skipped without a C compiler).
FLOOR=()
if command -v cc >/dev/null && cc -O2 -Wall -o "$SCRATCH/fanout_floor" scripts/bench/fanout_floor.c; then
    FLOOR=(--fanout-floor "$SCRATCH/fanout_floor")
else
    echo "bench: no C compiler: the cold-get floor is skipped" >&2
fi
# valgrind 3.19 crashes on Swift's sigsuspend with a read-only mask; this preload gives it a writable copy.
if command -v cc >/dev/null && cc -O2 -Wall -shared -fPIC -o "$SCRATCH/sigsuspend_shim.so" scripts/bench/sigsuspend_shim.c; then
    FLOOR+=(--valgrind-preload "$(cd "$SCRATCH" && pwd)/sigsuspend_shim.so")
fi

# One virtual environment per client, so the shim and pyredis-cache (both the module `redis_cache`) never meet.
venv() { # venv DIR PACKAGES...
    local dir=$1; shift
    local stamp="$dir/.bench-stamp" want="$*"
    if [[ ! -x "$dir/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        echo "bench: preparing $dir ($want)" >&2
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "$@" >&2
        echo "$want" > "$stamp"
    fi
}
venv .venv-bench-shim "$ROOT/clients/python"
venv .venv-bench-redispy redis hiredis
venv .venv-bench-pyredis redis hiredis pyredis-cache==0.1.3
# The shim is installed as a copy: refresh it so the bench measures the working tree.
.venv-bench-shim/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall "$ROOT/clients/python" >&2

# 10,000 idle connections need more descriptors than the usual 1024 (cached and the client inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 || true
if (( $(ulimit -n) < 11000 )); then
    echo "bench: ulimit -n is $(ulimit -n): the 10,000-connection figure will fail" >&2
fi

args=(
    --cached "$BIN/cached" --cached-bench "$BIN/cached-bench" "${FLOOR[@]}"
    --venv-shim "$ROOT/.venv-bench-shim/bin/python"
    --venv-redispy "$ROOT/.venv-bench-redispy/bin/python"
    --venv-pyredis "$ROOT/.venv-bench-pyredis/bin/python"
    --requests "${BENCH_REQUESTS:-200000}" --pipelined-requests "${BENCH_PIPELINED_REQUESTS:-1000000}"
    --repeat "${BENCH_REPEAT:-3}" --value-size "${BENCH_VALUE_SIZE:-100}" --keyspace "${BENCH_KEYSPACE:-10000}"
    --cached-redis "${BENCH_CACHED_REDIS:-tcp}" --output "${BENCH_OUTPUT:-$ROOT/docs/benchmarks.md}"
)
# shellcheck disable=SC2086
exec "$PYTHON" scripts/bench/run.py "${args[@]}" ${BENCH_ARGS:-}
