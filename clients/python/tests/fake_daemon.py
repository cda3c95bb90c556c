"""A tiny in-memory stand-in for the cached daemon, for unit tests of the shim's framing and flows.

It is NOT a reference for the daemon: integration tests run against the real binary. It speaks the
same wire protocol (newline-delimited JSON-RPC 2.0 over a Unix socket), answers requests of one
connection concurrently (so answers can come back out of order), and records every request with the
pid of the process on the other end (SO_PEERCRED).

Misses on a key without a handler follow the daemon's lease flow (docs/protocol.md): the first
asker gets a lease, later askers wait; the holder's `set` with the token wakes them with the value;
`release`, a `delete`, the holder's disconnect or `lease_timeout` pass the lease to the first waiter;
a plain `set` revokes it and wakes the waiters; the holder asking again gets a new token; a `get`
with `"lease": false` never takes a lease nor waits.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from redis_cache.utils import key_generator

Handler = Callable[[Any, List[Any], Dict[str, Any]], Optional[bytes]]

_ENTRY_PARAMS = {"key", "identity", "hashKey", "hashId"}


class InvalidParams(Exception):
    """Answered as -32602."""


class _Waiter:
    """A `get` waiting behind a lease; `answer` is set before `event`."""

    def __init__(self, conn: int) -> None:
        self.conn = conn
        self.event = threading.Event()
        self.answer: Optional[Dict[str, Any]] = None

    def wake(self, answer: Optional[Dict[str, Any]]) -> None:
        self.answer = answer
        self.event.set()


class _Lease:
    def __init__(self, token: str, holder: int, deadline: float) -> None:
        self.token = token
        self.holder = holder  # connection id
        self.deadline = deadline
        self.waiters: List[_Waiter] = []


class FakeDaemon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.strings: Dict[str, bytes] = {}
        self.hashes: Dict[str, Dict[str, bytes]] = {}
        self.ttls: Dict[str, float] = {}
        self.handlers: Dict[str, Handler] = {}
        self.leases: Dict[str, _Lease] = {}  # entry (see _entry) -> its live lease
        self.lease_timeout = 5.0  # seconds, as the daemon's default
        self.lease_waits = 0  # gets that waited behind a lease (the daemon's stats.fills.leaseWaits)
        self.requests: List[Tuple[int, Dict[str, Any]]] = []  # (peer pid, request)
        self.timeouts: List[Tuple[Any, Any]] = []  # (method, the request's `timeout`)
        self.answers: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []  # (request, answer) as sent
        self.connections: List[int] = []  # peer pid of each accepted connection
        self.error_for: Dict[str, Tuple[int, str]] = {}  # method -> (code, message)
        self.give_leases = True
        self.refuse_leases = False
        self.delay: Callable[[Dict[str, Any]], float] = lambda request: 0.0
        self.raw_reply: Optional[bytes] = None  # if set, sent instead of any answer
        self._lease_counter = 0
        self._lock = threading.Lock()
        self._lease_lock = threading.RLock()  # the store and the leases
        self._closed: Set[int] = set()  # ids of connections that are closed
        self._connection_ids = 0
        self._current = threading.local()  # .conn: the id of the connection being answered
        self._sockets: List[socket.socket] = []
        self._stopped = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(64)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self.drop_connections()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def methods(self) -> List[str]:
        return [r["method"] for _, r in self.requests]

    # -- serving ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            with self._lock:
                self._sockets.append(conn)
                self.connections.append(pid)
                self._connection_ids += 1
                conn_id = self._connection_ids
            threading.Thread(target=self._serve, args=(conn, pid, conn_id), daemon=True).start()

    def _serve(self, conn: socket.socket, pid: int, conn_id: int) -> None:
        write_lock = threading.Lock()
        f = conn.makefile("rb")
        try:
            for line in f:
                request = json.loads(line)
                params = request.get("params") if isinstance(request, dict) else None
                with self._lock:
                    # Every method takes `timeout` (the caller's deadline): kept apart from the params.
                    if isinstance(params, dict) and "timeout" in params:
                        self.timeouts.append((request.get("method"), params.pop("timeout")))
                    self.requests.append((pid, request))
                threading.Thread(target=self._answer, args=(conn, conn_id, write_lock, request),
                                 daemon=True).start()
        except (OSError, ValueError):
            pass
        finally:
            self._connection_closed(conn_id)

    def _answer(self, conn: socket.socket, conn_id: int, write_lock: threading.Lock,
                request: Dict[str, Any]) -> None:
        delay = self.delay(request)
        if delay:
            self._stopped.wait(delay)
        if self.raw_reply is not None:
            out = self.raw_reply
        else:
            answer: Dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
            method = request.get("method")
            implementation = getattr(self, "_m_%s" % method, None)
            if method in self.error_for:
                code, message = self.error_for[method]
                answer["error"] = {"code": code, "message": message}
            elif implementation is None:
                answer["error"] = {"code": -32601, "message": "method not found: %s" % method}
            else:
                self._current.conn = conn_id
                try:
                    answer["result"] = implementation(request.get("params") or {})
                except KeyError as e:
                    answer["error"] = {"code": -32602, "message": "missing %s" % e}
                except InvalidParams as e:
                    answer["error"] = {"code": -32602, "message": str(e)}
            with self._lock:
                self.answers.append((request, answer))
            out = json.dumps(answer).encode() + b"\n"
        with write_lock:
            try:
                conn.sendall(out)
            except OSError:
                pass

    # -- methods ------------------------------------------------------------------------------

    @staticmethod
    def _names(params: Dict[str, Any]) -> Tuple[Optional[str], str]:
        name = key_generator(params["key"], params["identity"])
        if "hashKey" in params:
            return key_generator(params["hashKey"], params["hashId"]), name
        return None, name

    def _read(self, params: Dict[str, Any]) -> Optional[bytes]:
        hash_name, name = self._names(params)
        if hash_name is None:
            return self.strings.get(name)
        return self.hashes.get(hash_name, {}).get(name)

    def _write(self, params: Dict[str, Any], value: bytes) -> None:
        hash_name, name = self._names(params)
        if hash_name is None:
            self.strings[name] = value
        else:
            self.hashes.setdefault(hash_name, {})[name] = value

    @staticmethod
    def _value(value: bytes) -> Dict[str, Any]:
        try:
            return {"value": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"value": base64.b64encode(value).decode(), "encoding": "base64"}

    def _m_ping(self, params: Dict[str, Any]) -> Any:
        return "pong"

    def _m_stats(self, params: Dict[str, Any]) -> Any:
        with self._lease_lock:
            return {"fills": {"leaseWaits": self.lease_waits, "leasesOut": len(self.leases)}}

    def _m_get(self, params: Dict[str, Any]) -> Any:
        take_lease = params.get("lease", True)
        if not isinstance(take_lease, bool):
            raise InvalidParams('"lease" must be a boolean')
        entry = self._entry(params)
        value = self._read(params)
        if value is not None:
            return dict(hit=True, **self._value(value))
        handler = self.handlers.get(params["key"])
        if handler is not None:
            filled = handler(params["identity"], params.get("args", []), params.get("kwargs", {}))
            if filled is None:
                return {"hit": False, "value": None}
            self._write(params, filled)
            return dict(hit=False, **self._value(filled))
        if not take_lease or not self.give_leases:
            return {"hit": False, "value": None}
        conn = self._current.conn
        with self._lease_lock:
            value = self._read(params)  # again, now that no write can come in between
            if value is not None:
                return dict(hit=True, **self._value(value))
            self._expire(entry)
            lease = self.leases.get(entry)
            if lease is None:
                return self._grant(entry, conn)
            if lease.holder == conn:  # the holder asks again: it abandoned its fill
                lease.token = self._new_token()
                lease.deadline = time.monotonic() + self.lease_timeout
                return {"hit": False, "value": None, "lease": lease.token}
            waiter = _Waiter(conn)
            lease.waiters.append(waiter)
            self.lease_waits += 1
        return self._wait(entry, waiter)

    def _m_set(self, params: Dict[str, Any]) -> Any:
        raw = params["value"]
        value = base64.b64decode(raw) if params.get("encoding") == "base64" else raw.encode()
        token = params.get("lease")
        entry = self._entry(params)
        with self._lease_lock:
            self._expire(entry)
            lease = self.leases.get(entry)
            if token is not None and (self.refuse_leases or lease is None or lease.token != token):
                if lease is not None and lease.token == token:
                    self._pass_on(entry)
                return {"stored": False, "reason": "lease no longer valid"}
            self._write(params, value)
            if params.get("ttl"):
                self.ttls[self._names(params)[1]] = params["ttl"]
            if lease is not None:  # redeemed, or revoked by a plain set: the waiters get the value
                del self.leases[entry]
                for waiter in lease.waiters:
                    waiter.wake(dict(hit=False, **self._value(value)))
        return {"stored": True}

    def _m_release(self, params: Dict[str, Any]) -> Any:
        unknown = set(params) - _ENTRY_PARAMS - {"lease"}
        if unknown:
            raise InvalidParams("unknown parameter %s" % sorted(unknown)[0])
        token = params["lease"]
        if not isinstance(token, str) or not token:
            raise InvalidParams('"lease" must be a non-empty string')
        entry = self._entry(params)
        with self._lease_lock:
            self._expire(entry)
            lease = self.leases.get(entry)
            if lease is None or lease.token != token:
                return {"released": False}
            self._pass_on(entry)
        return {"released": True}

    def _m_delete(self, params: Dict[str, Any]) -> Any:
        hash_name, name = self._names(params)
        with self._lease_lock:
            if self.leases.get(self._entry(params)) is not None:
                self._pass_on(self._entry(params))
            if hash_name is None:
                return {"deleted": 1 if self.strings.pop(name, None) is not None else 0}
            return {"deleted": 1 if self.hashes.get(hash_name, {}).pop(name, None) is not None else 0}

    def _m_deleteHash(self, params: Dict[str, Any]) -> Any:
        name = key_generator(params["hashKey"], params["hashId"])
        with self._lease_lock:
            for entry in [e for e in self.leases if json.loads(e)[0] == name]:
                self._pass_on(entry)
            return {"deleted": 1 if self.hashes.pop(name, None) is not None else 0}

    # -- leases -------------------------------------------------------------------------------

    def _entry(self, params: Dict[str, Any]) -> str:
        if ("hashKey" in params) != ("hashId" in params):
            raise InvalidParams("hashKey and hashId go together")
        return json.dumps(self._names(params))

    def _new_token(self) -> str:
        with self._lock:
            self._lease_counter += 1
            return "lease-%d" % self._lease_counter

    def _grant(self, entry: str, conn: int) -> Dict[str, Any]:
        """A new lease on `entry` for connection `conn` (under _lease_lock)."""
        token = self._new_token()
        if conn not in self._closed:  # else the lease dies with its connection at once
            self.leases[entry] = _Lease(token, conn, time.monotonic() + self.lease_timeout)
        return {"hit": False, "value": None, "lease": token}

    def _pass_on(self, entry: str) -> None:
        """The live lease of `entry` ends without a value: the first waiter gets a new one."""
        lease = self.leases.pop(entry)
        while lease.waiters:
            waiter = lease.waiters.pop(0)
            if waiter.conn in self._closed:
                continue
            answer = self._grant(entry, waiter.conn)
            self.leases[entry].waiters = lease.waiters
            waiter.wake(answer)
            return

    def _expire(self, entry: str) -> None:
        lease = self.leases.get(entry)
        if lease is not None and time.monotonic() >= lease.deadline:
            self._pass_on(entry)

    def _wait(self, entry: str, waiter: _Waiter) -> Any:
        while not self._stopped.is_set():
            with self._lease_lock:
                lease = self.leases.get(entry)
                remaining = lease.deadline - time.monotonic() if lease is not None else 0.05
            if waiter.event.wait(max(remaining, 0.001)):
                return waiter.answer
            with self._lease_lock:
                self._expire(entry)
        return {"hit": False, "value": None}

    def _connection_closed(self, conn: int) -> None:
        """The holder's leases pass on; the connection's own waits are dropped."""
        with self._lease_lock:
            self._closed.add(conn)
            for entry, lease in list(self.leases.items()):
                for waiter in [w for w in lease.waiters if w.conn == conn]:
                    lease.waiters.remove(waiter)
                    waiter.wake(None)
                if lease.holder == conn:
                    self._pass_on(entry)
