"""``HashCacheClient``: pyredis-cache 0.1.3's hash client (entries as fields of a Redis hash)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from ._base import CacheEntry, ClientBase, Logger
from .utils import default_passage, validate_key, wire_identity

__all__ = ["HashCacheClient"]


class HashCacheClient(ClientBase):
    """
    HashCacheClient can be used to cache contextually similar data under a common hash name.
        *   Automatically Sync data between the sync_func and cache
        *   Use of Async/Await for Asynchronous execution of sync_func

    :param redis_pool: the daemon (see :class:`~redis_cache.CacheClient`).
    :param hash_key: Unique Hash key for the data (more than 2 characters).
    :param key: Operation Key specific to this cache (more than 2 characters).
    :param sync_func: Data function, called as ``sync_func(identity, *args, **kwargs)``.
    :param log: log object (default logging).
    :param set_func: turns data into what is stored (str or bytes).
    :param get_func: turns the stored bytes back into data.
    :param asynchronous: ``get``/``set`` are coroutine functions awaiting an async ``sync_func``.
    :param near_cache: entries kept in this process (see :class:`~redis_cache.CacheClient`).
    """

    def __init__(self, redis_pool: Any, hash_key: str, key: str, sync_func: Callable[..., Any],
                 log: Logger = logging, set_func: Callable[[Any], Any] = default_passage,
                 get_func: Callable[[bytes], Any] = default_passage,
                 asynchronous: bool = False, *, near_cache: Optional[int] = None) -> None:
        self._init_common(redis_pool, key, sync_func, log, set_func, get_func, asynchronous, near_cache)
        self.hash_key = hash_key
        self.ttl = None  # expiry is not supported for hashes (as in pyredis-cache)

    def _hash(self, hash_id: Any) -> Dict[str, Any]:
        return {"hashKey": validate_key(self.hash_key, "hash_key"),
                "hashId": wire_identity(hash_id, "hash_id")}

    def _address(self, hash_id: Any, identity: Any) -> Dict[str, Any]:
        address = {"key": validate_key(self.key), "identity": wire_identity(identity)}
        address.update(self._hash(hash_id))
        return address

    def sync_set(self, hash_id: Any, identity: Any, *args: Any, data: Any = None, **kwargs: Any) -> int:
        """Stores ``data`` (default: ``sync_func(identity, *args, **kwargs)``); 1 if stored, else 0."""
        address = self._address(hash_id, identity)
        if data is None:
            data = self.sync_func(identity, *args, **kwargs)
        return self._do_set(address, data)

    def sync_get(self, hash_id: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
        """The cached data, or ``sync_func(identity, *args, **kwargs)``'s (then cached)."""
        return self._do_get(self._address(hash_id, identity), identity, args, kwargs)

    def sync_get_entry(self, hash_id: Any, identity: Any, *args: Any, **kwargs: Any) -> CacheEntry:
        """As :meth:`sync_get`, with whether it was a hit and whether it is stale (not in pyredis-cache)."""
        return self._do_get_entry(self._address(hash_id, identity), identity, args, kwargs)

    async def async_set(self, hash_id: Any, identity: Any, *args: Any, data: Any = None,
                        **kwargs: Any) -> int:
        """Coroutine variant of :meth:`sync_set` (``sync_func`` is awaited)."""
        address = self._address(hash_id, identity)
        if data is None:
            data = await self.sync_func(identity, *args, **kwargs)
        return await self._do_async_set(address, data)

    async def async_get(self, hash_id: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
        """Coroutine variant of :meth:`sync_get` (``sync_func`` is awaited)."""
        return await self._do_async_get(self._address(hash_id, identity), identity, args, kwargs)

    async def async_get_entry(self, hash_id: Any, identity: Any, *args: Any, **kwargs: Any) -> CacheEntry:
        """Coroutine variant of :meth:`sync_get_entry`."""
        return await self._do_async_get_entry(self._address(hash_id, identity), identity, args, kwargs)

    def delete(self, hash_id: Any, identity: Any) -> int:
        """Deletes one entry of the hash; the number deleted (0 or 1)."""
        return self._do_delete("delete", self._address(hash_id, identity))

    def delete_hash(self, hash_id: Any) -> int:
        """Deletes the whole hash; the number deleted (0 or 1)."""
        return self._do_delete("deleteHash", self._hash(hash_id))
