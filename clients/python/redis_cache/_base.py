"""What CacheClient and HashCacheClient share: addressing, value coding, the read-through flow."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Set, Tuple

from .connection import Connection, resolve_connection
from .errors import METHOD_NOT_FOUND, DaemonError, DaemonUnavailable, InvalidParamsError

__all__ = ["Unstorable", "encode_value", "decode_value", "ClientBase"]

Logger = Any  # the ``logging`` module or a ``logging.Logger``: anything with ``.error(msg, *args)``

# Releases sent from a cancelled coroutine run as tasks of their own; keep them referenced until done.
_background_releases: "Set[asyncio.Task[None]]" = set()


class CacheEntry(NamedTuple):
    """What ``sync_get_entry``/``async_get_entry`` answer: the data and where it came from."""

    #: The data, as ``sync_get`` would answer it.
    data: Any
    #: True when it was in the cache (False: filled by the daemon's handler, by this call's
    #: ``sync_func``, or computed because the daemon could not be reached).
    hit: bool
    #: True when it is past its key's ``ttl``: served from the stale window while one refresh runs,
    #: or from grace after a failed refresh (see the daemon's ``stale_ttl`` and ``grace``).
    stale: bool


class Unstorable(TypeError):
    """``set_func`` returned something that cannot be stored (redis-py raised ``DataError``)."""


def encode_value(stored: Any) -> Tuple[str, Optional[str]]:
    """What ``set_func`` returned, as the wire's ``(value, encoding)``.

    Follows redis-py's encoder, which pyredis-cache relied on: ``bytes`` as they are, ``str`` as
    UTF-8, ``int``/``float`` as their ``repr()``; ``bool``, ``None`` and other types cannot be
    stored. Bytes that are valid UTF-8 travel as a JSON string, others as base64.
    """
    if isinstance(stored, str):
        stored.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, as in redis-py
        return stored, None
    if isinstance(stored, (bytes, bytearray, memoryview)):
        data = bytes(stored)
    elif isinstance(stored, bool) or not isinstance(stored, (int, float)):
        raise Unstorable("Invalid input of type: '%s'. Convert to a bytes, string, int or float first."
                         % type(stored).__name__)
    else:
        data = repr(stored).encode("ascii")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_value(result: Dict[str, Any]) -> bytes:
    """The bytes of a ``value`` in an answer (decoding base64 when ``encoding`` says so)."""
    value = result.get("value")
    if not isinstance(value, str):
        raise DaemonError(None, "cached answered a value that is not a string: %r" % (value,))
    if result.get("encoding") == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as e:
            raise DaemonError(None, "cached answered invalid base64: %s" % e) from None
    return value.encode("utf-8")


def _json_arguments(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``args``/``kwargs`` for the daemon-side handler, if they can travel as JSON at all."""
    out: Dict[str, Any] = {}
    if not args and not kwargs:
        return out
    try:
        json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError):
        return out  # not JSON: the daemon's handler (if any) gets none; a local fill gets them all
    if args:
        out["args"] = list(args)
    if kwargs:
        out["kwargs"] = kwargs
    return out


