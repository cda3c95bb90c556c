"""Runs the coherence checker against the built daemon for about 20 s with every fault kind that closes
connections or pauses Redis, then for about 25 s with two daemons sharing one Redis (those fault kinds,
kill -9 of a daemon included, and the aged key), then for about 15 s with two daemons under the silent
faults (blackhole, blackhole-one, loss, stall-daemon) with the staleness bound on, then for about 10 s per
silent fault kind with the bound off (the checker must find violations: the faults can fail a daemon),
then for about 25 s across two Redis failovers (Sentinel topology), then for about 30 s across Redis
Cluster reshards and failovers.

The daemon binary is $CACHED_BIN, else .build/debug/cached; the tests are skipped when it (or
redis-server) is missing, the Sentinel test when redis-server cannot run a Sentinel or the daemon
refuses redis-sentinel:// URLs, the cluster test when redis-server cannot run a cluster node, redis-cli
is missing, or the daemon refuses redis-cluster:// URLs. COHERENCE_SECONDS, COHERENCE_FLEET_SECONDS,
COHERENCE_SILENT_SECONDS, COHERENCE_UNBOUNDED_SECONDS, COHERENCE_SENTINEL_SECONDS and COHERENCE_CLUSTER_SECONDS
change the durations. The silent network fault kinds need netfilter (root, iptables): without it those
tests are skipped with the reason, never passed without the fault.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BINARY = os.environ.get("CACHED_BIN") or str(REPO / ".build" / "debug" / "cached")
REDIS = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
SECONDS = float(os.environ.get("COHERENCE_SECONDS", "20"))
FLEET_SECONDS = float(os.environ.get("COHERENCE_FLEET_SECONDS", "25"))
SENTINEL_SECONDS = float(os.environ.get("COHERENCE_SENTINEL_SECONDS", "25"))
CLUSTER_SECONDS = float(os.environ.get("COHERENCE_CLUSTER_SECONDS", "30"))
SILENT_SECONDS = float(os.environ.get("COHERENCE_SILENT_SECONDS", "15"))
UNBOUNDED_SECONDS = float(os.environ.get("COHERENCE_UNBOUNDED_SECONDS", "10"))
FAULTS = ("kill-data", "kill-listener", "pause", "restart", "timeout")
#: Silent faults: nothing is closed, nobody is told (the checker's module documentation).
NETWORK_FAULTS = ("blackhole", "blackhole-one", "loss")
SILENT_FAULTS = NETWORK_FAULTS + ("stall-daemon",)


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_under_faults() -> None:
    run = subprocess.run(
        [sys.executable, str(HERE / "checker.py"), "--seconds", str(SECONDS), "--faults", ",".join(FAULTS), "--json",
         # Faults that announce themselves: invalidations still within 100 ms, not just within the bound.
         "--strict-lag-ms", "100",
         "--bin", BINARY, "--redis-server", str(REDIS)],
        capture_output=True, text=True, timeout=SECONDS + 120)
    assert run.returncode in (0, 1), "checker failed to run (%d):\n%s\n%s" % (run.returncode, run.stdout, run.stderr)
    report = json.loads(run.stdout)
    summary = json.dumps({k: report[k] for k in (
        "seed", "violations", "violations_by_kind", "violation_episodes_by_last_fault", "violation_examples",
        "unanswered", "never_answered", "unanswered_examples", "faults", "operations", "anomalies",
        "anomaly_examples")}, indent=1)
    assert report["operations"] > 0, summary
    for kind in FAULTS:
        # The injector injects a fault every 0.5-2 s, each kind once per round in a random order:
        # 20 s make at least two rounds.
        assert report["faults"].get(kind, 0) > 0, "fault %s never injected\n%s" % (kind, summary)
    assert report["violations"] == 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    assert report["daemon_exit_during_run"] is None, summary
    assert report["passed"], summary


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_across_daemons_with_aged_entries() -> None:
    """Two daemons share one redis-server: the fill lock, fenced stores, waits for another daemon's fill,
    stale answers and early refreshes of the aged key, under every fault kind and kill -9 of a daemon."""
    run = subprocess.run(
        [sys.executable, str(HERE / "checker.py"), "--seconds", str(FLEET_SECONDS), "--strict-lag-ms", "100", "--faults",
         ",".join(FAULTS + ("kill-daemon",)), "--daemons", "2",
         "--aged-entries", "4", "--json", "--bin", BINARY, "--redis-server", str(REDIS)],
        capture_output=True, text=True, timeout=FLEET_SECONDS + 120)
    assert run.returncode in (0, 1), "checker failed to run (%d):\n%s\n%s" % (run.returncode, run.stdout, run.stderr)
    report = json.loads(run.stdout)
    summary = json.dumps({k: report[k] for k in (
        "seed", "violations", "violations_by_kind", "violation_episodes_by_last_fault", "violation_examples",
        "unanswered", "never_answered", "unanswered_examples", "faults", "operations", "operations_by_daemon",
        "handler_calls", "stale_answers", "fleet", "aging", "cross_daemon", "anomalies", "anomaly_examples")}, indent=1)
    assert report["operations"] > 0 and report["daemons"] == 2, summary
    for kind in FAULTS + ("kill-daemon",):
        # A fault every 0.5-2 s, each of the six kinds once per round: 25 s make at least one round.
        assert report["faults"].get(kind, 0) > 0, "fault %s never injected\n%s" % (kind, summary)
    # Both daemons served clients and filled entries; they met each other's fill locks and waited for
    # each other's fills; the aged key went stale and was refreshed.
    assert all(n > 0 for n in report["operations_by_daemon"].values()), summary
    assert all(n > 0 for n in report["handler_calls"]["by_daemon"].values()), summary
    assert report["fleet"].get("locksLost", 0) > 0 and report["fleet"].get("waits", 0) > 0, summary
    assert report["stale_answers"]["total"] > 0 and report["fleet"].get("refreshes", 0) > 0, summary
    assert report["violations"] == 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    assert report["daemon_exit_during_run"] is None, summary
    assert report["passed"], summary


def netfilter_unavailable() -> Optional[str]:
    """Why the checker cannot add netfilter rules here (None: it can; it adds and deletes one harmless rule)."""
    sys.path.insert(0, str(HERE))
    from checker import netfilter_unavailable as probe  # noqa: E402

    return probe()


def leftover_rules(tag: str) -> list[str]:
    """Rules carrying ``tag`` (the checker's) still in place."""
    sys.path.insert(0, str(HERE))
    from checker import leftover_rules as listed  # noqa: E402

    return [line for line in listed(tag) if tag in line.split()]


def run_checker(arguments: list[str], seconds: float) -> dict:
    run = subprocess.run(
        [sys.executable, str(HERE / "checker.py"), "--seconds", str(seconds), *arguments, "--json", "--bin", BINARY,
         "--redis-server", str(REDIS)],
        capture_output=True, text=True, timeout=3 * seconds + 180)
    assert run.returncode in (0, 1), "checker failed to run (%d):\n%s\n%s" % (run.returncode, run.stdout, run.stderr)
    return json.loads(run.stdout)


SILENT_SUMMARY = (
    "seed", "max_staleness_s", "max_staleness_configured", "max_staleness_refused", "direct_lag_ms", "cross_lag_ms",
    "violations", "violations_by_kind", "violations_by_layer", "violation_episodes_by_last_fault",
    "violation_examples", "worst_staleness_ms_by_fault", "worst_staleness_ms_by_fault_and_layer",
    "worst_staleness_examples", "unanswered", "never_answered", "unanswered_examples", "faults",
    "silent_faults_unavailable", "redis_paths", "redis_paths_checked", "redis_path_error", "netfilter",
    "daemon_stalls", "operations", "operations_by_daemon", "anomalies", "anomaly_examples")


def check_cleanup(report: dict, summary: str) -> None:
    """Every rule the checker added was removed (its report, and netfilter itself), no daemon left stopped."""
    assert report["netfilter"]["rules_left_after_teardown"] == [], summary
    assert report["netfilter"]["rules_added"] == report["netfilter"]["rules_removed"], summary
    assert leftover_rules(report["netfilter"]["tag"]) == [], summary


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_under_silent_faults() -> None:
    """Two daemons, each on its own TCP path to Redis, with the staleness bound (max_staleness 0.5 s, the
    default): a blackholed path, one blackholed flow, random loss, a stopped daemon. Every hit, from a daemon
    or from a near cache, must be within the bound: no violation with the lag max_staleness + slack."""
    why = netfilter_unavailable()
    if why:
        pytest.skip("silent network faults need netfilter: " + why)
    report = run_checker(["--faults", ",".join(SILENT_FAULTS), "--daemons", "2"], SILENT_SECONDS)
    summary = json.dumps({k: report.get(k) for k in SILENT_SUMMARY}, indent=1)
    assert report["silent_faults_unavailable"] is None, summary
    assert report["operations"] > 0 and report["daemons"] == 2, summary
    assert report["redis_path_error"] is None and len(set(report["redis_paths"].values())) == 2, summary
    for kind in SILENT_FAULTS:
        # One fault every 0.5-2 s, each kind once per round, each lasting 0.2-4 s: 15 s make a round.
        assert report["faults"].get(kind, 0) > 0, "fault %s never injected\n%s" % (kind, summary)
    assert report["max_staleness_configured"], summary
    bound_ms = report["max_staleness_s"] * 1000 + report["staleness_slack_ms"]
    assert all(ms <= bound_ms for ms in report["worst_staleness_ms_by_fault"].values()), summary
    assert report["violations"] == 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    assert report["daemon_exit_during_run"] is None, summary
    check_cleanup(report, summary)
    assert report["passed"], summary


#: Per silent fault kind: the checker's arguments that make it find staleness without a bound.
UNBOUNDED = {
    "blackhole": [],
    # The listener's flow: the invalidations stop; a data connection's flow only times out commands.
    "blackhole-one": ["--blackhole-one", "listener"],
    "loss": [],
    # A stopped daemon answers nothing: the staleness shows in its clients' near caches (both near-cache
    # clients talk to the one daemon).
    "stall-daemon": [],
}


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
@pytest.mark.parametrize("kind", SILENT_FAULTS)
def test_silent_faults_find_staleness_without_bound(kind: str) -> None:
    """With the bound off (max_staleness 0) the daemon keeps answering old values through a silent fault: the
    checker must find violations after that fault kind, or the fault (or the check) proves nothing."""
    if kind in NETWORK_FAULTS:
        why = netfilter_unavailable()
        if why:
            pytest.skip("silent network faults need netfilter: " + why)
    # --discard: the run is meant to fail; its files are not kept.
    report = run_checker(["--faults", kind, "--max-staleness", "0", "--discard", *UNBOUNDED[kind]], UNBOUNDED_SECONDS)
    summary = json.dumps({k: report.get(k) for k in SILENT_SUMMARY}, indent=1)
    assert report["silent_faults_unavailable"] is None, summary
    assert report["faults"].get(kind, 0) > 0, "fault %s never injected\n%s" % (kind, summary)
    assert report["redis_path_error"] is None, summary
    assert report["violations_by_kind"].get("stale", 0) > 0, summary
    assert report["violation_episodes_by_last_fault"].get(kind, 0) > 0, summary
    if kind == "blackhole-one":
        assert report["counters"].get("blackhole-one flows: listener", 0) > 0, summary
    if kind == "stall-daemon":
        assert report["violations_by_layer"].get("near", 0) > 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    check_cleanup(report, summary)


def sentinel_unavailable() -> Optional[str]:
    """Why redis-server cannot run a Sentinel here (None: it can): starts one on a free port and pings it."""
    if REDIS is None:
        return "redis-server not installed"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cached-sentinel-probe-") as d:
        conf = Path(d) / "sentinel.conf"
        conf.write_text("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor probe 127.0.0.1 1 2\n" % (port, d))
        proc = subprocess.Popen([REDIS, str(conf), "--sentinel"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    return "redis-server cannot run a Sentinel: " + out.strip()[-300:]
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(64).startswith(b"+PONG"):
                            return None
                except OSError:
                    time.sleep(0.05)
            return "a Sentinel did not answer PING within 5 s"
        finally:
            proc.kill()
            proc.wait()


def daemon_refuses_url(url: str) -> Optional[str]:
    """The daemon's answer to ``url`` in a configuration check, if it is an invalid-URL error."""
    with tempfile.TemporaryDirectory(prefix="cached-url-") as d:
        config = Path(d) / "cached.toml"
        config.write_text('socket = "%s/cached.sock"\nredis = "%s"\n' % (d, url))
        run = subprocess.run([BINARY, "--check-config", "--config", str(config)], capture_output=True, text=True,
                             timeout=30)
    out = run.stdout + run.stderr
    return out.strip() if "invalid Redis URL" in out else None


def run_topology_checker(arguments: list[str], timeout: float, url_form: str, on_their_own: str) -> dict:
    """Runs the checker with `arguments` and returns its report. A failover Redis made on its own (the
    report's topology error says `on_their_own`) is not the daemon's doing and the checker cannot model it:
    the run is made once more."""
    report: dict = {}
    for attempt in range(2):
        run = subprocess.run(
            [sys.executable, str(HERE / "checker.py"), *arguments, "--json", "--bin", BINARY, "--redis-server", str(REDIS)],
            capture_output=True, text=True, timeout=timeout)
        if run.returncode == 2 and "invalid Redis URL" in run.stderr:
            # --check-config may not parse the URL; the daemon refused it at start-up.
            pytest.skip("the daemon does not support %s URLs yet: %s" % (url_form, run.stderr.strip()[-300:]))
        assert run.returncode in (0, 1), "checker failed to run (%d):\n%s\n%s" % (
            run.returncode, run.stdout, run.stderr)
        report = json.loads(run.stdout)
        if on_their_own not in (report["topology_error"] or ""):
            break
    return report


def daemon_refuses_sentinel_urls() -> Optional[str]:
    return daemon_refuses_url("redis-sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster")


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_across_failovers() -> None:
    why = sentinel_unavailable()
    if why:
        pytest.skip(why)
    refused = daemon_refuses_sentinel_urls()
    if refused:
        pytest.skip("the daemon does not support redis-sentinel:// URLs yet: " + refused)
    # The old master rejoins as a replica at once (--rejoin replicaof): two failovers fit in 25 s.
    report = run_topology_checker(
        ["--seconds", str(SENTINEL_SECONDS), "--topology", "sentinel", "--faults", "failover", "--rejoin", "replicaof"],
        SENTINEL_SECONDS + 240, url_form="redis-sentinel://", on_their_own="on their own")
    summary = json.dumps({k: report[k] for k in (
        "seed", "failovers", "lost_writes", "lost_write_examples", "failover_unexplained", "topology_error",
        "violations", "violations_by_kind", "violation_examples", "unanswered", "never_answered",
        "unanswered_examples", "operations", "anomalies", "anomaly_examples", "daemon_topology")}, indent=1)
    failovers = report["failovers"]
    # The first failover comes 0.5-2 s in, the second 10 s (--failover-interval) after it: 25 s make two.
    assert failovers["injected"] >= 2, summary
    assert all(ms is not None for ms in failovers["kill_to_promotion_ms"]), summary
    assert report["operations"] > 0, summary
    assert report["topology_error"] is None and report["failover_unexplained"] == [], summary
    assert report["violations"] == 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    assert report["daemon_exit_during_run"] is None, summary
    # The daemon answered from each new master (a set stored through cached after the kill).
    assert all(ms is not None for ms in failovers["kill_to_first_answer_ms"]), summary
    assert report["passed"], summary


def redis_cli() -> Optional[str]:
    beside = Path(REDIS).with_name("redis-cli") if REDIS else None
    return str(beside) if beside is not None and os.access(beside, os.X_OK) else shutil.which("redis-cli")


def cluster_unavailable() -> Optional[str]:
    """Why a Redis Cluster cannot run here (None: it can): redis-cli is needed to create it, and one
    ``--cluster-enabled yes`` node on a free port (at most 55535: its bus listens on port + 10000) must
    answer ``CLUSTER INFO``."""
    if REDIS is None:
        return "redis-server not installed"
    if redis_cli() is None:
        return "redis-cli not installed (it creates the cluster)"
    sys.path.insert(0, str(HERE))
    from checker import free_cluster_ports  # noqa: E402

    port = free_cluster_ports(1)[0]
    with tempfile.TemporaryDirectory(prefix="cached-cluster-probe-") as d:
        proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                 "--cluster-config-file", "nodes.conf", "--dir", d, "--save", "", "--appendonly", "no"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    return "redis-server cannot run a cluster node: " + out.strip()[-300:]
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2) as c:
                        c.sendall(b"CLUSTER INFO\r\n")
                        if b"cluster_state:" in c.recv(4096):
                            return None
                except OSError:
                    time.sleep(0.05)
            return "a cluster node did not answer CLUSTER INFO within 5 s"
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_across_cluster_reshards_and_failovers() -> None:
    why = cluster_unavailable()
    if why:
        pytest.skip(why)
    refused = daemon_refuses_url("redis-cluster://127.0.0.1:30001,127.0.0.1:30002,127.0.0.1:30003")
    if refused:
        pytest.skip("the daemon does not support redis-cluster:// URLs yet: " + refused)
    report = run_topology_checker(
        ["--seconds", str(CLUSTER_SECONDS), "--topology", "cluster", "--faults", "reshard,failover",
         "--redis-cli", str(redis_cli())],
        CLUSTER_SECONDS + 300, url_form="redis-cluster://", on_their_own="on its own")
    summary = json.dumps({k: report[k] for k in (
        "seed", "failovers", "cluster", "lost_writes", "lost_write_examples", "failover_unexplained",
        "topology_error", "violations", "violations_by_kind", "violation_examples", "unanswered", "never_answered",
        "unanswered_examples", "operations", "anomalies", "anomaly_examples", "daemon_topology")}, indent=1)
    failovers, reshards = report["failovers"], report["cluster"]["reshards"]
    # Faults come every 0.5-2 s, reshard and failover once per round; a reshard takes about 1 s, a failover
    # about 4 s (cluster-node-timeout 2 s, then the election): 30 s make at least one of each.
    assert reshards["injected"] >= 1 and failovers["injected"] >= 1, summary
    assert all(n >= 1000 for n in reshards["slots"]) and sum(reshards["slots_with_entries"]) >= 1, summary
    assert all(ms is not None for ms in failovers["kill_to_promotion_ms"]), summary
    assert report["operations"] > 0, summary
    assert report["topology_error"] is None and report["failover_unexplained"] == [], summary
    assert report["violations"] == 0, summary
    assert report["unanswered"] == 0 and report["never_answered"] == 0, summary
    assert report["daemon_exit_during_run"] is None, summary
    # The daemon answered for the killed shard's slots from each promoted replica.
    assert all(ms is not None for ms in failovers["kill_to_first_answer_ms"]), summary
    assert report["passed"], summary
