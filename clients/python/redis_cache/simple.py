"""``CacheClient``: pyredis-cache 0.1.3's simple (one Redis key per entry) client, via cached."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from ._base import CacheEntry, ClientBase, Logger
from .utils import default_passage, validate_key, wire_identity

__all__ = ["CacheClient"]


class CacheClient(ClientBase):
    """
    CacheClient is a cached (Redis) based simple cache client. It has the following features:
        *   Automatically Sync data between the sync_func and cache
        *   Use of Async/Await for Asynchronous execution of sync_func

    :param redis_pool: the daemon: its socket path, a :class:`~redis_cache.Connection`, or
        anything else (e.g. a ``redis.ConnectionPool``) for the default socket
        (``$CACHED_SOCKET``, else ``/run/cached/cached.sock``).
    :param key: Operation Key specific to this cache (more than 2 characters).
    :param sync_func: Data function, called as ``sync_func(identity, *args, **kwargs)``.
    :param log: log object (default logging).
    :param set_func: turns data into what is stored (str or bytes).
    :param get_func: turns the stored bytes back into data.
    :param expire_time: cache expiration time in seconds (0: no expiry).
    :param asynchronous: ``get``/``set`` are coroutine functions awaiting an async ``sync_func``.
    :param near_cache: keep up to this many entries in this process (per thread and per event loop),
        coherent through the daemon's notifications (not in pyredis-cache; default
        ``$CACHED_NEAR_CACHE``, else 0: off).
    """

    def __init__(self, redis_pool: Any, key: str, sync_func: Callable[..., Any],
                 log: Logger = logging, set_func: Callable[[Any], Any] = default_passage,
                 get_func: Callable[[bytes], Any] = default_passage, expire_time: float = 0,
                 asynchronous: bool = False, *, near_cache: Optional[int] = None) -> None:
        self._init_common(redis_pool, key, sync_func, log, set_func, get_func, asynchronous, near_cache)
        self.expire = bool(expire_time)
        self.expire_time = expire_time
        self.ttl = expire_time if expire_time else None

    def _address(self, identity: Any) -> Dict[str, Any]:
        return {"key": validate_key(self.key), "identity": wire_identity(identity)}

    def sync_set(self, identity: Any, *args: Any, data: Any = None, **kwargs: Any) -> int:
        """Stores ``data`` (default: ``sync_func(identity, *args, **kwargs)``); 1 if stored, else 0."""
        address = self._address(identity)
        if data is None:
            data = self.sync_func(identity, *args, **kwargs)
        return self._do_set(address, data)

    def sync_get(self, identity: Any, *args: Any, **kwargs: Any) -> Any:
        """The cached data, or ``sync_func(identity, *args, **kwargs)``'s (then cached)."""
        return self._do_get(self._address(identity), identity, args, kwargs)

    def sync_get_entry(self, identity: Any, *args: Any, **kwargs: Any) -> CacheEntry:
        """As :meth:`sync_get`, with whether it was a hit and whether it is stale (not in pyredis-cache)."""
        return self._do_get_entry(self._address(identity), identity, args, kwargs)

    async def async_set(self, identity: Any, *args: Any, data: Any = None, **kwargs: Any) -> int:
        """Coroutine variant of :meth:`sync_set` (``sync_func`` is awaited)."""
        address = self._address(identity)
        if data is None:
            data = await self.sync_func(identity, *args, **kwargs)
        return await self._do_async_set(address, data)

    async def async_get(self, identity: Any, *args: Any, **kwargs: Any) -> Any:
        """Coroutine variant of :meth:`sync_get` (``sync_func`` is awaited)."""
        return await self._do_async_get(self._address(identity), identity, args, kwargs)

    async def async_get_entry(self, identity: Any, *args: Any, **kwargs: Any) -> CacheEntry:
        """Coroutine variant of :meth:`sync_get_entry`."""
        return await self._do_async_get_entry(self._address(identity), identity, args, kwargs)

    def delete(self, identity: Any) -> int:
        """Deletes the entry; the number deleted (0 or 1)."""
        return self._do_delete("delete", self._address(identity))
