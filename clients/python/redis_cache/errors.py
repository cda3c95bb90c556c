"""Exceptions of the shim.

Only :class:`InvalidParamsError` (and its subclass :class:`LengthError`) and ``TypeError`` for an
identity that is neither a number nor a string ever reach application code from
:class:`~redis_cache.CacheClient` / :class:`~redis_cache.HashCacheClient`: every other failure is
logged and handled like pyredis-cache handled a ``RedisError``.
"""

from __future__ import annotations

from typing import Any, Optional

# JSON-RPC / cached error codes (see the daemon's docs/protocol.md).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
STORE_UNAVAILABLE = -32000
LIMIT_EXCEEDED = -32001
STORE_TIMEOUT = -32002
STORE_ERROR = -32003
HANDLER_ERROR = -32004
HANDLER_TIMEOUT = -32005
OVERLOADED = -32006
SHUTTING_DOWN = -32007
ACCESS_DENIED = -32008
DEADLINE_EXCEEDED = -32009
#: The peer may connect, but its ``[[access]]`` rules do not allow this request ("uid 33 may not write Student").
ACCESS_REFUSED = -32010


class CachedError(Exception):
    """Base class of every error of the shim."""


class DaemonError(CachedError):
    """The daemon answered a request with an error object (other than invalid params).

    Clients catch it and fall back (log, call ``sync_func``, return 0), as pyredis-cache did on a
    ``RedisError``.
    """

    def __init__(self, code: Optional[int], message: str, data: Any = None) -> None:
        super().__init__(message if code is None else "%s (%d)" % (message, code))
        self.code = code
        self.message = message
        self.data = data


class DaemonUnavailable(DaemonError):
    """The daemon could not be reached: connect error, closed socket, timeout, garbled answer."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class DeadlineExceeded(DaemonError):
    """The daemon answered -32009: the request's ``timeout`` passed before it could be answered.

    Handled like any daemon error (the clients fall back); the daemon stopped working for the call,
    while work others wait for (a fill, a lease) goes on for them.
    """

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(DEADLINE_EXCEEDED, message, data)


class InvalidParamsError(CachedError, ValueError):
    """The request was refused as invalid (JSON-RPC -32602), or checked invalid before sending it.

    Raised into application code: it is a programming error (for example a key with characters
    that the daemon does not accept), not an outage.
    """

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = INVALID_PARAMS
        self.message = message
        self.data = data


class LengthError(InvalidParamsError):
    """A key (or hash key) of 2 characters or fewer, as pyredis-cache's ``LengthError``."""

    def __init__(self, message: str, errors: Any = None) -> None:
        super().__init__(message)
        self.errors = errors
