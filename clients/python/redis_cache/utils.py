"""pyredis-cache's ``redis_cache.utils``: key naming helpers, kept for compatibility."""

from __future__ import annotations

import numbers
import operator
import re
from typing import Any, TypeVar, Union

from .errors import InvalidParamsError, LengthError

__all__ = ["LengthError", "key_generator", "default_passage", "validate_key", "wire_identity"]

T = TypeVar("T")

#: Longest key (or hash key) the daemon accepts.
MAX_KEY_LENGTH = 128
_KEY_CHARS = re.compile(r"\A[A-Za-z0-9_\-.:/@+]+\Z")


def validate_key(key: Any, name: str = "key") -> str:
    """Checks a key the way the daemon will, before any I/O.

    :raises LengthError: 2 characters or fewer (pyredis-cache's rule and exception).
    :raises InvalidParamsError: too long, or a character other than ASCII letters, digits, ``_-.:/@+``.
    """
    if not isinstance(key, str):
        raise TypeError("%s must be a str, not %s" % (name, type(key).__name__))
    if len(key) <= 2:
        raise LengthError("String length should be more than 2")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidParamsError("%s must be at most %d characters" % (name, MAX_KEY_LENGTH))
    if not _KEY_CHARS.match(key):
        raise InvalidParamsError(
            "%s may contain only ASCII letters, digits and _ - . : / @ +, got %r" % (name, key))
    return key


def wire_identity(identity: Any, name: str = "identity") -> Union[int, str]:
    """The identity as sent to the daemon.

    pyredis-cache formatted identities with ``%010d``: ints, bools and other real numbers
    (truncated by ``int()``) are sent as JSON integers. A ``str`` is sent as a JSON string (the
    daemon uses it verbatim after the ``#``). Anything else is a ``TypeError`` as ``%d`` raised it.
    """
    if isinstance(identity, str):
        return identity
    if isinstance(identity, (bytes, bytearray, memoryview)):
        raise TypeError("%s must be an int or a str, not %s" % (name, type(identity).__name__))
    if isinstance(identity, int):
        return int(identity)
    try:
        return operator.index(identity)
    except TypeError:
        pass
    if isinstance(identity, numbers.Real):
        return int(identity.__trunc__())  # what "%d" does with a float: truncate
    raise TypeError("%s must be an int or a str, not %s" % (name, type(identity).__name__))


def key_generator(op_name: str, ID: Any) -> str:
    """The Redis name pyredis-cache (and the daemon) use: ``"0000OPNAME#0000000012"``."""
    if len(op_name) <= 2:
        raise LengthError("String length should be more than 2")
    identity = wire_identity(ID)
    if isinstance(identity, str):
        return "%s#%s" % (op_name.zfill(10).upper(), identity)
    return "%s#%010d" % (op_name.zfill(10).upper(), identity)


def default_passage(data: T) -> T:
    """Identity function: the default ``set_func`` and ``get_func``."""
    return data
