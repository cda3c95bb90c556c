"""Per-key access (`[[access]]`) against a real daemon and real Redis, with clients running as other users.

The test makes its own users and group (``useradd``/``groupadd``, removed at the end), runs each client as
one of them with ``setpriv`` (so the daemon reads that uid and gid with SO_PEERCRED), and checks every method,
batches that mix allowed and refused members, leases, tracking notifications, a reload that takes a permission
away from an open connection, and ``cached --check-config``. Needs root (to make users and switch to them).
"""

import json
import os
import pwd
import grp
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "conformance"))
from harness import Child, RedisServer, ping, wait_until  # noqa: E402

BINARY = Path(os.environ.get("CACHED_BIN", str(ROOT / ".build" / "debug" / "cached")))
REFUSED = -32010

READER, WRITER, STRANGER = "cachedtest-reader", "cachedtest-writer", "cachedtest-stranger"
BILLING = "cachedtest-billing"

# The client run as another user: forwards each line of stdin to the daemon's socket on ONE connection and
# prints each line the daemon sends (answers and notifications), so a test can drive a long-lived connection.
CLIENT = r"""
import socket, sys, threading
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def pump():
    f = s.makefile("rb")
    for line in f:
        sys.stdout.write(line.decode()); sys.stdout.flush()
threading.Thread(target=pump, daemon=True).start()
for line in sys.stdin:
    s.sendall(line.encode())
"""


def rules(reader_read: List[str]) -> str:
    return """
[[access]]
name = "readers"
users = ["%s"]
read = %s

[[access]]
name = "billing"
groups = ["%s"]
write = ["Student", "Class"]
read = ["Bill*"]

[[access]]
name = "operators"
users = ["root"]
read = ["*"]
write = ["*"]
admin = true
""" % (READER, json.dumps(reader_read), BILLING)


CONFIG = """
socket_mode = 0o666
[keys.Student]
ttl = 60
lease_timeout = 5
[keys.Class]
ttl = 60
[keys.Billing]
ttl = 60
"""


def run(argv: List[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def users() -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip("per-key access tests make users and run clients as them: they need root")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed" % tool)
    made_users: List[str] = []
    made_groups: List[str] = []
    try:
        if not _group_exists(BILLING):
            run(["groupadd", "--system", BILLING])
            made_groups.append(BILLING)
        for name, extra in ((READER, []), (WRITER, ["-G", BILLING]), (STRANGER, [])):
            if not _user_exists(name):
                run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name])
                made_users.append(name)
        yield {name: pwd.getpwnam(name).pw_uid for name in (READER, WRITER, STRANGER)}
    finally:
        for name in made_users:
            run(["userdel", name], check=False)
        for name in made_groups:
            run(["groupdel", name], check=False)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