class ClientBase:
    redis_pool: Any
    connection: Connection
    key: str
    sync_func: Callable[..., Any]
    set_func: Callable[[Any], Any]
    get_func: Callable[[bytes], Any]
    log: Logger
    ttl: Optional[float]

    def _init_common(self, redis_pool: Any, key: str, sync_func: Callable[..., Any], log: Logger,
                     set_func: Callable[[Any], Any], get_func: Callable[[bytes], Any],
                     asynchronous: bool, near_cache: Optional[int] = None) -> None:
        self.redis_pool = redis_pool
        self.asynchronous = asynchronous
        # As pyredis-cache: `get`/`set` are the coroutine variants when asynchronous.
        self.set: Callable[..., Any] = getattr(self, "async_set" if asynchronous else "sync_set")
        self.get: Callable[..., Any] = getattr(self, "async_get" if asynchronous else "sync_get")
        if near_cache is None:
            try:
                near_cache = int(os.environ.get("CACHED_NEAR_CACHE") or 0)
            except ValueError:
                near_cache = 0
        #: Entries kept in this process's near cache (per thread, per event loop); 0: off, as in
        #: pyredis-cache. Hits from it still run ``get_func`` on the stored bytes.
        self.near_cache = max(0, near_cache)
        self.connection = resolve_connection(redis_pool, near_cache=self.near_cache)
        self.key = key
        self.sync_func = sync_func
        self.set_func = set_func
        self.get_func = get_func
        self.log = log if log is not None else logging

    def _report(self, error: BaseException) -> None:
        self.log.error("[CACHED] %s", str(error))

    # -- the read-through flow, shared by the blocking and the coroutine variants -------------

    def _get_params(self, address: Dict[str, Any], args: Tuple[Any, ...],
                    kwargs: Dict[str, Any]) -> Dict[str, Any]:
        params = dict(address)
        params.update(_json_arguments(args, kwargs))
        return params

    def _set_params(self, address: Dict[str, Any], data: Any,
                    lease: Optional[str] = None) -> Dict[str, Any]:
        value, encoding = encode_value(self.set_func(data))
        params = dict(address)
        params["value"] = value
        if encoding is not None:
            params["encoding"] = encoding
        if self.ttl:
            params["ttl"] = self.ttl
        if lease is not None:
            params["lease"] = lease
        return params

    @staticmethod
    def _miss(result: Any) -> Tuple[bool, Optional[str]]:
        """``(miss, lease)`` for a ``get`` answer; a filled miss counts as a hit."""
        if not isinstance(result, dict):
            raise DaemonError(None, "cached answered get with %r" % (result,))
        if result.get("value") is not None:
            return False, None
        lease = result.get("lease")
        return True, lease if isinstance(lease, str) else None

    def _do_get(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                kwargs: Dict[str, Any]) -> Any:
        return self._do_get_entry(address, identity, args, kwargs).data

    def _do_get_entry(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                      kwargs: Dict[str, Any]) -> CacheEntry:
        try:
            result = self.connection.call("get", self._get_params(address, args, kwargs))
            miss, lease = self._miss(result)
            if not miss:
                raw = decode_value(result)
        except DaemonError as e:
            self._report(e)
            return CacheEntry(self.sync_func(identity, *args, **kwargs), False, False)
        if not miss:
            return CacheEntry(self.get_func(raw), result.get("hit") is True, result.get("stale") is True)
        return CacheEntry(self._fill(address, identity, args, kwargs, lease), False, False)

    def _fill(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
              kwargs: Dict[str, Any], lease: Optional[str]) -> Any:
        # A miss, usually with a lease: until this fill is stored (or the lease given back), other
        # `get`s of the entry wait. Whatever keeps it from being stored gives the lease back.
        try:
            data = self.sync_func(identity, *args, **kwargs)
        except BaseException:
            self._release(address, lease)
            raise
        try:
            params = self._set_params(address, data, lease)
        except Unstorable as e:
            self._report(e)
            self._release(address, lease)
            return data
        except BaseException:
            self._release(address, lease)
            raise
        try:
            self.connection.call("set", params)
        except DaemonUnavailable as e:
            self._report(e)  # the connection is gone, and the daemon hands the lease over
        except DaemonError as e:
            self._report(e)
            self._release(address, lease)
        except InvalidParamsError:
            self._release(address, lease)
            raise
        return data

    async def _do_async_get(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                            kwargs: Dict[str, Any]) -> Any:
        return (await self._do_async_get_entry(address, identity, args, kwargs)).data

    async def _do_async_get_entry(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                                  kwargs: Dict[str, Any]) -> CacheEntry:
        try:
            result = await self.connection.acall("get", self._get_params(address, args, kwargs))
            miss, lease = self._miss(result)
            if not miss:
                raw = decode_value(result)
        except DaemonError as e:
            self._report(e)
            return CacheEntry(await self.sync_func(identity, *args, **kwargs), False, False)
        if not miss:
            return CacheEntry(self.get_func(raw), result.get("hit") is True, result.get("stale") is True)
        return CacheEntry(await self._async_fill(address, identity, args, kwargs, lease), False, False)

    async def _async_fill(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                          kwargs: Dict[str, Any], lease: Optional[str]) -> Any:
        try:
            data = await self.sync_func(identity, *args, **kwargs)
        except Exception:
            await self._async_release(address, lease)
            raise
        except BaseException:
            self._release_in_background(address, lease)  # cancelled: give it back without waiting
            raise
        try:
            params = self._set_params(address, data, lease)
        except Unstorable as e:
            self._report(e)
            await self._async_release(address, lease)
            return data
        except BaseException:
            await self._async_release(address, lease)
            raise
        try:
            await self.connection.acall("set", params)
        except DaemonUnavailable as e:
            self._report(e)  # the connection is lost, or the answer is late: the lease expires
        except DaemonError as e:
            self._report(e)
            await self._async_release(address, lease)
        except InvalidParamsError:
            await self._async_release(address, lease)
            raise
        return data

    # -- giving a lease back ----------------------------------------------------------------

    def _release(self, address: Dict[str, Any], lease: Optional[str]) -> None:
        """Gives an unused lease back (`release`), so the next waiter gets it at once.

        Never raises: this runs while another exception (usually ``sync_func``'s) is on its way
        to the caller, and a failure here must not replace it. A failure is logged instead.
        """
        if lease is None:
            return
        try:
            result = self.connection.call("release", self._release_params(address, lease))
        except Exception as e:
            self._release_failed(address, e)
        else:
            self._released(address, result)

    async def _async_release(self, address: Dict[str, Any], lease: Optional[str]) -> None:
        """Coroutine variant of :meth:`_release` (never raises an ``Exception`` either)."""
        if lease is None:
            return
        try:
            result = await self.connection.acall("release", self._release_params(address, lease))
        except Exception as e:
            self._release_failed(address, e)
        else:
            self._released(address, result)

    def _release_in_background(self, address: Dict[str, Any], lease: Optional[str]) -> None:
        """Starts :meth:`_async_release` as a task of its own (the current one is being cancelled)."""
        if lease is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a coroutine
            return
        task = loop.create_task(self._async_release(address, lease))
        _background_releases.add(task)
        task.add_done_callback(_background_releases.discard)

    @staticmethod
    def _release_params(address: Dict[str, Any], lease: str) -> Dict[str, Any]:
        params = dict(address)
        params["lease"] = lease
        return params

    def _released(self, address: Dict[str, Any], result: Any) -> None:
        if not (isinstance(result, dict) and result.get("released") is True):
            # Expired, revoked by a write or delete, or already passed on: nothing to give back.
            self._log_quietly("debug", "[CACHED] lease for %s was no longer live: %r", address, result)

    def _release_failed(self, address: Dict[str, Any], error: BaseException) -> None:
        if isinstance(error, DaemonError) and error.code == METHOD_NOT_FOUND:
            # A daemon without `release`: the lease passes on after the key's lease_timeout.
            self._log_quietly("debug", "[CACHED] cannot release the lease for %s: %s", address, error)
        else:
            self._log_quietly("warning", "[CACHED] cannot release the lease for %s: %s", address, error)

    def _log_quietly(self, level: str, message: str, *args: Any) -> None:
        """``self.log.<level>(message, *args)`` if the log object has that method; never raises.

        The ``log`` given to a client only has to provide ``error`` (that is all pyredis-cache used).
        """
        method = getattr(self.log, level, None)
        if not callable(method):
            return
        try:
            method(message, *args)
        except Exception:  # pragma: no cover - a broken log object must not mask the real error
            pass

    def _do_set(self, address: Dict[str, Any], data: Any) -> int:
        try:
            result = self.connection.call("set", self._set_params(address, data))
        except (DaemonError, Unstorable) as e:
            self._report(e)
            return 0
        return 1 if isinstance(result, dict) and result.get("stored") else 0

    async def _do_async_set(self, address: Dict[str, Any], data: Any) -> int:
        try:
            result = await self.connection.acall("set", self._set_params(address, data))
        except (DaemonError, Unstorable) as e:
            self._report(e)
            return 0
        return 1 if isinstance(result, dict) and result.get("stored") else 0

    def _do_delete(self, method: str, params: Dict[str, Any]) -> int:
        try:
            result = self.connection.call(method, params)
        except DaemonError as e:
            self._report(e)
            return 0
        deleted = result.get("deleted") if isinstance(result, dict) else None
        return deleted if isinstance(deleted, int) else 0


