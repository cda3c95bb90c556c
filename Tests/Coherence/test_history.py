"""Unit tests of the history check (history.py) on small synthetic histories."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history import ABSENT, INF, Fill, History, Read, Write, check  # noqa: E402

E = "000STUDENT#0000000001"
F = "000STUDENT#0000000002"
MS = 1_000_000
LAG = 100 * MS


def initial(*entries: str) -> list[Write]:
    return [Write(e, ABSENT, 0, 0, 0, "initial") for e in entries]


def kinds(history: History) -> list[str]:
    return [v.kind for v in check(history).violations]


# --- histories that must be flagged ---------------------------------------------------------------


def test_stale_read_after_a_later_write_completed() -> None:
    h = History(
        writes=initial(E) + [Write(E, "a", 10, 20, source="set a"), Write(E, "b", 30, 40, source="set b")],
        reads=[Read(E, "a", 50, 60)],
    )
    result = check(h)
    assert [v.kind for v in result.violations] == ["stale"]
    v = result.violations[0]
    assert v.write is not None and v.write.value == "a"
    assert v.superseded_by is not None and v.superseded_by.value == "b"


def test_absent_read_after_a_completed_set() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20)], reads=[Read(E, ABSENT, 30, 40)])
    assert kinds(h) == ["stale"]


def test_absent_read_after_set_that_followed_every_delete() -> None:
    h = History(
        writes=initial(E) + [Write(E, ABSENT, 5, 8), Write(E, "a", 10, 20), Write(E, ABSENT, 50, INF)],
        reads=[Read(E, ABSENT, 30, 40)],
    )
    assert kinds(h) == ["stale"]


def test_read_of_a_refused_value() -> None:
    h = History(writes=initial(E), reads=[Read(E, "r", 30, 40)], refused={"r": E})
    assert kinds(h) == ["refused-value"]


def test_read_of_a_value_nobody_wrote() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20)], reads=[Read(E, "zzz", 30, 40)])
    assert kinds(h) == ["never-written"]


def test_read_of_another_entrys_value() -> None:
    h = History(writes=initial(E, F) + [Write(F, "a", 10, 20)], reads=[Read(E, "a", 30, 40)])
    assert kinds(h) == ["wrong-entry"]


def test_read_that_ended_before_the_write_began() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 50, 60)], reads=[Read(E, "a", 10, 20)])
    assert kinds(h) == ["before-write"]


def test_direct_write_beyond_its_lag() -> None:
    h = History(
        writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "d", 30, 40, lag=LAG, source="direct")],
        reads=[Read(E, "a", 40 + LAG + 1, 40 + LAG + 10)],
    )
    assert kinds(h) == ["stale"]


def test_stale_fill_value() -> None:
    # The fill was stored and seen at 20; a set completed at 40; a read at 50 still returns the fill.
    h = History(
        writes=initial(E) + [Write(E, "b", 30, 40)],
        reads=[Read(E, "F|x", 15, 20), Read(E, "F|x", 50, 60)],
        fills={"F|x": Fill(E, 10)},
    )
    assert kinds(h) == ["stale"]


def test_uncached_fill_value_of_another_entry() -> None:
    h = History(writes=initial(E, F), reads=[Read(E, "F|x", 15, 20, uncached_fill=True)], fills={"F|x": Fill(F, 10)})
    assert kinds(h) == ["wrong-entry"]


# --- histories that must pass ---------------------------------------------------------------------


def test_concurrent_overlapping_writes_either_order() -> None:
    writes = initial(E) + [Write(E, "a", 10, 40), Write(E, "b", 20, 50)]
    # After both completed, either value may be the final one (they overlap).
    assert kinds(History(writes=writes, reads=[Read(E, "a", 60, 70)])) == []
    assert kinds(History(writes=writes, reads=[Read(E, "b", 60, 70)])) == []
    # But not the initial absence: both writes completed before the read.
    assert kinds(History(writes=writes, reads=[Read(E, ABSENT, 60, 70)])) == ["stale"]


def test_read_overlapping_a_write() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20), Write(E, "b", 30, 50)]
    assert kinds(History(writes=writes, reads=[Read(E, "a", 25, 40)])) == []
    assert kinds(History(writes=writes, reads=[Read(E, "b", 25, 40)])) == []


def test_unknown_outcome_write_seen_late() -> None:
    h = History(
        writes=initial(E) + [Write(E, "u", 10, INF, source="set -32002"), Write(E, "b", 30, 40)],
        reads=[Read(E, "b", 50, 60), Read(E, "u", 1_000 * MS, 1_001 * MS)],
    )
    assert kinds(h) == []


def test_unknown_outcome_write_never_seen_does_not_supersede() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "u", 30, INF)], reads=[Read(E, "a", 50, 60)])
    assert kinds(h) == []


def test_direct_write_within_lag() -> None:
    h = History(
        writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "d", 30, 40, lag=LAG, source="direct")],
        reads=[Read(E, "a", 40 + LAG - 1, 40 + LAG + 10)],
    )
    assert kinds(h) == []


def test_restart_within_lag_then_absent() -> None:
    restart = [Write(E, ABSENT, 100, 200, lag=LAG, source="restart")]
    writes = initial(E) + [Write(E, "a", 10, 20)] + restart
    assert kinds(History(writes=writes, reads=[Read(E, "a", 250, 260)])) == []
    assert kinds(History(writes=writes, reads=[Read(E, ABSENT, 150, 160)])) == []
    assert kinds(History(writes=writes, reads=[Read(E, "a", 200 + LAG + 1, 200 + LAG + 5)])) == ["stale"]


def test_absent_explained_by_an_unknown_delete() -> None:
    h = History(
        writes=initial(E) + [Write(E, "a", 10, 20), Write(E, ABSENT, 30, INF, claimed_unwritten=True)],
        reads=[Read(E, ABSENT, 50, 60)],
    )
    assert kinds(h) == []


def test_fill_value_read_directly_and_from_the_store() -> None:
    h = History(
        writes=initial(E),
        reads=[Read(E, "F|x", 5, 20), Read(E, "F|x", 19, 30), Read(E, "F|x", 40, 50)],
        fills={"F|x": Fill(E, 10)},
    )
    assert kinds(h) == []


def test_uncached_fill_is_legal_for_its_own_readers_only() -> None:
    # A set completed at 40; a fill that started earlier answers its joiners "cached": false at 60.
    h = History(
        writes=initial(E) + [Write(E, "b", 30, 40)],
        reads=[Read(E, "F|x", 45, 60, uncached_fill=True)],
        fills={"F|x": Fill(E, 35)},
    )
    assert kinds(h) == []
    # The same value read later from the store: the daemon did store it; judged as a write, and noted.
    h.reads.append(Read(E, "F|x", 70, 80))
    result = check(h)
    assert [v.kind for v in result.violations] == []
    assert result.notes["fill answered cached:false, later read from the store"] == 1


def test_write_answered_unavailable_but_read_later_is_noted() -> None:
    h = History(
        writes=initial(E) + [Write(E, "a", 10, INF, claimed_unwritten=True, source="c1 set")],
        reads=[Read(E, "a", 50, 60)],
    )
    result = check(h)
    assert result.violations == []
    assert result.notes["write answered -32000 (nothing written) was read later"] == 1


def test_many_writes_scale() -> None:
    writes = initial(E)
    reads = []
    for i in range(20_000):
        writes.append(Write(E, f"v{i}", 100 * i + 1, 100 * i + 10))
        reads.append(Read(E, f"v{i}", 100 * i + 20, 100 * i + 30))
    assert kinds(History(writes=writes, reads=reads)) == []
