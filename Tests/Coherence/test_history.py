"""Unit tests of the history check (history.py) on small synthetic histories."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history import ABSENT, INF, Aging, Failover, Fill, History, Read, Write, check, staleness_lag  # noqa: E402

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


def test_value_handed_to_a_waiter_uncached_is_not_noted() -> None:
    # A lease holder's set failed (-32000); the waiters were handed its value marked "cached": false: it
    # did not come from the store, as the error said.
    h = History(
        writes=initial(E) + [Write(E, "a", 10, INF, claimed_unwritten=True, source="c1 set(lease)")],
        reads=[Read(E, "a", 5, 60, uncached=True)],
    )
    result = check(h)
    assert result.violations == []
    assert result.notes["write answered -32000 (nothing written) was read later"] == 0


def test_many_writes_scale() -> None:
    writes = initial(E)
    reads = []
    for i in range(20_000):
        writes.append(Write(E, f"v{i}", 100 * i + 1, 100 * i + 10))
        reads.append(Read(E, f"v{i}", 100 * i + 20, 100 * i + 30))
    assert kinds(History(writes=writes, reads=reads)) == []


# --- failovers --------------------------------------------------------------------------------------
#
# The master is killed at 1000 (dead at 1001); the replica, read at 1100 (still a replica), held "a" for E
# (it never received "b", acknowledged at 900); a Sentinel named the new master at 4000.

KILLED, DEAD, FROZEN, PROMOTED = 1000, 1001, 1100, 4000


def failover(values: dict[str, object], exact: bool = True, lag: int = LAG) -> Failover:
    return Failover(KILLED, DEAD, FROZEN, PROMOTED, dict(values), exact, lag)  # type: ignore[arg-type]


def lost_b(*reads: Read, extra: list[Write] | None = None) -> History:
    return History(
        writes=initial(E) + [Write(E, "a", 10, 20, source="set a"), Write(E, "b", 800, 900, source="set b")]
        + (extra or []),
        reads=list(reads),
        failovers=[failover({E: "a"})],
    )


def test_lost_value_served_after_the_switch_is_stale() -> None:
    result = check(lost_b(Read(E, "b", PROMOTED + LAG + 1, PROMOTED + LAG + 10)))
    assert [v.kind for v in result.violations] == ["stale"]
    v = result.violations[0]
    assert v.superseded_by is not None and v.superseded_by.source.startswith("failover")


def test_lost_value_served_before_the_switch_is_legal() -> None:
    # Until the reset is visible (promotion + lag) a local copy of "b" may still be served.
    assert kinds(lost_b(Read(E, "b", 950, 960), Read(E, "b", 2000, 2010), Read(E, "b", PROMOTED + LAG - 1,
                                                                               PROMOTED + LAG + 10))) == []


def test_surviving_older_value_is_legal_after_the_switch() -> None:
    # Without the failover the read of "a" would be stale ("b" superseded it before the kill).
    h = lost_b(Read(E, "a", PROMOTED + 5, PROMOTED + 10), Read(E, "a", 10 * PROMOTED, 10 * PROMOTED + 5))
    assert kinds(h) == []
    h.failovers.clear()
    assert kinds(h) == ["stale", "stale"]


def test_surviving_value_is_not_legal_before_the_kill() -> None:
    assert kinds(lost_b(Read(E, "a", 950, 960))) == ["stale"]


def test_write_after_the_promotion_supersedes_the_surviving_value() -> None:
    after = [Write(E, "c", PROMOTED + 10, PROMOTED + 20, source="set c")]
    assert kinds(lost_b(Read(E, "c", PROMOTED + 30, PROMOTED + 40), extra=after)) == []
    assert kinds(lost_b(Read(E, "a", PROMOTED + 30, PROMOTED + 40), extra=after)) == ["stale"]


def test_writes_across_the_failover_window_are_not_flagged() -> None:
    # "c" was invoked before the kill and answered after the promotion (it may have been applied by the
    # new master); "d" was invoked during the failover and answered after it; either may be read later.
    across = [Write(E, "c", 990, PROMOTED + 50, source="set c"), Write(E, "d", 2000, PROMOTED + 60, source="set d")]
    late = PROMOTED + 1000
    for value in ("c", "d"):
        assert kinds(lost_b(Read(E, value, late, late + 10), extra=across)) == []
    # So may the surviving "a" right after the promotion: neither was surely applied before it.
    assert kinds(lost_b(Read(E, "a", PROMOTED + 70, PROMOTED + 80), extra=across)) == []


def test_write_acknowledged_after_the_kill_but_before_the_snapshot_is_superseded() -> None:
    # "c" was answered at 1050: applied by the old master before it died, and not on the replica.
    late = [Write(E, "c", 990, 1050, source="set c")]
    assert kinds(lost_b(Read(E, "c", PROMOTED + LAG + 1, PROMOTED + LAG + 5), extra=late)) == ["stale"]


def test_lost_writes_are_counted() -> None:
    result = check(lost_b())
    assert [(x.entry, x.survived, [w.value for w in x.lost]) for x in result.lost_writes] == [(E, "a", ["b"])]
    assert result.lost_writes[0].survived_write is not None
    assert result.lost_writes[0].survived_write.source == "set a"
    assert result.violations == [] and result.failover_unexplained == []


def test_nothing_lost_when_the_latest_write_survived() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "b", 800, 900)], failovers=[failover({E: "b"})])
    assert check(h).lost_writes == []


def test_overlapping_writes_are_not_counted_as_lost() -> None:
    # "a" and "b" overlap: "a" may have been applied last, so "b" is not surely lost.
    h = History(writes=initial(E) + [Write(E, "a", 10, 900), Write(E, "b", 800, 850)], failovers=[failover({E: "a"})])
    assert check(h).lost_writes == []


def test_unknown_outcome_of_the_surviving_write_is_not_a_loss() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, INF), Write(E, "b", 800, 900)], failovers=[failover({E: "a"})])
    assert check(h).lost_writes == []


def test_unacknowledged_write_is_not_counted_as_lost() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "b", 800, INF)], failovers=[failover({E: "a"})])
    assert check(h).lost_writes == []


def test_lost_delete() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20), Write(E, ABSENT, 800, 900, source="delete")],
                reads=[Read(E, ABSENT, PROMOTED + LAG + 1, PROMOTED + LAG + 5)], failovers=[failover({E: "a"})])
    result = check(h)
    assert [v.kind for v in result.violations] == ["stale"]
    assert [[w.value for w in x.lost] for x in result.lost_writes] == [[ABSENT]]


def test_surviving_value_nobody_wrote_is_unexplained() -> None:
    h = History(writes=initial(E, F) + [Write(F, "f", 10, 20)], refused={"r": E},
                failovers=[failover({E: "zzz"}), failover({E: "r"}), failover({E: "f"})])
    assert [(u.failover, u.kind) for u in check(h).failover_unexplained] == [
        (0, "never-written"), (1, "refused-value"), (2, "wrong-entry")]


def test_surviving_value_written_after_the_kill_is_unexplained() -> None:
    h = History(writes=initial(E) + [Write(E, "late", DEAD + 5, DEAD + 10)], failovers=[failover({E: "late"})])
    assert [u.kind for u in check(h).failover_unexplained] == ["never-written"]


def test_second_failover_keeps_the_first_reset() -> None:
    # After the first failover "a" survived; nothing was written since: no loss at the second one.
    second = Failover(10 * KILLED, 10 * KILLED + 1, 10 * FROZEN, 10 * PROMOTED, {E: "a"}, True, LAG)
    h = lost_b(Read(E, "a", 10 * PROMOTED + LAG + 1, 10 * PROMOTED + LAG + 5))
    h.failovers.append(second)
    result = check(h)
    assert result.violations == []
    assert [x.failover for x in result.lost_writes] == [0]


def test_inexact_snapshot_excuses_reads_in_the_window() -> None:
    # The replica was already promoted when read: "c", read from the new master, may have been written
    # after the promotion, so what the new master held at its promotion is unknown. Reads overlapping
    # [killed, promoted + lag] are excused; later reads are checked.
    writes = initial(E) + [Write(E, "a", 10, 20), Write(E, "b", 800, 900), Write(E, "c", 3000, 3500)]
    window = [Read(E, "a", 3200, 3300), Read(E, "b", PROMOTED + LAG - 5, PROMOTED + LAG + 5)]
    h = History(writes=writes, reads=window, failovers=[failover({E: "c"}, exact=False)])
    result = check(h)
    assert result.violations == [] and result.excused_reads == 2 and result.reads_checked == 0
    assert result.loss_unknown == [1] and result.lost_writes == []
    h.reads.append(Read(E, "b", PROMOTED + LAG + 10, PROMOTED + LAG + 20))
    h.reads.append(Read(E, "c", PROMOTED + LAG + 10, PROMOTED + LAG + 20))
    assert kinds(h) == ["stale"]


def test_inexact_snapshot_judges_untouched_entries() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20), Write(E, "b", 800, 900)],
                failovers=[failover({E: "a"}, exact=False)])
    result = check(h)
    assert result.loss_unknown == [0]
    assert [[w.value for w in x.lost] for x in result.lost_writes] == [["b"]]


# --- one shard fails over (cluster) -------------------------------------------------------------------
#
# E lives on the failed shard, F on another: the failover's values name E only.


def test_cluster_failover_leaves_other_shards_entries_alone() -> None:
    # "fb" was acknowledged on F's shard before the kill; no failover concerns F, so it is neither lost
    # nor superseded: reading "fb" after the promotion is legal, reading the older "fa" stale.
    writes = initial(E, F) + [Write(E, "a", 10, 20), Write(E, "b", 800, 900), Write(F, "fa", 10, 20),
                              Write(F, "fb", 800, 900)]
    late = PROMOTED + LAG + 10
    h = History(writes=writes, reads=[Read(F, "fb", late, late + 5), Read(E, "a", late, late + 5)],
                failovers=[failover({E: "a"})])
    result = check(h)
    assert result.violations == []
    assert [(x.entry, [w.value for w in x.lost]) for x in result.lost_writes] == [(E, ["b"])]
    h.reads.append(Read(F, "fa", late, late + 5))
    assert kinds(h) == ["stale"]


def test_inexact_cluster_snapshot_excuses_only_its_shards_reads() -> None:
    writes = initial(E, F) + [Write(E, "a", 10, 20), Write(F, "fa", 10, 20), Write(F, "fb", 800, 900)]
    h = History(writes=writes, reads=[Read(E, "a", 3200, 3300), Read(F, "fa", 3200, 3300)],
                failovers=[failover({E: "a"}, exact=False)])
    result = check(h)
    assert result.excused_reads == 1 and result.reads_checked == 1
    assert [(v.kind, v.read.entry) for v in result.violations] == [("stale", F)]


# --- several daemons --------------------------------------------------------------------------------
#
# Daemons 0 and 1 share one Redis. A write through one daemon reaches the other's local copy through an
# invalidation (asynchronous, like a direct write's): ``cross_lag``. Through its own daemon it has no lag.


def test_write_through_the_same_daemon_has_no_lag() -> None:
    h = History(writes=initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "b", 30, 40, daemon=0)],
                reads=[Read(E, "a", 41, 50, daemon=0)], cross_lag=LAG)
    assert kinds(h) == ["stale"]


def test_write_through_another_daemon_within_and_beyond_the_cross_lag() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "b", 30, 40, daemon=0)]
    assert kinds(History(writes=writes, reads=[Read(E, "a", 40 + LAG - 1, 40 + LAG + 5, daemon=1)], cross_lag=LAG)) == []
    assert kinds(History(writes=writes, reads=[Read(E, "a", 40 + LAG + 1, 40 + LAG + 5, daemon=1)],
                         cross_lag=LAG)) == ["stale"]
    # Without a cross lag every daemon is held to the write's own lag.
    assert kinds(History(writes=writes, reads=[Read(E, "a", 41, 50, daemon=1)])) == ["stale"]


def test_a_fill_stored_by_one_daemon_supersedes_for_the_others_after_the_cross_lag() -> None:
    # "a" set through daemon 0; daemon 1 fills "F|x" at 100 (the entry had been deleted directly), first
    # seen at 120 through daemon 1. Daemon 0 may serve "a" for the cross lag after that, daemon 1 not.
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, ABSENT, 50, 60, lag=LAG, source="direct")]
    reads = [Read(E, "F|x", 90, 120, daemon=1)]
    fills = {"F|x": Fill(E, 100, daemon=1)}
    ok = History(writes=writes, reads=reads + [Read(E, "a", 130, 140, daemon=0)], fills=fills, cross_lag=LAG)
    assert kinds(ok) == []
    late = History(writes=writes, reads=reads + [Read(E, "a", 120 + LAG + 1, 120 + LAG + 5, daemon=0)], fills=fills,
                   cross_lag=LAG)
    assert kinds(late) == ["stale"]


# --- fences -------------------------------------------------------------------------------------------
#
# A set or delete through cached ends the entry's fill lock in Redis: a fill produced before it was sent
# can no longer be stored, on any daemon.


def fenced_history(*reads: Read, fences: bool = True, lag: int = 0) -> History:
    delete = Write(E, ABSENT, 20, 30, lag, "c1 delete" if fences else "direct DEL", daemon=0 if fences else None,
                   fences=fences)
    return History(writes=initial(E) + [delete], reads=list(reads), fills={"F|x": Fill(E, 10, daemon=1)}, cross_lag=LAG)


def test_fill_produced_before_a_delete_is_not_read_after_it() -> None:
    # Produced at 10, the delete sent at 20 and answered at 30; a read from the store after the delete
    # became visible cannot be explained by a fenced store (the register rule alone would accept it: the
    # fill's write ends at its first sighting).
    h = fenced_history(Read(E, "F|x", 30 + LAG + 1, 30 + LAG + 5, daemon=1))
    result = check(h)
    assert [v.kind for v in result.violations] == ["stale-fill"]
    assert result.violations[0].superseded_by is not None and result.violations[0].superseded_by.source == "c1 delete"
    # Through the daemon of the delete, at once.
    assert kinds(fenced_history(Read(E, "F|x", 31, 35, daemon=0))) == ["stale-fill"]
    # A fill answered "cached": false to a get that began after the delete completed is just as old.
    assert kinds(fenced_history(Read(E, "F|x", 31, 35, daemon=0, uncached_fill=True, uncached=True))) == ["stale-fill"]


def test_fill_read_within_the_cross_lag_or_before_the_delete_is_legal() -> None:
    assert kinds(fenced_history(Read(E, "F|x", 30 + LAG - 1, 30 + LAG + 5, daemon=1))) == []
    assert kinds(fenced_history(Read(E, "F|x", 12, 25, daemon=0))) == []
    assert kinds(fenced_history(Read(E, "F|x", 12, 25, daemon=0, uncached_fill=True, uncached=True))) == []


def test_direct_delete_does_not_fence_a_fill() -> None:
    # A direct DEL ends no lock: the fill may be stored after it (its write lasts until first seen).
    assert kinds(fenced_history(Read(E, "F|x", 30 + 2 * LAG, 30 + 2 * LAG + 5, daemon=1), fences=False, lag=LAG)) == []


def test_delete_sent_before_the_fill_was_produced_does_not_fence_it() -> None:
    h = History(writes=initial(E) + [Write(E, ABSENT, 5, 8, daemon=0, fences=True)],
                reads=[Read(E, "F|x", 9, 20, daemon=1), Read(E, "F|x", 500, 510, daemon=0)],
                fills={"F|x": Fill(E, 10, daemon=1)}, cross_lag=LAG)
    assert kinds(h) == []


# --- aged entries -------------------------------------------------------------------------------------
#
# ttl 1000 ms, stale window 500 ms, grace 0: Redis drops a value 1500 ms after it was stored. Times in ms.

AGING = {E: Aging(1000 * MS, 500 * MS)}
SLACK = 50 * MS


def aged(*reads: Read, writes: list[Write] | None = None) -> History:
    return History(writes=initial(E) + (writes if writes is not None else [Write(E, "a", 10 * MS, 20 * MS, daemon=0, expires=True)]),
                   reads=list(reads), aging=AGING, age_slack=SLACK)


def test_value_answered_after_it_expired() -> None:
    result = check(aged(Read(E, "a", 20 * MS + 1500 * MS + SLACK + 1, (20 + 1600) * MS, daemon=1, stale=True)))
    assert [v.kind for v in result.violations] == ["expired"]


def test_value_answered_stale_or_within_the_slack_is_legal() -> None:
    result = check(aged(Read(E, "a", 1200 * MS, 1210 * MS, daemon=0, stale=True),
                        Read(E, "a", 20 * MS + 1500 * MS + SLACK - 1, (20 + 1600) * MS, daemon=1, stale=True)))
    assert result.violations == [] and result.notes == {"write answered -32000 (nothing written) was read later": 0,
                                                       "fill answered cached:false, later read from the store": 0}
    assert 0 < result.latest_expiry_ms


def test_value_without_expiry_is_answered_any_time() -> None:
    h = aged(Read(E, "d", 10_000 * MS, 10_010 * MS, daemon=0), writes=[Write(E, "d", 10 * MS, 20 * MS, lag=LAG, source="direct SET")])
    assert kinds(h) == []


def test_stale_flags_are_noted() -> None:
    result = check(aged(Read(E, "a", 500 * MS, 510 * MS, daemon=0, stale=True), Read(E, "a", 1300 * MS, 1310 * MS, daemon=0)))
    assert result.violations == []
    assert result.notes["answered stale:true before its ttl"] == 1
    assert result.notes["answered without stale:true after its ttl"] == 1


def test_miss_after_expiry_is_explained() -> None:
    result = check(aged(Read(E, ABSENT, 1600 * MS, 1610 * MS, daemon=0)))
    assert result.violations == [] and result.notes["miss of an aged entry explained by its expiry"] == 1
    # Not before the value could have expired,
    assert kinds(aged(Read(E, ABSENT, 1000 * MS, 1100 * MS, daemon=0))) == ["stale"]
    # nor when a later write surely replaced it before it could expire,
    later = [Write(E, "a", 10 * MS, 20 * MS, daemon=0, expires=True), Write(E, "b", 30 * MS, 40 * MS, daemon=0, expires=True)]
    assert kinds(aged(Read(E, ABSENT, 1515 * MS, 1525 * MS, daemon=0), writes=later)) == ["stale"]
    assert kinds(aged(Read(E, ABSENT, 1600 * MS, 1610 * MS, daemon=0), writes=later)) == []
    # nor for a value written without an expiry,
    direct = [Write(E, "d", 10 * MS, 20 * MS, lag=LAG, source="direct SET")]
    assert kinds(aged(Read(E, ABSENT, 5000 * MS, 5010 * MS, daemon=0), writes=direct)) == ["stale"]
    # nor after a write that followed the expiry became visible.
    after = [Write(E, "a", 10 * MS, 20 * MS, daemon=0, expires=True), Write(E, "c", 1600 * MS, 1700 * MS, daemon=0, expires=True)]
    assert kinds(aged(Read(E, ABSENT, 1800 * MS, 1810 * MS, daemon=0), writes=after)) == ["stale"]


def test_fencing_write_lost_in_a_failover_does_not_fence() -> None:
    # The fill was stored on the old master and replicated; the delete that fenced it was acknowledged by
    # the old master and lost: after the promotion the fill is the entry's value again.
    h = History(writes=initial(E) + [Write(E, ABSENT, 800, 900, daemon=0, fences=True, source="c1 delete")],
                reads=[Read(E, "F|x", PROMOTED + LAG + 10, PROMOTED + LAG + 20, daemon=1)],
                fills={"F|x": Fill(E, 700, daemon=1)}, failovers=[failover({E: "F|x"})], cross_lag=LAG)
    assert kinds(h) == []
    # A delete sent after the promotion fences it again.
    h.writes.append(Write(E, ABSENT, PROMOTED + 100, PROMOTED + 200, daemon=0, fences=True, source="c1 delete"))
    h.reads.append(Read(E, "F|x", PROMOTED + 200 + LAG + 1, PROMOTED + 200 + LAG + 9, daemon=1))
    assert kinds(h) == ["stale-fill"]


# --- the staleness bound ------------------------------------------------------------------------------
#
# With ``max_staleness = S`` a write not made through the reading daemon (direct, another daemon's) gets the
# lag S + slack; through the reading daemon it keeps lag 0. Without a bound (S = 0) the old allowance.

S = 500 * MS
SLACK = 50 * MS
BOUND = staleness_lag(S, SLACK, LAG)


def test_staleness_lag_is_the_bound_plus_the_slack_or_the_old_allowance() -> None:
    assert BOUND == 550 * MS
    assert staleness_lag(0, SLACK, LAG) == LAG


def test_read_beyond_the_bound_after_a_direct_write_is_stale() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "d", 30, 40, lag=BOUND, source="direct SET")]
    h = History(writes=writes, reads=[Read(E, "a", 40 + S + SLACK + 1 * MS, 40 + S + SLACK + 2 * MS, daemon=0)])
    assert kinds(h) == ["stale"]


def test_read_within_the_bound_after_a_direct_write_is_legal_and_measured() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "d", 30, 40, lag=BOUND, source="direct SET")]
    h = History(writes=writes, reads=[Read(E, "a", 40 + S - 1 * MS, 40 + S, daemon=0)])
    result = check(h)
    assert result.violations == []
    # Not a violation, but stale: the direct write had been acknowledged S - 1 ms before the read was sent.
    assert [(x.read.value, x.overwrite.value, x.ns) for x in result.staleness] == [("a", "d", S - 1 * MS)]


def test_bound_applies_to_another_daemons_writes_not_to_the_readers_own() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "b", 30, 40, daemon=0)]
    within = Read(E, "a", 40 + S - 1 * MS, 40 + S, daemon=1)
    beyond = Read(E, "a", 40 + S + SLACK + 1 * MS, 40 + S + SLACK + 2 * MS, daemon=1)
    own = Read(E, "a", 41, 50, daemon=0)
    assert kinds(History(writes=writes, reads=[within], cross_lag=BOUND)) == []
    assert kinds(History(writes=writes, reads=[beyond], cross_lag=BOUND)) == ["stale"]
    assert kinds(History(writes=writes, reads=[own], cross_lag=BOUND)) == ["stale"]


def test_without_a_bound_the_old_allowance_holds() -> None:
    lag = staleness_lag(0, SLACK, LAG)
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "d", 30, 40, lag=lag, source="direct SET")]
    assert kinds(History(writes=writes, reads=[Read(E, "a", 40 + LAG - 1, 40 + LAG, daemon=0)])) == []
    assert kinds(History(writes=writes, reads=[Read(E, "a", 40 + LAG + 1, 40 + LAG + 2, daemon=0)])) == ["stale"]


def test_staleness_is_measured_only_for_replaced_values() -> None:
    writes = initial(E) + [Write(E, "a", 10, 20, daemon=0), Write(E, "b", 30, INF, daemon=0, source="unknown"),
                           Write(E, "c", 100, 200, daemon=0)]
    reads = [
        Read(E, "a", 25, 28, daemon=0),  # nothing replaced it yet
        Read(E, "a", 35, 38, daemon=0),  # "b" may never have happened: not measured (and legal)
        Read(E, "c", 300, 310, daemon=0),  # the latest value
        Read(E, "a", 250, 260, daemon=0),  # "c" was acknowledged 50 before: measured (and a violation)
    ]
    result = check(History(writes=writes, reads=reads))
    assert [v.read.start for v in result.violations] == [250]
    assert [(x.read.start, x.ns) for x in result.staleness] == [(250, 50)]
