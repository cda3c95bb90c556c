"""The transport: newline-delimited JSON-RPC 2.0 over the daemon's Unix socket.

Blocking calls use one socket per thread (``threading.local``), so a connection is reused from
call to call, never shared between threads, and, since each socket has one request in flight at a
time, an answer is simply the next line carrying our id. The owning process id is checked on every
call: after ``fork()`` the child opens its own socket and never touches the parent's.

Coroutine calls (``asynchronous=True`` clients) use one ``asyncio`` stream per event loop, opened
with :func:`asyncio.open_unix_connection`; several coroutines share it, and a reader task hands
each answer to the waiting request by its id (answers may come back in any order).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import socket
import threading
import weakref
from typing import Any, Dict, Optional, Tuple, Union

from .errors import (DEADLINE_EXCEEDED, INVALID_PARAMS, DaemonError, DaemonUnavailable, DeadlineExceeded,
                     InvalidParamsError)
from .near import NearCache, address_key

__all__ = [
    "DEFAULT_SOCKET",
    "Connection",
    "ConnectionPool",
    "default_socket_path",
    "resolve_connection",
]

#: The daemon's socket when neither a path nor ``$CACHED_SOCKET`` says otherwise.
DEFAULT_SOCKET = "/run/cached/cached.sock"

#: Longest answer line accepted on the asyncio path (values are opaque and may be big).
_MAX_LINE = 1 << 30

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def default_socket_path() -> str:
    """``$CACHED_SOCKET`` if set and not empty, else ``/run/cached/cached.sock``."""
    return os.environ.get("CACHED_SOCKET") or DEFAULT_SOCKET


#: How much longer than a request's ``timeout`` the shim waits for the daemon's answer: the daemon
#: answers -32009 at the deadline itself, so the socket timeout is only a backstop for a stalled daemon.
ANSWER_GRACE = 0.5


def _encode_request(request_id: int, method: str, params: Optional[Dict[str, Any]],
                    timeout: Optional[float] = None) -> bytes:
    message: Dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if timeout is not None:
        # The caller's timeout travels with the request: the daemon stops working for it at the deadline.
        params = dict(params or {})
        params["timeout"] = max(0.001, round(float(timeout), 6))
    if params is not None:
        message["params"] = params
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8") + b"\n"


def _decode_answer(line: bytes, notifications: bool = False) -> Dict[str, Any]:
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise DaemonUnavailable("garbled answer from cached: %s" % e) from None
    if notifications and isinstance(answer, dict) and answer.get("method") == "invalidate":
        return answer
    if not isinstance(answer, dict) or ("result" not in answer and "error" not in answer):
        raise DaemonUnavailable("garbled answer from cached: %r" % line[:200])
    return answer


def _result_of(answer: Dict[str, Any]) -> Any:
    error = answer.get("error")
    if error is None:
        return answer.get("result")
    if not isinstance(error, dict):
        raise DaemonError(None, "cached answered an error: %r" % (error,))
    code = error.get("code")
    message = str(error.get("message", "error"))
    if code == INVALID_PARAMS:
        raise InvalidParamsError(message, error.get("data"))
    if code == DEADLINE_EXCEEDED:
        raise DeadlineExceeded(message, error.get("data"))
    raise DaemonError(code if isinstance(code, int) else None, message, error.get("data"))


class _ThreadState:
    __slots__ = ("pid", "sock", "file", "near", "buf")

    def __init__(self, sock: socket.socket, near: Optional[NearCache] = None) -> None:
        self.pid = os.getpid()
        self.sock = sock
        self.file = sock.makefile("rb")
        #: With a near cache the socket is read through ``buf`` (so that it can be drained without
        #: blocking); without one, through ``file``.
        self.near = near
        self.buf = bytearray()

    def close(self) -> None:
        # Never shutdown(): after a fork the descriptor may be shared with the other process, and
        # close() only drops this process's reference.
        try:
            self.file.close()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class Connection:
    """The daemon at ``path``: pass it (or just the path) as a client's first argument.

    :param path: the daemon's socket; ``None`` means ``$CACHED_SOCKET``, else
        ``/run/cached/cached.sock`` (read when the object is created).
    :param timeout: seconds to wait for an answer. It is sent with every request (``timeout``), so
        the daemon answers -32009 at that deadline and stops working for the call
        (:class:`~redis_cache.errors.DeadlineExceeded`, handled as an unreachable daemon); the socket
        waits ``ANSWER_GRACE`` longer. ``None``: nothing is sent, the daemon's
        ``request_timeout`` applies, and the socket waits forever.
    :param connect_timeout: seconds to wait for the socket to accept.
    """

    def __init__(self, path: Optional[PathArg] = None, *, timeout: Optional[float] = 30.0,
                 connect_timeout: Optional[float] = 5.0, near_cache: int = 0) -> None:
        self.path: str = default_socket_path() if path is None else os.fsdecode(path)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: Entries kept in each thread's (and each event loop's) near cache; 0: none. See ``near.py``.
        self.near_cache = max(0, int(near_cache))
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._async_lock = threading.Lock()
        self._channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncChannel]" = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return "%s(%r)" % (type(self).__name__, self.path)

    def _next_id(self) -> int:
        return next(self._ids)  # atomic under the GIL

    # -- blocking path ----------------------------------------------------------------------

    def _connect(self) -> _ThreadState:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.path)
            sock.settimeout(None if self.timeout is None else self.timeout + ANSWER_GRACE)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            sock.close()
            raise DaemonUnavailable("cannot connect to cached at %s: %s" % (self.path, e)) from None
        if not self.near_cache:
            state = _ThreadState(sock)
            self._local.state = state
            return state
        # A near cache: the daemon tracks what this socket reads (``track``) before anything is read.
        state = _ThreadState(sock, NearCache(self.near_cache))
        request_id = self._next_id()
        try:
            sock.sendall(_encode_request(request_id, "track", {"maxEntries": self.near_cache}))
            state.near.use_proof(_result_of(self._read_answer(state, request_id)))  # type: ignore[union-attr]
        except (OSError, EOFError) as e:
            state.close()
            raise DaemonUnavailable("cannot ask cached at %s for tracking: %s" % (self.path, e)) from None
        except DaemonError:
            state.close()
            raise
        self._local.state = state
        return state

    def _current(self) -> Optional[_ThreadState]:
        state: Optional[_ThreadState] = getattr(self._local, "state", None)
        if state is not None and state.pid != os.getpid():
            # Inherited through fork(): the parent still uses this socket. Drop our copy of the
            # descriptor and connect anew.
            state.close()
            self._local.state = None
            return None
        return state

    def _drop(self, state: _ThreadState) -> None:
        state.close()
        if state.near is not None:
            state.near.clear()  # nothing tells it of changes any longer
        if getattr(self._local, "state", None) is state:
            self._local.state = None

    def _drain(self, state: _ThreadState) -> bool:
        """Applies every notification already in the socket, without blocking; False if it closed."""
        sock = state.sock
        while True:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                break
            data = sock.recv(65536)
            if not data:
                return False
            state.buf += data
        while True:
            end = state.buf.find(b"\n")
            if end < 0:
                return True
            line = bytes(state.buf[:end + 1])
            del state.buf[:end + 1]
            message = _decode_answer(line, notifications=True)
            if message.get("method") == "invalidate" and "id" not in message and state.near is not None:
                state.near.invalidate(message.get("params"))
            # Anything else: the answer of a request given up on; skipped.

    def _near_get(self, state: _ThreadState, address: Any) -> Optional[Any]:
        """A ``get`` answered from the near cache after draining the socket, or None."""
        near = state.near
        assert near is not None
        if address not in near.entries:
            near.misses += 1
            return None  # asked of the daemon, whose answer follows any notification in the socket
        # The proof first, then the notifications it vouches for.
        proven = near.proven()
        try:
            open_ = self._drain(state)
        except (OSError, ValueError, DaemonUnavailable):
            open_ = False
        if not open_:
            self._drop(state)
            return None
        if not proven:
            near.misses += 1
            return None
        return near.get(address)

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """Sends one request and waits for its answer's ``result``.

        :raises DaemonUnavailable: cannot connect, the socket closed, timed out, garbled answer.
        :raises InvalidParamsError: the daemon answered -32602.
        :raises DaemonError: the daemon answered any other error.
        """
        line = b""
        for attempt in (0, 1):
            state = self._current()
            fresh = state is None
            if state is None:
                state = self._connect()
            near = state.near if method == "get" and params is not None else None
            if near is not None:
                address = address_key(params)  # type: ignore[arg-type]
                kept = self._near_get(state, address)
                if kept is not None:
                    return kept  # (before any encoding: a hit from the process costs a lookup and a poll)
                if state.near is None or self._current() is not state:
                    continue  # the socket closed while draining: a fresh one (and near cache)
                sent_at = near.begin(address)
            if not line:
                request_id = self._next_id()
                line = _encode_request(request_id, method, params, self.timeout)
            finished = keep = False
            try:
                state.sock.sendall(line)
                answer = self._read_answer(state, request_id)
                if near is not None:
                    finished = True
                    keep = near.finish(address)
            except socket.timeout:
                # A late answer would arrive on this socket later: do not reuse it.
                self._drop(state)
                raise DaemonUnavailable("cached at %s did not answer %s within %ss"
                                        % (self.path, method, self.timeout)) from None
            except (OSError, EOFError) as e:
                self._drop(state)
                if fresh or attempt:
                    raise DaemonUnavailable("connection to cached at %s lost: %s"
                                            % (self.path, e or type(e).__name__)) from None
                continue  # a reused socket went stale (daemon restarted): one retry, fresh
            except DaemonUnavailable:
                self._drop(state)
                raise
            finally:
                if near is not None and not finished:
                    near.finish(address)
            result = _result_of(answer)
            if keep and near is not None:
                near.keep(address, result, sent_at)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_line(self, state: _ThreadState) -> bytes:
        if state.near is None:
            return state.file.readline()
        while True:
            end = state.buf.find(b"\n")
            if end >= 0:
                line = bytes(state.buf[:end + 1])
                del state.buf[:end + 1]
                return line
            data = state.sock.recv(65536)
            if not data:
                line = bytes(state.buf)
                state.buf.clear()
                return line
            state.buf += data

    def _read_answer(self, state: _ThreadState, request_id: int) -> Dict[str, Any]:
        while True:
            line = self._read_line(state)
            if not line:
                raise EOFError("closed by cached")
            if not line.endswith(b"\n"):
                raise EOFError("closed by cached in the middle of an answer")
            answer = _decode_answer(line, notifications=state.near is not None)
            if state.near is not None and answer.get("method") == "invalidate" and "id" not in answer:
                state.near.invalidate(answer.get("params"))
                continue
            answer_id = answer.get("id")
            if answer_id == request_id or (answer_id is None and "error" in answer):
                # id null: the daemon could not read our line's id; it is ours, the only one
                # in flight on this socket.
                return answer
            # An answer to some earlier request that we gave up on: skip it.

    def close(self) -> None:
        """Closes the calling thread's socket (others close when their thread ends)."""
        state: Optional[_ThreadState] = getattr(self._local, "state", None)
        if state is not None:
            self._drop(state)

    # -- asyncio path -----------------------------------------------------------------------

    async def acall(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """Like :meth:`call`, without blocking the running event loop."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            channel = self._channels.get(loop)
            if channel is None or channel.pid != os.getpid():
                channel = _AsyncChannel(self, loop)
                self._channels[loop] = channel
        near = channel.near if method == "get" and params is not None else None
        if near is not None:
            if near.proven() and channel.nothing_unread():
                kept = near.get(address_key(params))  # type: ignore[arg-type]
                if kept is not None:
                    return kept
            sent_at = near.begin(address_key(params))  # type: ignore[arg-type]
            finished = keep = False
            try:
                request_id = self._next_id()
                answer = await channel.call(method, request_id, _encode_request(request_id, method, params, self.timeout))
                finished = True
                keep = near.finish(address_key(params))  # type: ignore[arg-type]
            finally:
                if not finished:
                    near.finish(address_key(params))  # type: ignore[arg-type]
            result = _result_of(answer)
            if keep and channel.near is near:
                near.keep(address_key(params), result, sent_at)  # type: ignore[arg-type]
            return result
        request_id = self._next_id()
        line = _encode_request(request_id, method, params, self.timeout)
        return _result_of(await channel.call(method, request_id, line))


class _AsyncChannel:
    """One asyncio stream to the daemon for one event loop, answers dispatched by id."""

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        self.loop = loop
        self.pid = os.getpid()
        self.writer: Optional[asyncio.StreamWriter] = None
        self.pending: Dict[int, "asyncio.Future[Dict[str, Any]]"] = {}
        self.connecting: Optional["asyncio.Future[None]"] = None
        self.reader_task: Optional["asyncio.Task[None]"] = None
        #: With ``near_cache``: this loop's near cache, new with each stream (the reader task applies
        #: the notifications as they come).
        self.near: Optional[NearCache] = None
        self.reader: Optional[asyncio.StreamReader] = None

    def nothing_unread(self) -> bool:
        """True when no byte from the daemon waits to be read (in the socket, or read but not yet handled
        by the reader task): every notification sent so far has been applied to the near cache."""
        reader, writer = self.reader, self.writer
        if reader is None or writer is None or writer.is_closing():
            return False
        buffered = getattr(reader, "_buffer", None)  # asyncio.StreamReader's own buffer (stdlib internals)
        if buffered is None or len(buffered):
            return False
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def _ensure_open(self) -> Tuple[asyncio.StreamWriter, bool]:
        if self.writer is not None and not self.writer.is_closing():
            return self.writer, False
        if self.connecting is not None:  # another coroutine is connecting: share its result
            await asyncio.shield(self.connecting)
            if self.writer is None:
                raise DaemonUnavailable("cannot connect to cached at %s" % self.connection.path)
            return self.writer, True
        self.connecting = self.loop.create_future()
        try:
            path = self.connection.path
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(path, limit=_MAX_LINE),
                    self.connection.connect_timeout)
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                raise DaemonUnavailable("cannot connect to cached at %s: %s"
                                        % (path, e or type(e).__name__)) from None
            self.writer = writer
            self.reader = reader
            near = NearCache(self.connection.near_cache) if self.connection.near_cache else None
            self.near = None
            self.reader_task = self.loop.create_task(self._read_loop(reader, writer, near))
            if near is not None:
                # Tracked before anything is read on this stream.
                request_id = self.connection._next_id()
                future: "asyncio.Future[Dict[str, Any]]" = self.loop.create_future()
                self.pending[request_id] = future
                writer.write(_encode_request(request_id, "track", {"maxEntries": near.capacity}))
                try:
                    await writer.drain()
                    near.use_proof(_result_of(await asyncio.wait_for(future, self.connection.timeout)))
                except (OSError, EOFError, asyncio.TimeoutError) as e:
                    raise DaemonUnavailable("cannot ask cached at %s for tracking: %s"
                                            % (path, e or type(e).__name__)) from None
                finally:
                    self.pending.pop(request_id, None)
                self.near = near
            return writer, True
        finally:
            self.connecting.set_result(None)
            self.connecting = None

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         near: Optional[NearCache] = None) -> None:
        reason: BaseException = EOFError("closed by cached")
        try:
            while True:
                line = await reader.readline()
                if not line or not line.endswith(b"\n"):
                    break
                answer = _decode_answer(line, notifications=near is not None)
                if near is not None and answer.get("method") == "invalidate" and "id" not in answer:
                    near.invalidate(answer.get("params"))
                    continue
                answer_id = answer.get("id")
                future = self.pending.pop(answer_id, None) if isinstance(answer_id, int) else None
                if future is None and answer_id is None and "error" in answer and len(self.pending) == 1:
                    future = self.pending.popitem()[1]
                if future is not None and not future.done():
                    future.set_result(answer)
        except (OSError, ValueError, DaemonUnavailable) as e:
            reason = e
        except asyncio.CancelledError:
            reason = EOFError("cancelled")
        finally:
            if near is not None:
                near.clear()  # nothing tells it of changes any longer
            if self.writer is writer:
                self.writer = None
                self.near = None
            writer.close()
            pending, self.pending = self.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionResetError(str(reason) or type(reason).__name__))

    async def call(self, method: str, request_id: int, line: bytes) -> Dict[str, Any]:
        timeout = self.connection.timeout
        wait = None if timeout is None else timeout + ANSWER_GRACE
        for attempt in (0, 1):
            writer, fresh = await self._ensure_open()
            future: "asyncio.Future[Dict[str, Any]]" = self.loop.create_future()
            self.pending[request_id] = future
            try:
                writer.write(line)
                await writer.drain()
                return await asyncio.wait_for(future, wait)
            except asyncio.TimeoutError:
                raise DaemonUnavailable("cached at %s did not answer %s within %ss"
                                        % (self.connection.path, method, timeout)) from None
            except (OSError, EOFError) as e:
                if self.writer is writer:
                    self.writer = None
                    writer.close()
                if fresh or attempt:
                    raise DaemonUnavailable("connection to cached at %s lost: %s"
                                            % (self.connection.path, e or type(e).__name__)) from None
            finally:
                self.pending.pop(request_id, None)
        raise AssertionError("unreachable")  # pragma: no cover


class ConnectionPool(Connection):
    """Stand-in for ``redis.ConnectionPool``: swap ``from redis import ConnectionPool`` for
    ``from redis_cache import ConnectionPool`` and the code keeps running.

    Every argument redis-py accepted (host, port, db, ...) is accepted and ignored: the daemon
    owns the Redis connection. It is the default daemon socket (``$CACHED_SOCKET``, else
    ``/run/cached/cached.sock``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(None)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "ConnectionPool":
        return cls()

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self.close()


_shared_lock = threading.Lock()
_shared: Dict[str, Connection] = {}
_shared_near: Dict[str, Connection] = {}


def _shared_connection(path: str) -> Connection:
    with _shared_lock:
        connection = _shared.get(path)
        if connection is None:
            connection = _shared[path] = Connection(path)
        return connection


def _shared_near_connection(path: str, near_cache: int, like: Optional[Connection]) -> Connection:
    with _shared_lock:
        connection = _shared_near.get(path)
        if connection is None:
            connection = _shared_near[path] = Connection(
                path, timeout=like.timeout if like else 30.0,
                connect_timeout=like.connect_timeout if like else 5.0, near_cache=near_cache)
        elif connection.near_cache < near_cache:
            connection.near_cache = near_cache  # sockets opened from now on ask for the larger bound
        return connection


def resolve_connection(target: Any, near_cache: int = 0) -> Connection:
    """The connection a client's first argument designates.

    A :class:`Connection` (or :class:`ConnectionPool`) is used as it is; a path (``str``,
    ``bytes`` or ``os.PathLike``) names the daemon's socket; anything else (an old
    ``redis.ConnectionPool``, ``None``...) means the default socket. Clients naming the same path
    share one :class:`Connection` (so one socket per thread, not one per client).

    With ``near_cache`` (entries), clients of the same daemon share one connection with a near cache
    of the largest size any of them asked for, per thread (and per event loop).
    """
    if near_cache > 0:
        if isinstance(target, Connection):
            if target.near_cache >= near_cache:
                return target
            return _shared_near_connection(target.path, near_cache, target)
        path = os.fsdecode(target) if isinstance(target, (str, bytes, os.PathLike)) else default_socket_path()
        return _shared_near_connection(path, near_cache, None)
    if isinstance(target, Connection):
        return target
    if isinstance(target, (str, bytes, os.PathLike)):
        return _shared_connection(os.fsdecode(target))
    return _shared_connection(default_socket_path())
