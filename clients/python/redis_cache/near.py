"""The near cache: answers kept in the process, coherent through the daemon's ``invalidate`` notifications.

A connection that asks the daemon to ``track`` it is told of every change to an entry it read
(docs/protocol.md, ``track``). :class:`NearCache` keeps the daemon's answers that carry ``nearTTL``
(hits from the daemon's coherent memory), for at most that long, and drops them as notifications say.

An answer is kept only if no notification about its entry (or about everything) arrived between the
moment its ``get`` was sent and the answer: a notification may overtake the answer it concerns.

A notification that never comes (the daemon stalled, its path to Redis silently broken) must not leave an
old answer in use: with a staleness bound (``[local_cache] max_staleness``), the ``track`` answer names the
daemon's *proof page* (:class:`ProofPage`), a file the daemon keeps mapped and rewrites with an instant of
``CLOCK_MONOTONIC`` (one clock for every process on the host): every invalidation Redis sent before that
instant has been applied by the daemon and its notification written to this socket. A near hit is served
only when that instant is at most ``maxStaleness`` old (:meth:`NearCache.proven`), read *before* the socket
is drained, so that every notification the instant vouches for is applied before the lookup. Reading it
costs a clock read and eight bytes of shared memory: no system call, no wake-up of an idle process.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import OrderedDict
from typing import Any, Dict, Hashable, Optional, Tuple

__all__ = ["NearCache", "ProofPage", "address_key"]

#: An entry as the daemon names it in notifications: (key, identity, hashKey, hashId).
Address = Tuple[Any, Any, Any, Any]


def address_key(params: Dict[str, Any]) -> Address:
    """The entry a ``get``'s params (or a notification's entry) name."""
    return (params.get("key"), params.get("identity"), params.get("hashKey"), params.get("hashId"))


class ProofPage:
    """The daemon's proof page (docs/protocol.md, ``track``), mapped read-only.

    Layout (little-endian): bytes 0-7 the magic ``CACHEDPF``, 8-11 the version (1), 16-23 the proof instant
    (``CLOCK_MONOTONIC`` nanoseconds; 0: no proof), 24-31 the daemon's ``max_staleness`` in nanoseconds. The
    daemon stores the instant with one aligned 8-byte write; a value from the future is refused as torn.

    :raises OSError: the file cannot be opened or mapped, or is not a proof page.
    """

    __slots__ = ("path", "_map", "_unpack")

    MAGIC = b"CACHEDPF"
    SIZE = 4096

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(fd, self.SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        if self._map[:8] != self.MAGIC or struct.unpack_from("<I", self._map, 8)[0] != 1:
            self._map.close()
            raise OSError("%s is not a cached proof page" % path)
        self._unpack = struct.Struct("<Q").unpack_from

    def proven_at_ns(self) -> int:
        """The proof instant (``time.monotonic_ns()`` scale), 0 when there is none."""
        return int(self._unpack(self._map, 16)[0])

    def max_staleness_ns(self) -> int:
        return int(self._unpack(self._map, 24)[0])

    def close(self) -> None:
        self._map.close()


class NearCache:
    """At most ``capacity`` answers, least recently used dropped first. Not thread-safe by itself: one
    per connection, used by the one thread (or event loop) that owns that connection."""

    __slots__ = ("capacity", "entries", "in_flight", "hits", "misses", "dropped", "proof", "max_staleness_ns",
                 "unproven")

    def __init__(self, capacity: int, proof: Optional[ProofPage] = None, max_staleness_ns: int = 0,
                 unprovable: bool = False) -> None:
        self.capacity = capacity
        #: The daemon's proof page and bound (None: the daemon gives no bound, hits need no proof).
        self.proof = proof
        self.max_staleness_ns = max_staleness_ns
        #: Hits refused for want of fresh proof (asked of the daemon instead). With ``unprovable`` (the
        #: daemon named a proof page that cannot be mapped) every hit is refused.
        self.unproven = 0
        if unprovable:
            self.max_staleness_ns = -1
        #: address -> (answer, monotonic deadline)
        self.entries: "OrderedDict[Hashable, Tuple[Dict[str, Any], float]]" = OrderedDict()
        #: address -> number of gets in flight for it, and whether one was invalidated meanwhile
        self.in_flight: Dict[Hashable, list] = {}
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    def proven(self) -> bool:
        """Whether the daemon's proof is fresh now. Call it *before* draining the notifications, then
        answer from the cache only if it was True."""
        proof = self.proof
        if proof is None:
            return self.max_staleness_ns >= 0
        at = proof.proven_at_ns()
        age = time.monotonic_ns() - at
        if at and 0 <= age <= self.max_staleness_ns:
            return True
        self.unproven += 1
        return False

    def use_proof(self, track_result: Any) -> None:
        """Takes the proof page that a ``track`` answer names (``{"proof": {"path", "maxStaleness"}}``)."""
        proof = track_result.get("proof") if isinstance(track_result, dict) else None
        if not isinstance(proof, dict):
            return
        bound = proof.get("maxStaleness")
        try:
            self.proof = ProofPage(str(proof.get("path")))
            self.max_staleness_ns = int(float(bound) * 1e9) if isinstance(bound, (int, float)) else 0
        except (OSError, ValueError, TypeError):
            self.proof = None
            self.max_staleness_ns = -1  # a bound we cannot check: no near hit at all

    def get(self, address: Hashable) -> Optional[Dict[str, Any]]:
        item = self.entries.get(address)
        if item is None:
            self.misses += 1
            return None
        answer, deadline = item
        if time.monotonic() >= deadline:
            del self.entries[address]
            self.misses += 1
            return None
        self.entries.move_to_end(address)
        self.hits += 1
        return answer

    def begin(self, address: Hashable) -> float:
        """A ``get`` of ``address`` is about to be sent; returns the instant, for :meth:`keep`."""
        flight = self.in_flight.get(address)
        if flight is None:
            self.in_flight[address] = [1, False]
        else:
            flight[0] += 1
        return time.monotonic()

    def finish(self, address: Hashable) -> bool:
        """The answer of a ``get`` of ``address`` arrived, or the call failed. True when no notification
        about the entry arrived while it was in flight: its answer may then be kept."""
        flight = self.in_flight.get(address)
        if flight is None:
            return False
        flight[0] -= 1
        if flight[0] <= 0:
            del self.in_flight[address]
        return not flight[1]

    def keep(self, address: Hashable, answer: Any, sent_at: float) -> None:
        """Keeps ``answer`` if the daemon said it may be kept (``nearTTL``), for that long at most, counted
        from when its ``get`` was sent (``sent_at``, from :meth:`begin`): the daemon counted it at some
        point after that, so the entry never outlives what the daemon allowed."""
        if not isinstance(answer, dict):
            return
        near_ttl = answer.get("nearTTL")
        if not isinstance(near_ttl, int) or isinstance(near_ttl, bool) or near_ttl <= 0 or answer.get("value") is None:
            return
        self.entries[address] = (answer, sent_at + near_ttl / 1000.0)
        self.entries.move_to_end(address)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def invalidate(self, params: Any) -> None:
        """Applies an ``invalidate`` notification's params."""
        if not isinstance(params, dict) or params.get("all") is True:
            self.clear()
            return
        for entry in params.get("entries") or ():
            if isinstance(entry, dict):
                address = address_key(entry)
                if self.entries.pop(address, None) is not None:
                    self.dropped += 1
                flight = self.in_flight.get(address)
                if flight is not None:
                    flight[1] = True

    def clear(self) -> None:
        """Everything goes (an ``all`` notification, or the connection ended)."""
        self.dropped += len(self.entries)
        self.entries.clear()
        for flight in self.in_flight.values():
            flight[1] = True
