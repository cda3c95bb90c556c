"""A tiny in-memory stand-in for the cached daemon, for unit tests of the shim's framing and flows.

It is NOT a reference for the daemon: integration tests run against the real binary. It speaks the
same wire protocol (newline-delimited JSON-RPC 2.0 over a Unix socket), answers requests of one
connection concurrently (so answers can come back out of order), hands out leases on misses, and
records every request with the pid of the process on the other end (SO_PEERCRED).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from redis_cache.utils import key_generator

Handler = Callable[[Any, List[Any], Dict[str, Any]], Optional[bytes]]


class FakeDaemon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.strings: Dict[str, bytes] = {}
        self.hashes: Dict[str, Dict[str, bytes]] = {}
        self.ttls: Dict[str, float] = {}
        self.handlers: Dict[str, Handler] = {}
        self.leases: Dict[str, str] = {}
        self.requests: List[Tuple[int, Dict[str, Any]]] = []  # (peer pid, request)
        self.connections: List[int] = []  # peer pid of each accepted connection
        self.error_for: Dict[str, Tuple[int, str]] = {}  # method -> (code, message)
        self.give_leases = True
        self.refuse_leases = False
        self.delay: Callable[[Dict[str, Any]], float] = lambda request: 0.0
        self.raw_reply: Optional[bytes] = None  # if set, sent instead of any answer
        self._lease_counter = 0
        self._lock = threading.Lock()
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
            threading.Thread(target=self._serve, args=(conn, pid), daemon=True).start()

    def _serve(self, conn: socket.socket, pid: int) -> None:
        write_lock = threading.Lock()
        f = conn.makefile("rb")
        try:
            for line in f:
                request = json.loads(line)
                with self._lock:
                    self.requests.append((pid, request))
                threading.Thread(target=self._answer, args=(conn, write_lock, request), daemon=True).start()
        except (OSError, ValueError):
            pass

    def _answer(self, conn: socket.socket, write_lock: threading.Lock, request: Dict[str, Any]) -> None:
        delay = self.delay(request)
        if delay:
            self._stopped.wait(delay)
        if self.raw_reply is not None:
            out = self.raw_reply
        else:
            answer: Dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
            method = request.get("method")
            if method in self.error_for:
                code, message = self.error_for[method]
                answer["error"] = {"code": code, "message": message}
            else:
                try:
                    answer["result"] = getattr(self, "_m_" + method)(request.get("params") or {})
                except KeyError as e:
                    answer["error"] = {"code": -32602, "message": "missing %s" % e}
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

    def _m_get(self, params: Dict[str, Any]) -> Any:
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
        if not self.give_leases:
            return {"hit": False, "value": None}
        with self._lock:
            self._lease_counter += 1
            token = "lease-%d" % self._lease_counter
            self.leases[token] = json.dumps(self._names(params))
        return {"hit": False, "value": None, "lease": token}

    def _m_set(self, params: Dict[str, Any]) -> Any:
        raw = params["value"]
        value = base64.b64decode(raw) if params.get("encoding") == "base64" else raw.encode()
        lease = params.get("lease")
        if lease is not None:
            with self._lock:
                owner = self.leases.pop(lease, None)
            if self.refuse_leases or owner != json.dumps(self._names(params)):
                return {"stored": False}
        self._write(params, value)
        if params.get("ttl"):
            self.ttls[self._names(params)[1]] = params["ttl"]
        return {"stored": True}

    def _m_delete(self, params: Dict[str, Any]) -> Any:
        hash_name, name = self._names(params)
        if hash_name is None:
            return {"deleted": 1 if self.strings.pop(name, None) is not None else 0}
        return {"deleted": 1 if self.hashes.get(hash_name, {}).pop(name, None) is not None else 0}

    def _m_deleteHash(self, params: Dict[str, Any]) -> Any:
        name = key_generator(params["hashKey"], params["hashId"])
        return {"deleted": 1 if self.hashes.pop(name, None) is not None else 0}
