"""Runs a ``sync_func`` as a cached worker (a daemon-side handler).

Usage::

    python -m redis_cache.worker MODULE:FUNCTION [--set-func MODULE:FUNCTION] [--log-level LEVEL]

Reads newline-delimited JSON-RPC 2.0 requests on stdin::

    {"jsonrpc":"2.0","id":1,"method":"sync","params":{"key":"Student","identity":12,"args":[],"kwargs":{}}}

calls ``FUNCTION(identity, *args, **kwargs)`` (awaiting it if it returns an awaitable), passes a
result that is not ``None`` through the set function (default: ``str``/``bytes`` as they are,
anything else ``json.dumps``), and answers one line on stdout::

    {"jsonrpc":"2.0","id":1,"result":"<value>"}
    {"jsonrpc":"2.0","id":1,"result":{"value":"<base64>","encoding":"base64"}}   (bytes, not UTF-8)
    {"jsonrpc":"2.0","id":1,"result":null}                                      (FUNCTION returned None)
    {"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"ValueError: ..."}}

Requests are handled one at a time, in order. stdout carries protocol lines only: anything the
function prints (even from C code, on file descriptor 1) goes to stderr, like the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import inspect
import json
import logging
import os
import signal
import sys
from typing import IO, Any, Callable, Dict, List, Optional

__all__ = ["main", "load_callable", "default_set_func", "handle_line"]

log = logging.getLogger("redis_cache.worker")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SYNC_FAILED = -32000


def load_callable(spec: str) -> Callable[..., Any]:
    """``"package.module:attr.path"`` -> the callable it names."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError("expected MODULE:FUNCTION, got %r" % spec)
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError("%s is not callable" % spec)
    return obj  # type: ignore[no-any-return]


def default_set_func(data: Any) -> Any:
    """``str`` and ``bytes`` pass through; anything else becomes JSON."""
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        return data
    return json.dumps(data)


def _wire_result(stored: Any) -> Any:
    if isinstance(stored, str):
        return stored
    if isinstance(stored, (bytes, bytearray, memoryview)):
        raw = bytes(stored)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"value": base64.b64encode(raw).decode("ascii"), "encoding": "base64"}
    # A set function that returned something else (a number, ...): store its JSON text.
    return json.dumps(stored)


def _error(request_id: Any, code: int, message: str) -> Dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class Worker:
    def __init__(self, func: Callable[..., Any], set_func: Callable[[Any], Any] = default_set_func) -> None:
        self.func = func
        self.set_func = set_func
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def _await(self, awaitable: Any) -> Any:
        # One loop for the worker's life, so that async functions may keep state (pools...) in it.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def handle(self, line: bytes) -> Optional[Dict[str, Any]]:
        """The answer to one request line (``None`` for a notification, i.e. no ``id``)."""
        try:
            request = json.loads(line)
        except ValueError as e:
            return _error(None, PARSE_ERROR, "Parse error: %s" % e)
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
                request.get("method"), str):
            rid = request.get("id") if isinstance(request, dict) else None
            return _error(rid, INVALID_REQUEST, "Invalid request")
        has_id = "id" in request
        request_id = request.get("id")
        answer = self._call(request_id, request["method"], request.get("params"))
        return answer if has_id else None

    def _call(self, request_id: Any, method: str, params: Any) -> Dict[str, Any]:
        if method != "sync":
            return _error(request_id, METHOD_NOT_FOUND, "Method not found: %s" % method)
        if not isinstance(params, dict) or "identity" not in params:
            return _error(request_id, INVALID_PARAMS, "sync: missing parameter \"identity\"")
        args = params.get("args") or []
        kwargs = params.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return _error(request_id, INVALID_PARAMS, "sync: \"args\" must be an array, \"kwargs\" an object")
        try:
            data = self.func(params["identity"], *args, **kwargs)
            if inspect.isawaitable(data):
                data = self._await(data)
            if data is None:
                result: Any = None
            else:
                result = _wire_result(self.set_func(data))
        except Exception as e:  # the function's failure is the answer, not the worker's end
            log.warning("sync %s#%r failed", params.get("key"), params.get("identity"), exc_info=True)
            return _error(request_id, SYNC_FAILED, "%s: %s" % (type(e).__name__, e))
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def handle_line(worker: Worker, line: bytes) -> Optional[bytes]:
    answer = worker.handle(line)
    if answer is None:
        return None
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _protocol_stdout() -> IO[bytes]:
    """Keeps the real stdout for protocol lines; sends everything else written to fd 1 to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redis_cache.worker",
                                     description="Run a sync_func as a cached worker (JSON-RPC on stdin/stdout).")
    parser.add_argument("function", metavar="MODULE:FUNCTION", help="the sync_func: called as f(identity, *args, **kwargs)")
    parser.add_argument("--set-func", metavar="MODULE:FUNCTION", default=None,
                        help="turns the data into the stored value (default: str/bytes as they are, else json.dumps)")
    parser.add_argument("--log-level", default=os.environ.get("CACHED_WORKER_LOG_LEVEL", "INFO"),
                        help="log level on stderr (default INFO)")
    options = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=options.log_level.upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so MODULE may live in the working dir
    out = _protocol_stdout()
    try:
        func = load_callable(options.function)
        set_func = load_callable(options.set_func) if options.set_func else default_set_func
    except Exception as e:
        log.error("cannot load: %s: %s", type(e).__name__, e)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    worker = Worker(func, set_func)
    log.info("worker for %s ready", options.function)
    stdin = sys.stdin.buffer
    try:
        for line in stdin:
            if not line.strip():
                continue
            answer = handle_line(worker, line)
            if answer is not None:
                out.write(answer)
                out.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
