"""Runs the coherence checker against the built daemon for about 20 s with every fault kind.

The daemon binary is $CACHED_BIN, else .build/debug/cached; the test is skipped when it (or
redis-server) is missing. COHERENCE_SECONDS changes the duration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BINARY = os.environ.get("CACHED_BIN") or str(REPO / ".build" / "debug" / "cached")
REDIS = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
SECONDS = float(os.environ.get("COHERENCE_SECONDS", "20"))
FAULTS = ("kill-data", "kill-listener", "pause", "restart", "timeout")


@pytest.mark.skipif(not os.access(BINARY, os.X_OK), reason="cached binary not built: %s" % BINARY)
@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_coherent_under_faults() -> None:
    run = subprocess.run(
        [sys.executable, str(HERE / "checker.py"), "--seconds", str(SECONDS), "--faults", "all", "--json",
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