class Daemon:
    """cached over a private redis-server, its directory readable by the test users."""

    def __init__(self, reader_read: List[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cached-access-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "redis").mkdir()
        self.redis = RedisServer(self.dir / "redis")
        self.redis.start()
        self.config = self.dir / "cached.toml"
        self.write_config(reader_read)
        self.socket = str(self.dir / "cached.sock")
        self.child = Child(
            [str(BINARY), "--config", str(self.config), "--socket", self.socket,
             "--redis", "unix://%s?db=0" % self.redis.socket],
            self.dir / "cached.log")
        wait_until(lambda: os.path.exists(self.socket) and ping(self.socket), 20, "cached")

    def write_config(self, reader_read: List[str]) -> None:
        self.config.write_text(CONFIG + rules(reader_read))

    def reload(self, reader_read: List[str]) -> None:
        before = self.child.output().count("configuration reloaded")
        self.write_config(reader_read)
        self.child.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.child.output().count("configuration reloaded") > before, 10, "the reload")

    def close(self) -> None:
        self.child.stop()
        self.redis.stop(keep_data=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class Peer:
    """A long-lived connection of a client running as `user` (root: the test's own user)."""

    def __init__(self, daemon: Daemon, user: Optional[str]) -> None:
        prefix = [] if user is None else ["setpriv", "--reuid=%s" % user, "--regid=%s" % pwd.getpwnam(user).pw_gid, "--init-groups"]
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", CLIENT, daemon.socket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.next_id = 0
        self.notifications: List[dict] = []
        assert self.call("ping") == {"result": "pong"}, "a peer of any rule may ping"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def message(self, method: str, params: Optional[dict] = None) -> dict:
        self.next_id += 1
        m: dict = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            m["params"] = params
        return m

    def send(self, payload: Any) -> Any:
        """Sends one line (a message or a batch) and answers the daemon's answer (notifications set aside)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=10)
            except queue.Empty:
                raise AssertionError("no answer to %s; stderr: %s" % (payload, self.proc.stderr.read() if self.proc.poll() is not None else ""))
            answer = json.loads(line)
            if isinstance(answer, dict) and answer.get("method") == "invalidate":
                self.notifications.append(answer)
                continue
            return answer

    def call(self, method: str, params: Optional[dict] = None) -> dict:
        answer = self.send(self.message(method, params))
        return {k: v for k, v in answer.items() if k in ("result", "error")}

    def wait_notification(self, timeout: float = 5.0) -> dict:
        if self.notifications:
            return self.notifications.pop(0)
        answer = json.loads(self.lines.get(timeout=timeout))
        assert answer.get("method") == "invalidate", answer
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def refused(answer: dict, uid: int, verb: str, what: str) -> None:
    assert "error" in answer, answer
    assert answer["error"]["code"] == REFUSED, answer
    assert answer["error"]["message"].startswith("uid %d may not %s %s" % (uid, verb, what)), answer


def entry(key: str, identity: Any, **extra: Any) -> dict:
    return {"key": key, "identity": identity, **extra}


@pytest.fixture()
def daemon(users: dict) -> Iterator[Daemon]:
    if not os.access(BINARY, os.X_OK):
        pytest.skip("cached binary not built: %s" % BINARY)
    d = Daemon(reader_read=["Student"])
    try:
        yield d
    finally:
        d.close()


def test_reads_writes_admin_and_batches_by_rule(daemon: Daemon, users: dict) -> None:
    reader, writer, stranger, root = (Peer(daemon, READER), Peer(daemon, WRITER), Peer(daemon, STRANGER), Peer(daemon, None))
    r, w, s = users[READER], users[WRITER], users[STRANGER]
    try:
        # The writer (by its group) stores; the reader reads it, under every spelling of the same Redis entry.
        assert writer.call("set", entry("Student", 12, value="ada"))["result"]["stored"] is True
        assert daemon.redis.command([b"GET", b"000STUDENT#0000000012"]) == b"ada"
        for spelling in ("Student", "student", "STUDENT", "0Student"):
            assert reader.call("get", entry(spelling, 12))["result"]["value"] == "ada", spelling
        # Read is not write: every write method is refused, and nothing reaches Redis.
        refused(reader.call("set", entry("Student", 12, value="eve")), r, "write", "Student")
        refused(reader.call("delete", entry("Student", 12)), r, "write", "Student")
        refused(reader.call("deleteHash", {"hashKey": "Student", "hashId": 1}), r, "write", "Student")
        refused(reader.call("release", entry("Student", 12, lease="x")), r, "write", "Student")
        assert daemon.redis.command([b"GET", b"000STUDENT#0000000012"]) == b"ada"
        # Other keys, also a longer name that starts like an allowed one, and a hash entry of another key.
        refused(reader.call("get", entry("Class", 3)), r, "read", "Class")
        refused(reader.call("get", entry("StudentX", 3)), r, "read", "StudentX")
        refused(reader.call("get", entry("Class", 3, hashKey="Student", hashId=1)), r, "read", "Class")
        # A hash entry of an allowed key is allowed, whatever hash it lives in.
        assert "result" in reader.call("get", entry("Student", 3, hashKey="Class", hashId=1, lease=False))
        # Admin methods.
        refused(reader.call("stats"), r, "call", "stats")
        refused(reader.call("metrics"), r, "call", "metrics")
        refused(writer.call("stats"), w, "call", "stats")
        assert "result" in root.call("stats")
        # Prefix rules: Bill* for the billing group.
        assert "result" in writer.call("get", entry("Billing", 1, lease=False))
        refused(writer.call("set", entry("Billing", 1, value="x")), w, "write", "Billing")
        # A peer no rule names may only ping.
        for method, params in (("get", entry("Student", 12)), ("set", entry("Student", 12, value="x"))):
            refused(stranger.call(method, params), s, "read" if method == "get" else "write", "Student")
        refused(stranger.call("track"), s, "call", "track")
        refused(stranger.call("stats"), s, "call", "stats")

        # A batch: each member is checked by itself, and answered by itself.
        batch = [
            reader.message("get", entry("Student", 12)),
            reader.message("get", entry("Class", 3)),
            reader.message("set", entry("Student", 12, value="eve")),
            reader.message("stats"),
            reader.message("ping"),
        ]
        answers = {a["id"]: a for a in reader.send(batch)}
        assert answers[batch[0]["id"]]["result"]["value"] == "ada"
        refused(answers[batch[1]["id"]], r, "read", "Class")
        refused(answers[batch[2]["id"]], r, "write", "Student")
        refused(answers[batch[3]["id"]], r, "call", "stats")
        assert answers[batch[4]["id"]]["result"] == "pong"
        assert daemon.redis.command([b"GET", b"000STUDENT#0000000012"]) == b"ada"

        # Counted by the peer's rules and key, in stats and metrics.
        access = root.call("stats")["result"]["access"]
        assert access["rules"] == ["readers", "billing", "operators"]
        by = access["refusedBy"]
        assert by["readers"]["Student"] == 5 and by["readers"]["StudentX"] == 1 and by["readers"]["Class"] == 3 and by["readers"]["(admin)"] == 3, by
        assert by["(none)"]["Student"] == 2 and by["(none)"]["(any)"] == 1 and by["(none)"]["(admin)"] == 1, by
        metrics = root.call("metrics")["result"]
        assert 'cached_access_refused_total{rule="readers",key="Student"} 5' in metrics, metrics
        log = daemon.child.output()
        assert "request refused: uid %d may not write Student" % r in log and "pid=" in log, log[-2000:]
    finally:
        for p in (reader, writer, stranger, root):
            p.close()


def test_a_reader_never_takes_a_lease_and_a_writer_fills_for_it(daemon: Daemon, users: dict) -> None:
    reader, writer = Peer(daemon, READER), Peer(daemon, WRITER)
    try:
        # The reader's miss is answered at once, without a lease it could not fill.
        first = reader.call("get", entry("Student", 40))["result"]
        assert first == {"hit": False, "value": None}, first
        lease = writer.call("get", entry("Student", 40))["result"]["lease"]
        assert reader.call("get", entry("Student", 40))["result"] == {"hit": False, "value": None}
        assert writer.call("set", entry("Student", 40, value="filled", lease=lease))["result"]["stored"] is True
        assert reader.call("get", entry("Student", 40))["result"]["value"] == "filled"
    finally:
        reader.close()
        writer.close()


def test_notifications_and_a_reload_that_takes_a_permission_away(daemon: Daemon, users: dict) -> None:
    reader, writer = Peer(daemon, READER), Peer(daemon, WRITER)
    r = users[READER]
    try:
        assert writer.call("set", entry("Student", 7, value="v1"))["result"]["stored"] is True
        assert reader.call("track")["result"]["tracking"] is True
        assert reader.call("get", entry("Student", 7))["result"]["value"] == "v1"
        # Allowed: a change of an entry it read is named to it.
        assert writer.call("set", entry("Student", 7, value="v2"))["result"]["stored"] is True
        note = reader.wait_notification()
        assert note["params"].get("entries"), note
        assert reader.call("get", entry("Student", 7))["result"]["value"] == "v2"

        # Another peer may not carry the reader's notifications (they would name what only it may read).
        token = Peer(daemon, READER)
        stranger_tracker = Peer(daemon, WRITER)
        try:
            t = token.call("track", {"separate": True})["result"]["token"]
            claim = stranger_tracker.call("notifications", {"token": t})
            assert claim["error"]["code"] == -32602, claim
        finally:
            token.close()
            stranger_tracker.close()

        # The reload takes Student away: the open connection is told to drop everything (named nothing), its
        # next request is refused, and a later change is never named to it.
        daemon.reload(reader_read=["Class"])
        note = reader.wait_notification()
        assert note["params"] == {"all": True}, note
        refused(reader.call("get", entry("Student", 7)), r, "read", "Student")
        assert writer.call("set", entry("Student", 7, value="v3"))["result"]["stored"] is True
        try:
            later = reader.wait_notification(timeout=1.0)
            assert later["params"] == {"all": True}, later
        except queue.Empty:
            pass  # nothing at all is fine too
        assert "result" in reader.call("get", entry("Class", 1, lease=False))
    finally:
        reader.close()
        writer.close()


def test_check_config_reports_unknown_users_and_unnamed_keys(tmp_path: Path, users: dict) -> None:
    if not os.access(BINARY, os.X_OK):
        pytest.skip("cached binary not built: %s" % BINARY)
    config = tmp_path / "cached.toml"
    config.write_text(CONFIG + """
[[access]]
name = "web"
users = ["cachedtest-nosuchuser", "%s"]
groups = ["cachedtest-nosuchgroup"]
read = ["Student", "Teacher"]
""" % READER)
    out = run([str(BINARY), "--config", str(config), "--check-config"], check=False)
    assert out.returncode == 1, out
    assert "problem: access web: no user cachedtest-nosuchuser" in out.stdout, out.stdout
    assert "problem: access web: no group cachedtest-nosuchgroup" in out.stdout, out.stdout
    assert "note: access web: read names Teacher, which no [keys.X] configures" in out.stdout, out.stdout
    assert "note: keys.Class: no access rule names it" in out.stdout, out.stdout
    config.write_text(CONFIG + rules(["Student"]))
    out = run([str(BINARY), "--config", str(config), "--check-config"], check=False)
    assert out.returncode == 0 and "configuration OK" in out.stdout, out


def test_cachectl_and_the_python_shim_show_the_refusal(daemon: Daemon, users: dict) -> None:
    r = users[READER]
    as_reader = ["setpriv", "--reuid=%s" % READER, "--regid=%s" % pwd.getpwnam(READER).pw_gid, "--init-groups"]
    cachectl = BINARY.parent / "cachectl"
    out = run([*as_reader, str(cachectl), "set", "--socket", daemon.socket, "Student", "12", "eve"], check=False)
    assert out.returncode == 3, out  # the daemon answered an error
    assert "uid %d may not write Student" % r in out.stderr, out.stderr
    out = run([*as_reader, str(cachectl), "stats", "--socket", daemon.socket], check=False)
    assert out.returncode == 3 and "uid %d may not call stats" % r in out.stderr, out
    # The drop-in shim (the same signatures as pyredis-cache): the refusal is a DaemonError with the code.
    script = (
        "import logging, sys; sys.path.insert(0, %r)\n"
        "logging.basicConfig(stream=sys.stdout, format='log: %%(message)s')\n"
        "from redis_cache import CacheClient, Connection\n"
        "from redis_cache.errors import DaemonError, ACCESS_REFUSED\n"
        "c = CacheClient(%r, 'Class', sync_func=lambda i: 'x')\n"
        "print('stored:', c.sync_set(3, data='x'))\n"
        "try:\n"
        "    Connection(%r).call('set', {'key': 'Class', 'identity': 3, 'value': 'x'})\n"
        "except DaemonError as e:\n"
        "    print('code:', e.code == ACCESS_REFUSED, e.message)\n"
    ) % (str(ROOT / "clients" / "python"), daemon.socket, daemon.socket)
    out = run([*as_reader, sys.executable, "-c", script], check=False)
    assert "stored: 0" in out.stdout, out  # pyredis-cache's contract: 0, and the reason logged
    assert "log: " in out.stdout and "uid %d may not write Class" % r in out.stdout, out
    assert "code: True uid %d may not write Class" % r in out.stdout, out


def test_no_bypass_from_a_read_only_peer(daemon: Daemon, users: dict) -> None:
    """Every method, alone, as a notification (no id), in a batch of one, in a batch of all, and in a batch
    whose members are notifications, from a peer that may only read Student: only reads of Student, ping and
    track go through, nothing reaches Redis, and every request with an id gets exactly one answer."""
    reader, writer, root = Peer(daemon, READER), Peer(daemon, WRITER), Peer(daemon, None)
    r = users[READER]
    try:
        assert writer.call("set", entry("Student", 1, value="seed"))["result"]["stored"] is True
        assert writer.call("set", entry("Class", 1, value="seed"))["result"]["stored"] is True
        assert writer.call("set", entry("Student", 1, value="in a hash", hashKey="Class", hashId=9))["result"]["stored"] is True
        before = sorted(daemon.redis.command([b"KEYS", b"*"]))
        values_before = {k: daemon.redis.command([b"DUMP", k]) for k in before}
        requests = [
            ("get", entry("Student", 1, lease=False), True),
            ("get", entry("Student", 2), True),  # a miss: never a lease (it may not write)
            ("get", entry("Class", 1), False),
            ("get", entry("Student", 1, hashKey="Class", hashId=9, lease=False), True),
            ("get", entry("Class", 1, hashKey="Student", hashId=9), False),
            ("set", entry("Student", 1, value="x"), False),
            ("set", entry("Student", 1, value="x", hashKey="Class", hashId=9), False),
            ("set", entry("Class", 1, value="x"), False),
            ("delete", entry("Student", 1), False),
            ("delete", entry("Class", 1), False),
            ("deleteHash", {"hashKey": "Student", "hashId": 1}, False),
            ("deleteHash", {"hashKey": "Class", "hashId": 9}, False),
            ("release", entry("Student", 2, lease="forged"), False),
            ("stats", None, False),
            ("metrics", None, False),
            ("ping", None, True),
            ("track", {"enabled": False}, True),
        ]

        def check(answer: dict, method: str, params: Optional[dict], allowed: bool) -> None:
            if allowed:
                assert "result" in answer, (method, params, answer)
                if method == "get":
                    assert "lease" not in answer["result"], answer
            else:
                assert answer.get("error", {}).get("code") == REFUSED, (method, params, answer)
                assert answer["error"]["message"].startswith("uid %d may not" % r), answer

        for method, params, allowed in requests:
            check(reader.send(reader.message(method, params)), method, params, allowed)
            notification = reader.message(method, params)
            del notification["id"]
            batch_with_notification = [notification, reader.message("ping")]
            answers = reader.send(batch_with_notification)
            assert [a["id"] for a in answers] == [batch_with_notification[1]["id"]], answers  # one answer: the ping's
            one = reader.message(method, params)
            (answer,) = reader.send([one])
            check(answer, method, params, allowed)
        batch = [reader.message(m, p) for m, p, _ in requests]
        answers = {a["id"]: a for a in reader.send(batch)}
        assert len(answers) == len(batch)
        for message, (method, params, allowed) in zip(batch, requests):
            check(answers[message["id"]], method, params, allowed)
        # Notifications of another peer's tracking connection cannot be claimed.
        t = writer.call("track", {"separate": True})["result"]["token"]
        assert reader.call("notifications", {"token": t})["error"]["code"] == -32602
        after = sorted(daemon.redis.command([b"KEYS", b"*"]))
        assert after == before and {k: daemon.redis.command([b"DUMP", k]) for k in after} == values_before
        assert root.call("stats")["result"]["access"]["refused"] > 0
    finally:
        for p in (reader, writer, root):
            p.close()
