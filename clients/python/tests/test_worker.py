"""`python -m redis_cache.worker`, run as a subprocess speaking JSON-RPC on stdin/stdout."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from helpers import CLIENT_ROOT

FUNCS = '''
import asyncio, json

def student(identity, *args, **kwargs):
    print("noise on stdout")  # must not reach the protocol stream
    return {"id": identity, "args": list(args), "kwargs": kwargs}

def text(identity):
    return "text-%s" % identity

def blob(identity):
    return bytes([0xff, 0x00, identity])

def utf8_bytes(identity):
    return "é".encode()

def nothing(identity):
    return None

def boom(identity):
    raise ValueError("no student %s" % identity)

async def slow_student(identity, scale=1):
    await asyncio.sleep(0.01)
    return {"id": identity * scale}

def upper_json(data):
    return json.dumps(data).upper()
'''


def run_worker(tmp_path: Path, spec: str, lines: List[str], *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "funcs.py").write_text(FUNCS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CLIENT_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "redis_cache.worker", spec, *extra],
                          input="".join(l + "\n" for l in lines).encode(), cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)


def request(rid: Any, identity: Any, *args: Any, **kwargs: Any) -> str:
    params: Dict[str, Any] = {"key": "Student", "identity": identity}
    if args:
        params["args"] = list(args)
    if kwargs:
        params["kwargs"] = kwargs
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "sync", "params": params})


def answers(proc: subprocess.CompletedProcess) -> List[Dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(l) for l in proc.stdout.decode().splitlines()]


def test_dict_result_is_json_and_stdout_stays_clean(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, "funcs:student", [request(1, 12, "a", 2, age=15), request("x", "abc")])
    out = answers(proc)
    assert out == [
        {"jsonrpc": "2.0", "id": 1, "result": json.dumps({"id": 12, "args": ["a", 2], "kwargs": {"age": 15}})},
        {"jsonrpc": "2.0", "id": "x", "result": json.dumps({"id": "abc", "args": [], "kwargs": {}})},
    ]
    assert b"noise on stdout" in proc.stderr


def test_str_bytes_and_none(tmp_path: Path) -> None:
    assert answers(run_worker(tmp_path, "funcs:text", [request(1, 7)]))[0]["result"] == "text-7"
    out = answers(run_worker(tmp_path, "funcs:blob", [request(2, 9)]))[0]
    assert out["result"] == {"value": base64.b64encode(bytes([0xff, 0, 9])).decode(), "encoding": "base64"}
    assert answers(run_worker(tmp_path, "funcs:utf8_bytes", [request(3, 1)]))[0]["result"] == "é"
    assert answers(run_worker(tmp_path, "funcs:nothing", [request(4, 1)])) == [
        {"jsonrpc": "2.0", "id": 4, "result": None}]


def test_exception_is_an_error_answer_and_the_worker_goes_on(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, "funcs:boom", [request(1, 5), request(2, 6)])
    out = answers(proc)
    assert out == [
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "ValueError: no student 5"}},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32000, "message": "ValueError: no student 6"}},
    ]
    assert b"Traceback" in proc.stderr


def test_async_function_and_set_func(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, "funcs:slow_student", [request(1, 3), request(2, 3, scale=2)],
                      "--set-func", "funcs:upper_json")
    assert [a["result"] for a in answers(proc)] == ['{"ID": 3}', '{"ID": 6}']


def test_protocol_errors(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, "funcs:text", [
        "not json",
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "nope", "params": {}}),
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": "sync", "params": {"key": "Student"}}),
        "",
        request(4, 1),
    ])
    out = answers(proc)
    assert [a.get("error", {}).get("code") for a in out] == [-32700, -32601, -32602, None]
    assert out[0]["id"] is None and out[3] == {"jsonrpc": "2.0", "id": 4, "result": "text-1"}


def test_answers_each_line_as_it_comes(tmp_path: Path) -> None:
    (tmp_path / "funcs.py").write_text(FUNCS)
    env = dict(os.environ, PYTHONPATH=str(CLIENT_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "redis_cache.worker", "funcs:text"], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for i in range(3):
            proc.stdin.write((request(i, i) + "\n").encode())
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline())["result"] == "text-%d" % i
    finally:
        proc.stdin.close()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("spec", ["funcs:missing", "nomodule:f", "funcs"])
def test_bad_function_spec_exits_non_zero(tmp_path: Path, spec: str) -> None:
    proc = run_worker(tmp_path, spec, [])
    assert proc.returncode != 0 and proc.stdout == b""
