"""Drop-in replacement for pyredis-cache 0.1.3 that goes through the ``cached`` daemon.

``from redis_cache import CacheClient, HashCacheClient`` keeps working with the same signatures
and behaviour; the first argument names the daemon's Unix socket instead of a Redis pool.
"""

from ._base import CacheEntry
from .connection import DEFAULT_SOCKET, Connection, ConnectionPool, default_socket_path
from .errors import (CachedError, DaemonError, DaemonUnavailable, DeadlineExceeded,
                     InvalidParamsError, LengthError)
from .hash import HashCacheClient
from .simple import CacheClient
from .utils import default_passage, key_generator

__version__ = "0.1.3.post1"

__all__ = [
    "CacheClient",
    "CacheEntry",
    "HashCacheClient",
    "Connection",
    "ConnectionPool",
    "DEFAULT_SOCKET",
    "default_socket_path",
    "CachedError",
    "DaemonError",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "InvalidParamsError",
    "LengthError",
    "default_passage",
    "key_generator",
]
