"""The history check of the coherence checker: is every read explained by some write?

Each entry (one Redis string key, or one field of a Redis hash) is a *register*. The checker records
what every client did to it, with instants from ``time.monotonic_ns()`` (one clock for every process
on the host):

- a **write** sets the register to a value, or to ``ABSENT`` (a delete, a Redis restart, the initial
  state). Its interval ``[invoke, respond]`` runs from just before the request was sent to just after
  its answer was read. A write whose outcome is unknown (an error answer, a dropped connection, no
  answer at all) has ``respond = +inf``: it may take effect at any instant after ``invoke``, or never.
  A write's ``lag`` is the time Redis may take to tell ``cached`` about it (0 for writes made through
  ``cached``, which drops its own local copy before writing; ``LAG`` for writes made directly to Redis
  and for restarts, whose invalidations arrive asynchronously on another connection).
- a **read** ``[start, end]`` returned one value (or ``ABSENT``).

Every written value is unique, so a value read names the write it came from. Values of *refused*
writes (``set`` with a lease answered ``{"stored": false}``) must never be read.

**The rule.** A read ``r = [s, e]`` of value ``v`` is a violation unless some write ``w`` of ``v`` to
the same entry (for ``ABSENT``: any ``ABSENT`` write to it) satisfies both

1. ``invoke(w) <= e``, and
2. no other write ``w2`` to the entry has ``invoke(w2) > respond(w)`` and ``respond(w2) + lag(w2) < s``.

**Why the rule is sound** (it never flags a history that a correct cache could produce). A correct
cache behaves like a register in which every write takes effect at one instant ``p(w)`` inside its
interval (``invoke(w) <= p(w) <= respond(w)``; for an unknown outcome ``p(w)`` may be anywhere after
``invoke(w)``, or nowhere), becomes visible to reads made through ``cached`` at the latest at
``respond(w) + lag(w)``, and every read returns the value of the latest write visible at one instant
``p(r)`` inside ``[s, e]``. Suppose such an execution explains a read ``r`` of ``v``, written by ``w``.
Then ``w`` took effect before ``r`` returned: ``invoke(w) <= p(w) <= p(r) <= e``, which is condition 1
(recorded instants are taken outside the true ones: ``invoke`` before the send, ``e`` after the answer,
so the inequality holds for the recorded numbers too). If some ``w2`` had ``invoke(w2) > respond(w)``
and ``respond(w2) + lag(w2) < s``, then ``w2`` took effect after ``w`` (``p(w2) >= invoke(w2) >
respond(w) >= p(w)``) and was visible before ``r`` began (``<= respond(w2) + lag(w2) < s <= p(r)``),
so ``r`` would have returned ``w2``'s value or a later one, not ``v``: a contradiction; so condition 2
holds. For ``ABSENT`` the same argument applies to whichever ``ABSENT`` write explains the read.
Hence a flagged read cannot be explained by any such execution. The rule is not complete (it checks
each read on its own, not that one order explains all reads at once), so it may miss some anomalies;
it never reports a false one, given the lag assumption for direct writes.

**Fills by a sync handler.** The handler's value embeds the instant it was produced (``invoke``); the
daemon stores it before answering, so it is in Redis before any answer carrying it (or any later read
of it) returns: ``respond`` is the earliest end of the reads that saw it, other than answers marked
``"cached": false``. An answer marked ``"cached": false`` says the value was not stored: it is legal for
the reads that carried it straight from the fill (they are checked only for the value having been
produced, for that entry, before the read ended), and it is not a write others may be shown. If another
read later returns such a value from the store, the daemon did store it after all (for instance its
``SET`` ran but the connection was killed before the reply): that read is checked against a write with
the same rule, and the case is counted in ``notes`` (the answer's ``"cached": false`` was wrong).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Final, Optional

#: The value of an entry that does not exist (deleted, never written, lost in a restart).
ABSENT: Final = None

INF: Final = math.inf

Value = Optional[str]


@dataclass(slots=True)
class Write:
    """One write of ``value`` (``ABSENT``: a delete) to ``entry``."""

    entry: str
    value: Value
    invoke: int
    respond: float  # nanoseconds; INF when the outcome is unknown
    lag: int = 0
    source: str = ""
    #: The write's error answer said nothing was written (-32000, store unavailable).
    claimed_unwritten: bool = False


@dataclass(slots=True)
class Read:
    """One read of ``entry`` that returned ``value`` (``ABSENT``: a miss)."""

    entry: str
    value: Value
    start: int
    end: int
    source: str = ""
    #: The answer of a handler fill marked ``"cached": false`` (the value was not stored).
    uncached_fill: bool = False


@dataclass(slots=True)
class Fill:
    """A value a sync handler produced for ``entry`` at ``produced`` (a ``monotonic_ns`` instant)."""

    entry: str
    produced: int


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    #: Values of refused writes, with their entry.
    refused: dict[str, str] = field(default_factory=dict)
    #: Handler fill values by value.
    fills: dict[str, Fill] = field(default_factory=dict)


@dataclass(slots=True)
class Violation:
    #: "stale" (superseded), "refused-value", "never-written", "wrong-entry", "before-write".
    kind: str
    read: Read
    #: The write that produced the value read, if any.
    write: Optional[Write] = None
    #: The write that had completed (plus its lag) before the read began, after ``write`` completed.
    superseded_by: Optional[Write] = None


@dataclass
class Result:
    violations: list[Violation]
    reads_checked: int
    writes_checked: int
    #: Counts of facts that are not violations but worth a look (see the module documentation).
    notes: dict[str, int]
    note_examples: dict[str, list[str]]


class _EntryIndex:
    """The writes of one entry, sorted by invoke, with the suffix minimum of ``respond + lag``."""

    def __init__(self, writes: list[Write]) -> None:
        self.writes = sorted(writes, key=lambda w: w.invoke)
        self.invokes = [w.invoke for w in self.writes]
        n = len(self.writes)
        self.suffix_min: list[float] = [INF] * (n + 1)
        self.suffix_arg: list[int] = [-1] * (n + 1)
        for i in range(n - 1, -1, -1):
            visible = self.writes[i].respond + self.writes[i].lag
            if visible < self.suffix_min[i + 1]:
                self.suffix_min[i] = visible
                self.suffix_arg[i] = i
            else:
                self.suffix_min[i] = self.suffix_min[i + 1]
                self.suffix_arg[i] = self.suffix_arg[i + 1]

    def earliest_visible_after(self, instant: float) -> tuple[float, Optional[Write]]:
        """Among writes invoked strictly after ``instant``: the least ``respond + lag``, and its write."""
        i = bisect.bisect_right(self.invokes, instant)
        arg = self.suffix_arg[i]
        return self.suffix_min[i], (self.writes[arg] if arg >= 0 else None)


class _Candidates:
    """The writes of one (entry, value), sorted by invoke, with the prefix maximum of respond.

    For a read ending at ``e``, the candidate with the greatest ``respond`` among those invoked by ``e``
    is the one hardest to supersede (the set of writes invoked after ``respond`` only shrinks as
    ``respond`` grows), so it alone decides condition 2.
    """

    def __init__(self, writes: list[Write]) -> None:
        self.writes = sorted(writes, key=lambda w: w.invoke)
        self.invokes = [w.invoke for w in self.writes]
        self.prefix_best: list[int] = []
        best = -1
        for i, w in enumerate(self.writes):
            if best < 0 or w.respond > self.writes[best].respond:
                best = i
            self.prefix_best.append(best)

    def best_invoked_by(self, end: int) -> Optional[Write]:
        j = bisect.bisect_right(self.invokes, end)
        return self.writes[self.prefix_best[j - 1]] if j > 0 else None


def _fill_writes(history: History) -> tuple[list[Write], dict[str, int]]:
    """Turns handler fills into writes: invoke = production, respond = first stored sighting."""
    first_seen: dict[str, int] = {}
    uncached_seen: set[str] = set()
    for r in history.reads:
        if r.value is None or r.value not in history.fills:
            continue
        if r.uncached_fill:
            uncached_seen.add(r.value)
        else:
            prev = first_seen.get(r.value)
            if prev is None or r.end < prev:
                first_seen[r.value] = r.end
    writes: list[Write] = []
    for value, fill in history.fills.items():
        respond = first_seen.get(value)
        writes.append(Write(fill.entry, value, fill.produced, INF if respond is None else respond, 0, "fill"))
    notes = {"fill answered cached:false, later read from the store": len(uncached_seen & first_seen.keys())}
    return writes, notes


def check(history: History, max_examples: int = 5) -> Result:
    """Checks every read of ``history`` against the rule of the module documentation."""
    fill_writes, notes = _fill_writes(history)
    all_writes = history.writes + fill_writes
    by_entry: dict[str, list[Write]] = {}
    by_value: dict[tuple[str, Value], list[Write]] = {}
    value_entries: dict[str, str] = {}
    for w in all_writes:
        by_entry.setdefault(w.entry, []).append(w)
        by_value.setdefault((w.entry, w.value), []).append(w)
        if w.value is not None:
            value_entries[w.value] = w.entry
    entries = {name: _EntryIndex(ws) for name, ws in by_entry.items()}
    candidates = {k: _Candidates(ws) for k, ws in by_value.items()}

    violations: list[Violation] = []
    claimed_unwritten_seen: set[str] = set()
    examples: dict[str, list[str]] = {}
    for r in history.reads:
        if r.uncached_fill:
            fill = history.fills.get(r.value) if r.value is not None else None
            if fill is None:
                violations.append(Violation("never-written", r))
            elif fill.entry != r.entry:
                violations.append(Violation("wrong-entry", r))
            elif fill.produced > r.end:
                violations.append(Violation("before-write", r))
            continue
        cands = candidates.get((r.entry, r.value))
        if cands is None:
            if r.value is not None and r.value in history.refused:
                violations.append(Violation("refused-value", r))
            elif r.value is not None and r.value in value_entries:
                violations.append(Violation("wrong-entry", r))
            else:
                violations.append(Violation("never-written", r))
            continue
        best = cands.best_invoked_by(r.end)
        if best is None:
            violations.append(Violation("before-write", r, cands.writes[0]))
            continue
        w = best
        visible, w2 = entries[r.entry].earliest_visible_after(w.respond)
        if visible < r.start:
            violations.append(Violation("stale", r, w, w2))
            continue
        if w.claimed_unwritten and w.value is not None and w.value not in claimed_unwritten_seen:
            claimed_unwritten_seen.add(w.value)
            ex = examples.setdefault("write answered -32000 (nothing written) was read later", [])
            if len(ex) < max_examples:
                ex.append(f"{w.entry} {w.value!r} by {w.source}")
    notes["write answered -32000 (nothing written) was read later"] = len(claimed_unwritten_seen)
    return Result(violations, len(history.reads), len(all_writes), notes, examples)
