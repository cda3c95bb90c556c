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

**Daemons.** Several daemons may share one Redis; every write and read names the daemon it went through
(``None``: directly to Redis). A daemon drops its own local copy before it writes, so a write through it has
no lag for reads through it; another daemon learns of that write from Redis's invalidation, which comes
asynchronously on another connection, exactly like a direct write's. So a write through daemon ``A``
becomes visible to reads through daemon ``B`` at the latest ``respond + max(lag, cross_lag)``
(``visible_to``); the soundness argument above holds per reading daemon with that visibility instant. A fill
is a write of the daemon whose worker produced it (the value says which): that daemon stores it, and drops
its local copy first.

**Staleness bound** (``[local_cache] max_staleness = S``: ``staleness_lag``). Without a bound, a daemon
whose path to Redis silently stops delivering (every packet dropped, nothing closed) or that is stopped keeps
answering from its local copy, and its clients' near caches keep answering, for as long as the fault lasts:
no lag explains that. With the bound the daemon promises that a hit (from its local copy, or from a near
cache fed by it) is at most ``S`` behind Redis, whatever the fault: it serves a hit only while it holds a
*proof* at most ``S`` old, an instant ``P`` such that every invalidation Redis sent before ``P`` has been
applied (the reply to a heartbeat sent at ``P`` follows, on the same connection, every invalidation Redis
wrote before it; a near cache checks the daemon's proof page before it drains its socket). Redis sends a
write's invalidation before it acknowledges the write, so a hit at ``T`` of a value a write ``w2``
replaced has ``P <= respond(w2)`` (else the invalidation would have been applied) and ``T - P <= S``: ``T <=
respond(w2) + S``. So a write not made through the reading daemon (direct writes, restarts, failover
resets, another daemon's writes and fills) gets ``lag = S + slack`` there; a write through the reading
daemon keeps lag 0 (the daemon drops its own copy before it answers). With ``S = 0`` (no bound) the
allowances of old apply (``--direct-lag-ms``, ``--cross-lag-ms``), which a correct daemon meets under the
faults that close connections.

*Why a slack at all.* The argument holds for the true instants, and the recorded ones lie on the safe side
of them (a read's start is taken before its request is written, a write's respond after its answer is
read), but they are taken in Python around awaits, and the instants the bound is enforced with are taken the
same way on the other side: the daemon reads its clock for a proof when it issues the heartbeat, not when
the bytes leave, and tests a proof's age when it handles a request, a scheduling turn away from the answer;
a near cache reads the proof page and the clock some instructions apart, and the checker's own near-cache
reads run between awaits of its event loop. Each of these is off by an event-loop turn (a few ms; more on
this machine's slow wake-ups): the slack (``--staleness-slack-ms``, default 50 ms) absorbs them, and is far
below what a bound that is not enforced shows (the fault's whole length, seconds).

**Staleness measured.** Besides the violations, ``check`` measures every read of a value that an
acknowledged write had already replaced before the read began (``Result.staleness``): by how much the
earliest such write's ``respond`` preceded the read's ``start``, lags ignored (the value read is taken as
written by the candidate write hardest to supersede, as in rule 2). Reads within the lag are legal and
measured too: this is the figure the bound limits.

**Fences.** With the fleet's fill lock, a ``set``, ``delete`` or ``deleteHash`` through ``cached`` (any daemon)
ends the entry's lock in the same Redis script, and a fill is stored only by a script that checks that its
token still holds the lock; the lock is taken before the handler is called. So a fill produced at ``p``
cannot be stored after a write ``w2`` through ``cached`` that was sent after ``p`` (``w2`` took effect after
the lock was taken, ending it, before the fill's store). Hence a read of the fill is also a violation
(``stale-fill``) when such a ``w2`` was visible (as above) before the read began: the register rule alone
would accept it, since a fill's write lasts until its first sighting. The rule is applied to fills answered
``"cached": false`` too: a get that began after such a write was visible must not be handed a value produced
before it (a flight that started before a write may answer only the gets that joined it before the write
was visible). Direct writes and restarts
end no lock and fence nothing; nor does a write that a failover may have lost (sent before the promotion of a
failover of the entry's master that came before the read). A daemon that cannot take the lock (``waitsGaveUp``, or Redis failed the lock)
stores nothing, and answers its value only to the gets that were waiting before it called the handler
(``unfencedFills``), so this rule holds for it too.

**Aged entries** (a ``stale_ttl``, ``grace`` or early refresh: ``History.aging``). Redis keeps each value
stored by ``cached`` (or by a direct ``SET ... PX`` with the same lifetime: ``Write.expires``) for
``ttl + stale_ttl + grace`` after it took effect, then drops it: an expiry, which is not a write of anyone.
A ``"stale": true`` answer is old with respect to time, not to writes: it is checked like any read (a
write or delete through any daemon replaces or removes the entry at once). Besides:

- ``expired``: a value answered when its read began more than ``age_slack`` after its write's ``respond``
  plus the lifetime (Redis had dropped it; ``age_slack`` covers the daemon dating its copy from a reply);
- a miss (an aged key's get is a miss only on the plain-read path) may be explained by the expiry of the
  value of a write ``w`` that was not surely replaced before it expired: like a write of ``ABSENT`` in
  ``[invoke(w) + lifetime, respond(w) + lifetime]`` (minus 1 ms: Redis counts in milliseconds), checked with
  rule 2; such writes only explain misses, they supersede nothing (the expiry happens only if no write
  came first, which the register rule cannot know);
- notes, not violations: an answer without ``"stale": true`` after ``respond + ttl + age_slack``, and one
  with it before ``invoke + ttl - stale_early_slack`` (a daemon dates a value from when it sent the read
  that learnt its remaining time, so it may turn stale early by as long as that read took).

What cannot be checked here: whether an answer in the stale window should have been fresh because a
refresh had just stored a newer value is covered by rule 2 (the refresh's value is a fill); how many
refreshes ran, whether exactly one ran fleet-wide per window, and whether an early refresh came at the
right moment are counted (``stats.fleet``, the handler calls), not checked; grace answers after a failed
refresh cannot happen with a worker that never fails (only through timeouts and faults).

**Failovers** (Sentinel topology). The master is killed (``kill -9``) and a Sentinel promotes its replica,
which holds what asynchronous replication had delivered before the kill: writes the old master
acknowledged may be gone. A :class:`Failover` records, for every entry, the value the promoted replica
holds, and ``check`` models the failover as one more write per entry, a *reset* to that value by a
synthetic writer, with ``lag`` (``cached`` learns of the failover asynchronously, like a restart).

*Exact snapshot.* After the old master is dead and the replica's link to it is down (it has applied all
it will ever receive), the checker reads every entry from the replica inside one ``MULTI`` together with
``ROLE``; if ``ROLE`` still answers ``slave``, those values are exactly the new master's state at its
promotion ``P``, and ``P`` came after that read, which began at ``frozen`` (the send of ``EXEC``); a
Sentinel naming the new master at ``promoted`` shows ``P <= promoted``. The reset is the write
``[frozen, promoted]``. It is sound: the store's true history is the old master's writes (all before the
kill), then the new master's initial state at ``P``, then the new master's writes (all after ``P``); in
between nothing can write (the old master is dead, the replica read-only). A reset write of each
entry's promoted value taking effect at ``P`` turns that history into a register history in which
every write takes effect inside its interval, which is all the rule's soundness argument above needs.
Lost writes are then just writes the reset supersedes: a stale local copy of a lost value served after
``promoted + lag`` is flagged ``stale``; the surviving value (even if an older write, superseded before
the kill by a lost one) is explained by the reset. Writes whose intervals overlap ``[kill, promoted]``
need no special care: their true instant is before the kill or after ``P``, both inside their interval.

*Inexact snapshot.* If the replica was already promoted when read (the checker was too slow), the values
are the new master's at some instant of ``[frozen, promoted]``, which other writes may have followed
``P``. The reset is then the write ``[killed, promoted]`` (an instant at which the entry held that value)
and every read that overlaps ``[killed, promoted + lag]`` is excused (not checked, counted): in that
window the entry may hold the unknown value it had at ``P``. Later reads are checked as usual.

*Lost writes* are counted, not flagged: an acknowledged write (``respond <
killed``) to an entry is *lost* if it was invoked after every write of the surviving value had
responded (so it surely took effect after the surviving write, and before the kill): such a write is
in no prefix of the old master's history that ends with the surviving value. This is a lower bound
(a write of the surviving value with an unknown outcome, or overlapping writes, leave the order open).
After an inexact snapshot, entries that a write may have changed between the kill and the read are not
judged (``loss_unknown``).
A surviving value that no write made before the kill explains (never written, a refused value, another
entry's value) is reported in ``failover_unexplained``.

*Cluster* (one shard fails over). A Redis Cluster failover promotes the replica of one primary: only the
entries whose slots that primary served can lose writes or change. ``values`` then holds those entries
only: the reset writes, the lost-write count and the excused window of an inexact snapshot concern them
alone, and every other entry is checked as usual across the failover. A cluster refuses a ``MULTI`` whose
keys lie in several slots, so there the exact snapshot is a pipeline ``ROLE``, the reads, ``ROLE`` on a
``READONLY`` connection: both ``ROLE``s saying ``slave`` (with the link down and two such snapshots 30 ms
apart agreeing) bracket the reads before the promotion, and the argument above holds unchanged. A
reshard moves keys with ``MIGRATE`` (atomic per key: the key's value never changes), so it needs no
modelling.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Optional

#: The value of an entry that does not exist (deleted, never written, lost in a restart).
ABSENT: Final = None

INF: Final = math.inf
MS: Final = 1_000_000

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
    #: The daemon it went through (None: not through ``cached``: direct writes, restarts, failover resets).
    daemon: Optional[int] = None
    #: A ``set``, ``delete`` or ``deleteHash`` through ``cached``: it ends the entry's fill lock in Redis in
    #: the same step, so no fill in flight on any daemon stores its value after it (*Fences*).
    fences: bool = False
    #: Stored with its key's whole lifetime in Redis (``ttl + stale_ttl + grace``) on an aged entry (*Aged
    #: entries*).
    expires: bool = False


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
    #: Any answer marked ``"cached": false`` (also a lease waiter handed the holder's value whose store
    #: failed): the value did not come from the store.
    uncached: bool = False
    #: The daemon that answered (None: read from Redis directly).
    daemon: Optional[int] = None
    #: The answer was marked ``"stale": true``.
    stale: bool = False


@dataclass(slots=True)
class Fill:
    """A value a sync handler produced for ``entry`` at ``produced`` (a ``monotonic_ns`` instant)."""

    entry: str
    produced: int
    #: The daemon whose handler worker produced it (the one that stores it), when the value says so.
    daemon: Optional[int] = None


@dataclass(slots=True)
class Aging:
    """An aged entry's phases (nanoseconds): fresh for ``ttl`` after it is stored, then stale for ``stale``,
    then in grace for ``grace``; then Redis drops it."""

    ttl: int
    stale: int
    grace: int = 0

    @property
    def total(self) -> int:
        return self.ttl + self.stale + self.grace


@dataclass(slots=True)
class Failover:
    """A master killed and its replica promoted, with every entry's value on the promoted replica."""

    #: Just before the kill: a write that responded earlier had taken effect on the old master.
    killed: int
    #: The old master was dead (reaped): a write invoked later never reached it.
    dead: int
    #: Exact: just before the ``EXEC`` that read ``values`` from the replica (the promotion came later).
    #: Inexact: just before the read of ``values`` from the already promoted new master.
    frozen: int
    #: A Sentinel named the new master (exact), or the read of ``values`` had returned (inexact).
    promoted: int
    #: Entry name -> value (``ABSENT``) on the promoted replica: every entry (Sentinel), or the entries of
    #: the failed shard (cluster).
    values: dict[str, Value]
    #: True: read from the replica before its promotion (see the module documentation).
    exact: bool = True
    lag: int = 0
    source: str = "failover"

    def reset_writes(self) -> list[Write]:
        """The synthetic writes that model the failover: each entry reset to its promoted value."""
        invoke = self.frozen if self.exact else self.killed
        return [Write(entry, value, invoke, self.promoted, self.lag, self.source + ": new master's value")
                for entry, value in self.values.items()]


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    #: Values of refused writes, with their entry.
    refused: dict[str, str] = field(default_factory=dict)
    #: Handler fill values by value.
    fills: dict[str, Fill] = field(default_factory=dict)
    #: Failovers of the Redis master, in order.
    failovers: list[Failover] = field(default_factory=list)
    #: How long a write through one daemon may stay invisible to reads through another (its invalidation
    #: reaches the other daemon asynchronously, as a direct write's does).
    cross_lag: int = 0
    #: Aged entries (a ``stale_ttl``, ``grace`` or early refresh), by entry name.
    aging: dict[str, Aging] = field(default_factory=dict)
    #: How late after its latest possible expiry an aged value may still be answered (the daemon dates a
    #: local copy from the ``PTTL`` reply's arrival, a little after Redis computed it).
    age_slack: int = 0
    #: How early before its ttl an aged value may be answered ``"stale": true`` without a note: a daemon
    #: dates an entry from when it sent the read that learnt its remaining time (``PTTL``), so it may turn
    #: stale early by as long as that read took (at most the command timeout).
    stale_early_slack: int = 0


@dataclass(slots=True)
class Violation:
    #: "stale" (superseded), "stale-fill" (a fill produced before a write through ``cached`` that was
    #: visible before the read), "expired" (an aged value answered after Redis dropped it),
    #: "refused-value", "never-written", "wrong-entry", "before-write".
    kind: str
    read: Read
    #: The write that produced the value read, if any.
    write: Optional[Write] = None
    #: The write that had completed (plus its lag) before the read began, after ``write`` completed.
    superseded_by: Optional[Write] = None


@dataclass(slots=True)
class LostWrite:
    """Acknowledged writes to ``entry`` that a failover lost: the promoted replica never had them."""

    failover: int  # index in ``History.failovers``
    entry: str
    survived: Value
    #: The write of the surviving value that responded last before the kill (None: never written).
    survived_write: Optional[Write]
    #: The lost writes, oldest first.
    lost: list[Write]


@dataclass(slots=True)
class Unexplained:
    """A value on a promoted replica that no write invoked before the kill explains."""

    failover: int
    entry: str
    value: Value
    #: "never-written", "refused-value" or "wrong-entry".
    kind: str


@dataclass(slots=True)
class Staleness:
    """A read of a value that an acknowledged write had replaced before the read began (*Staleness measured*)."""

    read: Read
    #: The write whose value was read (the candidate hardest to supersede).
    write: Write
    #: The earliest acknowledged write invoked after ``write`` responded.
    overwrite: Write
    #: ``read.start - overwrite.respond`` (ns, > 0).
    ns: int


@dataclass
class Result:
    violations: list[Violation]
    reads_checked: int
    writes_checked: int
    #: Counts of facts that are not violations but worth a look (see the module documentation).
    notes: dict[str, int]
    note_examples: dict[str, list[str]]
    #: Per failover and entry, the acknowledged writes it surely lost (a lower bound).
    lost_writes: list[LostWrite] = field(default_factory=list)
    #: Surviving values no write explains.
    failover_unexplained: list[Unexplained] = field(default_factory=list)
    #: Reads not checked because an inexact failover snapshot left their entry's value open.
    excused_reads: int = 0
    #: Per failover: entries whose loss could not be judged (inexact snapshot, writes in the window).
    loss_unknown: list[int] = field(default_factory=list)
    #: Aged entries: the latest an answer came after its value's latest possible expiry, within the slack (ms).
    latest_expiry_ms: float = 0.0
    #: Aged entries: examples of the notes about the ``stale`` flag (the read, the write of its value).
    aging_examples: dict[str, list[tuple[Read, Write]]] = field(default_factory=dict)
    #: Aged entries: the longest a ``"stale": true`` answer came before its value's ttl could end (ms; INF
    #: for a value without expiry).
    earliest_stale_ms: float = 0.0
    #: Every read of an already replaced value, violation or not (*Staleness measured*).
    staleness: list[Staleness] = field(default_factory=list)


def staleness_lag(max_staleness: int, slack: int, unbounded_lag: int) -> int:
    """The lag of a write not made through the reading daemon (direct writes, restarts, failover resets,
    another daemon's writes; ns): ``max_staleness + slack`` when the daemon has a staleness bound
    (``max_staleness > 0``), else ``unbounded_lag`` (the allowance without a bound). See *Staleness bound*."""
    return max_staleness + slack if max_staleness > 0 else unbounded_lag


def visible_to(w: Write, reader: Optional[int], cross_lag: int, lagless: bool = False) -> float:
    """The instant from which reads through daemon ``reader`` (None: straight from Redis) must see ``w``
    or a later write: ``respond + lag``, where a write through another daemon gets at least ``cross_lag``
    (``lagless``: ``respond``, to measure staleness)."""
    if lagless:
        return w.respond
    lag = w.lag
    if cross_lag and w.daemon is not None and reader is not None and w.daemon != reader:
        lag = max(lag, cross_lag)
    return w.respond + lag


class _EntryIndex:
    """The writes of one entry, sorted by invoke, with the suffix minimum of the instant each becomes
    visible to reads through daemon ``reader`` (``visible_to``)."""

    def __init__(self, writes: list[Write], reader: Optional[int] = None, cross_lag: int = 0,
                 lagless: bool = False) -> None:
        self.writes = sorted(writes, key=lambda w: w.invoke)
        self.invokes = [w.invoke for w in self.writes]
        n = len(self.writes)
        self.suffix_min: list[float] = [INF] * (n + 1)
        self.suffix_arg: list[int] = [-1] * (n + 1)
        for i in range(n - 1, -1, -1):
            visible = visible_to(self.writes[i], reader, cross_lag, lagless)
            if visible < self.suffix_min[i + 1]:
                self.suffix_min[i] = visible
                self.suffix_arg[i] = i
            else:
                self.suffix_min[i] = self.suffix_min[i + 1]
                self.suffix_arg[i] = self.suffix_arg[i + 1]

    def earliest_visible_after(self, instant: float) -> tuple[float, Optional[Write]]:
        """Among writes invoked strictly after ``instant``: the least visible instant, and its write."""
        i = bisect.bisect_right(self.invokes, instant)
        arg = self.suffix_arg[i]
        return self.suffix_min[i], (self.writes[arg] if arg >= 0 else None)


class _Indexes:
    """``_EntryIndex`` per (entry, reading daemon), built when first needed, over some writes."""

    def __init__(self, by_entry: dict[str, list[Write]], cross_lag: int, lagless: bool = False) -> None:
        self.by_entry = by_entry
        self.cross_lag = cross_lag
        #: Every write visible at its respond, to every reader (staleness is measured with it).
        self.lagless = lagless
        self.built: dict[tuple[str, Optional[int]], _EntryIndex] = {}

    def get(self, entry: str, reader: Optional[int]) -> _EntryIndex:
        key = (entry, reader if self.cross_lag and not self.lagless else None)
        index = self.built.get(key)
        if index is None:
            index = self.built[key] = _EntryIndex(self.by_entry.get(entry, []), key[1], self.cross_lag, self.lagless)
        return index


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


def _fill_writes(history: History) -> tuple[list[Write], dict[str, Write], dict[str, int]]:
    """Turns handler fills into writes: invoke = production, respond = first stored sighting. Also returns
    them by value."""
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
    by_value: dict[str, Write] = {}
    for value, fill in history.fills.items():
        respond = first_seen.get(value)
        w = Write(fill.entry, value, fill.produced, INF if respond is None else respond, 0,
                  "fill" if fill.daemon is None else "fill by d%d" % fill.daemon, daemon=fill.daemon,
                  expires=fill.entry in history.aging)
        writes.append(w)
        by_value[value] = w
    notes = {"fill answered cached:false, later read from the store": len(uncached_seen & first_seen.keys())}
    return writes, by_value, notes


def _expiry_explains(r: Read, index: _EntryIndex, aging: Aging) -> bool:
    """Whether Redis dropping an aged value when its lifetime ended explains the miss ``r`` (module
    documentation, *Aged entries*)."""
    for i in range(len(index.writes) - 1, -1, -1):
        w = index.writes[i]
        if w.value is None or not w.expires or w.invoke + aging.total - MS > r.end:
            continue
        expiry_respond = w.respond + aging.total
        # Surely overwritten before its expiry: a write invoked after it responded and answered before
        # it could expire.
        j = bisect.bisect_right(index.invokes, w.respond)
        if any(x.respond < w.invoke + aging.total for x in index.writes[j:]
               if x.invoke < w.invoke + aging.total):
            continue
        visible, _ = index.earliest_visible_after(expiry_respond)
        if visible >= r.start:
            return True
    return False


def _best_before(cands: Optional["_Candidates"], dead: int, own: Optional[Write]) -> Optional[Write]:
    """Among the writes of one value invoked before ``dead`` (``own`` left out): the latest to respond."""
    if cands is None:
        return None
    best = cands.best_invoked_by(dead - 1)
    if best is not None and best is own:
        j = bisect.bisect_right(cands.invokes, dead - 1)
        others = [w for w in cands.writes[:j] if w is not own]
        best = max(others, key=lambda w: w.respond) if others else None
    return best


def _failover_losses(
    history: History, resets: list[list[Write]], entries: dict[str, "_EntryIndex"],
    candidates: dict[tuple[str, Value], "_Candidates"], value_entries: dict[str, str],
) -> tuple[list[LostWrite], list[Unexplained], list[int]]:
    """The lost writes of every failover (module documentation, *Lost writes*)."""
    lost_writes: list[LostWrite] = []
    unexplained: list[Unexplained] = []
    unknown: list[int] = []
    for n, f in enumerate(history.failovers):
        undecided = 0
        own_by_entry = {w.entry: w for w in resets[n]}
        for entry, survived in f.values.items():
            index = entries.get(entry)
            own = own_by_entry.get(entry)
            if not f.exact and index is not None and any(
                    w.invoke <= f.promoted and w.respond >= f.killed and w is not own for w in index.writes):
                # The value read may come from a write after the promotion: not judged.
                undecided += 1
                continue
            best = _best_before(candidates.get((entry, survived)), f.dead, own)
            if best is None:
                kind = "never-written"
                if survived is not None and survived in history.refused:
                    kind = "refused-value"
                elif survived is not None and value_entries.get(survived, entry) != entry:
                    kind = "wrong-entry"
                unexplained.append(Unexplained(n, entry, survived, kind))
                continue
            if best.respond == INF or index is None:
                continue  # the surviving write may have been the last before the kill
            start = bisect.bisect_right(index.invokes, best.respond)
            stop = bisect.bisect_left(index.invokes, f.killed)
            lost = [w for w in index.writes[start:stop] if w.respond < f.killed and w.value != survived]
            if lost:
                lost_writes.append(LostWrite(n, entry, survived, best, lost))
        unknown.append(undecided)
    return lost_writes, unexplained, unknown


def _excused(history: History, read: Read) -> bool:
    for f in history.failovers:
        if not f.exact and read.entry in f.values and read.end >= f.killed and read.start <= f.promoted + f.lag:
            return True
    return False


def check(history: History, max_examples: int = 5) -> Result:
    """Checks every read of ``history`` against the rules of the module documentation."""
    fill_writes, fill_by_value, notes = _fill_writes(history)
    resets = [f.reset_writes() for f in history.failovers]
    all_writes = history.writes + fill_writes + [w for ws in resets for w in ws]
    by_entry: dict[str, list[Write]] = {}
    fencing: dict[str, list[Write]] = {}
    by_value: dict[tuple[str, Value], list[Write]] = {}
    value_entries: dict[str, str] = {}
    for w in all_writes:
        by_entry.setdefault(w.entry, []).append(w)
        by_value.setdefault((w.entry, w.value), []).append(w)
        if w.fences:
            fencing.setdefault(w.entry, []).append(w)
    for w in history.writes + fill_writes:  # a reset only repeats a value (or is unexplained itself)
        if w.value is not None:
            value_entries[w.value] = w.entry
    indexes = _Indexes(by_entry, history.cross_lag)
    fences = _Indexes(fencing, history.cross_lag)
    candidates = {k: _Candidates(ws) for k, ws in by_value.items()}
    lagless = _Indexes(by_entry, 0, lagless=True)
    staleness: list[Staleness] = []

    def measure(r: Read, w: Write, aging: Optional[Aging]) -> None:
        """Records how stale ``r`` (a read of ``w``'s value) was, if an acknowledged write had replaced it."""
        index = lagless.get(r.entry, None)
        overwritten, w2 = index.earliest_visible_after(w.respond)
        if w2 is None or overwritten >= r.start:
            return
        if r.value is None and aging is not None and _expiry_explains(r, index, aging):
            return  # the replacing value had expired: nothing stale
        staleness.append(Staleness(r, w, w2, int(r.start - overwritten)))

    violations: list[Violation] = []
    claimed_unwritten_seen: set[str] = set()
    examples: dict[str, list[str]] = {}
    excused = 0
    inexact = any(not f.exact for f in history.failovers)
    aging_notes: Counter[str] = Counter()
    aging_examples: dict[str, list[tuple[Read, Write]]] = {}
    latest_expiry_ms = 0.0
    earliest_stale_ms = 0.0

    def note(kind: str, r: Read, w: Write) -> None:
        aging_notes[kind] += 1
        ex = aging_examples.setdefault(kind, [])
        if len(ex) < max_examples:
            ex.append((r, w))

    def unfenced(r: Read, fill: Write) -> Optional[Write]:
        """A write through ``cached``, invoked after ``fill`` was produced, visible before ``r`` began. A failover
        of the entry's master before the read may have lost such a write (and its end of the lock): only writes
        invoked after the promotion count then."""
        if not fencing.get(r.entry):
            return None
        after = fill.invoke
        for f in history.failovers:
            if f.killed <= r.end and r.entry in f.values:
                after = max(after, f.promoted)
        visible, w2 = fences.get(r.entry, r.daemon).earliest_visible_after(after)
        return w2 if visible < r.start else None

    for r in history.reads:
        if inexact and _excused(history, r):
            excused += 1
            continue
        if r.uncached_fill:
            fill = history.fills.get(r.value) if r.value is not None else None
            if fill is None:
                violations.append(Violation("never-written", r))
            elif fill.entry != r.entry:
                violations.append(Violation("wrong-entry", r))
            elif fill.produced > r.end:
                violations.append(Violation("before-write", r))
            elif (w2 := unfenced(r, fill_by_value[r.value])) is not None:
                violations.append(Violation("stale-fill", r, fill_by_value[r.value], w2))
            continue
        aging = history.aging.get(r.entry)
        cands = candidates.get((r.entry, r.value))
        if cands is None:
            if r.value is None and aging is not None and _expiry_explains(r, indexes.get(r.entry, r.daemon), aging):
                aging_notes["miss of an aged entry explained by its expiry"] += 1
            elif r.value is not None and r.value in history.refused:
                violations.append(Violation("refused-value", r))
            elif r.value is not None and r.value in value_entries:
                violations.append(Violation("wrong-entry", r))
            else:
                violations.append(Violation("never-written", r))
            continue
        best = cands.best_invoked_by(r.end)
        if best is None:
            if r.value is None and aging is not None and _expiry_explains(r, indexes.get(r.entry, r.daemon), aging):
                aging_notes["miss of an aged entry explained by its expiry"] += 1
                continue
            violations.append(Violation("before-write", r, cands.writes[0]))
            continue
        w = best
        measure(r, w, aging)
        visible, w2 = indexes.get(r.entry, r.daemon).earliest_visible_after(w.respond)
        if visible < r.start:
            if r.value is None and aging is not None and _expiry_explains(r, indexes.get(r.entry, r.daemon), aging):
                aging_notes["miss of an aged entry explained by its expiry"] += 1
                continue
            violations.append(Violation("stale", r, w, w2))
            continue
        if r.value is not None and fill_by_value.get(r.value) is w and (w2 := unfenced(r, w)) is not None:
            violations.append(Violation("stale-fill", r, w, w2))
            continue
        if aging is not None and r.value is not None and r.daemon is not None:
            if w.expires and w.respond < INF:
                late = r.start - (w.respond + aging.total)
                if late > history.age_slack:
                    violations.append(Violation("expired", r, w))
                    continue
                latest_expiry_ms = max(latest_expiry_ms, late / 1e6)
                if not r.stale and r.start > w.respond + aging.ttl + history.age_slack:
                    note("answered without stale:true after its ttl", r, w)
            if r.stale:
                early = w.invoke + aging.ttl - r.end if w.expires else INF
                if 0 < early < INF:
                    earliest_stale_ms = max(earliest_stale_ms, early / 1e6)
                if early > history.stale_early_slack + 2 * MS:  # 2 ms: Redis's millisecond expiry times
                    note("answered stale:true before its ttl", r, w)
        if w.claimed_unwritten and not r.uncached and w.value is not None and w.value not in claimed_unwritten_seen:
            claimed_unwritten_seen.add(w.value)
            ex = examples.setdefault("write answered -32000 (nothing written) was read later", [])
            if len(ex) < max_examples:
                ex.append(f"{w.entry} {w.value!r} by {w.source}")
    notes["write answered -32000 (nothing written) was read later"] = len(claimed_unwritten_seen)
    notes.update(aging_notes)
    plain = {name: indexes.get(name, None) for name in {e for f in history.failovers for e in f.values}}
    lost, unexplained, unknown = _failover_losses(history, resets, plain, candidates, value_entries)
    return Result(violations, len(history.reads) - excused, len(all_writes), notes, examples, lost, unexplained,
                  excused, unknown, latest_expiry_ms, aging_examples, earliest_stale_ms, staleness)
