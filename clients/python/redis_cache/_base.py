"""What CacheClient and HashCacheClient share: addressing, value coding, the read-through flow."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Callable, Dict, Optional, Tuple

from .connection import Connection, resolve_connection
from .errors import DaemonError

__all__ = ["Unstorable", "encode_value", "decode_value", "ClientBase"]

Logger = Any  # the ``logging`` module or a ``logging.Logger``: anything with ``.error(msg, *args)``


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
                     asynchronous: bool) -> None:
        self.redis_pool = redis_pool
        self.asynchronous = asynchronous
        # As pyredis-cache: `get`/`set` are the coroutine variants when asynchronous.
        self.set: Callable[..., Any] = getattr(self, "async_set" if asynchronous else "sync_set")
        self.get: Callable[..., Any] = getattr(self, "async_get" if asynchronous else "sync_get")
        self.connection = resolve_connection(redis_pool)
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
        try:
            result = self.connection.call("get", self._get_params(address, args, kwargs))
            miss, lease = self._miss(result)
            if not miss:
                raw = decode_value(result)
        except DaemonError as e:
            self._report(e)
            return self.sync_func(identity, *args, **kwargs)
        if not miss:
            return self.get_func(raw)
        data = self.sync_func(identity, *args, **kwargs)
        try:
            self.connection.call("set", self._set_params(address, data, lease))
        except (DaemonError, Unstorable) as e:
            self._report(e)
        return data

    async def _do_async_get(self, address: Dict[str, Any], identity: Any, args: Tuple[Any, ...],
                            kwargs: Dict[str, Any]) -> Any:
        try:
            result = await self.connection.acall("get", self._get_params(address, args, kwargs))
            miss, lease = self._miss(result)
            if not miss:
                raw = decode_value(result)
        except DaemonError as e:
            self._report(e)
            return await self.sync_func(identity, *args, **kwargs)
        if not miss:
            return self.get_func(raw)
        data = await self.sync_func(identity, *args, **kwargs)
        try:
            await self.connection.acall("set", self._set_params(address, data, lease))
        except (DaemonError, Unstorable) as e:
            self._report(e)
        return data

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


