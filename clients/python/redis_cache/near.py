"""The near cache: answers kept in the process, coherent through the daemon's ``invalidate`` notifications.

A connection that asks the daemon to ``track`` it is told of every change to an entry it read
(docs/protocol.md, ``track``). :class:`NearCache` keeps the daemon's answers that carry ``nearTTL``
(hits from the daemon's coherent memory), for at most that long, and drops them as notifications say.

An answer is kept only if no notification about its entry (or about everything) arrived between the
moment its ``get`` was sent and the answer: a notification may overtake the answer it concerns.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Dict, Hashable, Optional, Tuple

__all__ = ["NearCache", "address_key"]

#: An entry as the daemon names it in notifications: (key, identity, hashKey, hashId).
Address = Tuple[Any, Any, Any, Any]


def address_key(params: Dict[str, Any]) -> Address:
    """The entry a ``get``'s params (or a notification's entry) name."""
    return (params.get("key"), params.get("identity"), params.get("hashKey"), params.get("hashId"))


class NearCache:
    """At most ``capacity`` answers, least recently used dropped first. Not thread-safe by itself: one
    per connection, used by the one thread (or event loop) that owns that connection."""

    __slots__ = ("capacity", "entries", "in_flight", "hits", "misses", "dropped")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: address -> (answer, monotonic deadline)
        self.entries: "OrderedDict[Hashable, Tuple[Dict[str, Any], float]]" = OrderedDict()
        #: address -> number of gets in flight for it, and whether one was invalidated meanwhile
        self.in_flight: Dict[Hashable, list] = {}
        self.hits = 0
        self.misses = 0
        self.dropped = 0

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
