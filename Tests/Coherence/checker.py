#!/usr/bin/env python3
"""Coherence checker for ``cached``: a randomized workload with injected faults, then a history check.

It starts its own ``redis-server`` (temp dir, Unix socket, no persistence) and its own ``cached`` (with a
local cache, a short command timeout, short leases, keys filled by ``fill_worker.py``, and the staleness
bound ``[local_cache] max_staleness = --max-staleness``), then for ``--seconds`` runs:

- ``--clients`` connections to ``cached`` (``--depth`` requests in flight on each) doing random
  ``get``/``set``/``delete`` (and now and then ``deleteHash``) on 16 entries: 6 of key ``Student`` (no
  handler: the lease flow), 4 fields of hash ``Class``/3 (same key), 6 of key ``Filled`` (a sync
  handler); plus, with ``--topology single`` (``--aged-entries``, default 4 there), entries of the aged
  key ``Aged`` (a handler, ``ttl`` 1 s, ``stale_ttl`` 1.5 s, ``grace`` 0.5 s, ``early_refresh_beta`` 1:
  its entries live 3 s in Redis, answers past the ttl say ``"stale": true``, refreshes run in the
  background). Some entries are read-mostly (3 % of their operations are writes; two aged ones 0.1 %
  and 0.4 %, so that they age, go stale, are refreshed and expire), some write-heavy (40 %), so values
  stay in the daemon's local cache long enough for a lost invalidation to show. Every value
  written is unique. A ``get`` answered with a lease is followed by a ``set`` with that lease (or, 20 %,
  a ``release``); 15 % of the gets of ``Student`` say ``"lease": false``. A daemon that answers
  ``release`` with -32601, or ``"lease": false`` with -32602, is run without them;
- one *direct writer* that ``SET``/``DEL``/``HSET``/``HDEL``s the same Redis keys itself, as another
  application would (aged entries seldom, and always with their key's whole lifetime as TTL);
- a fault injector (a fault every 0.5-2 s, each enabled kind once per round in a random order; the run goes
  on past ``--seconds`` until the first round is whole, so every enabled kind is injected at least once):
  ``kill-data`` (``CLIENT KILL`` of the daemon's data connections), ``kill-listener`` (its invalidation
  connection), ``pause`` (``CLIENT PAUSE`` 50-400 ms, ``ALL`` or ``WRITE``), ``timeout`` (a pause longer
  than the daemon's command timeout), ``restart`` (``kill -9`` of Redis, restarted empty on the same
  socket and port); and the *silent* faults, in which nothing is closed and nobody is told (below).

**TCP paths** (``--topology single``, ``--redis-path tcp``, the default). The daemons reach Redis over TCP,
each on its own loopback address: redis-server binds 127.0.0.1, 127.0.0.2... (one address per daemon, one
port) and daemon i connects to ``127.0.0.<i>:<port>``; the direct writer, the checker's admin and fault
connections keep using the Unix socket, so no netfilter rule ever touches them. The checker verifies it at
the start and at the end from ``CLIENT LIST`` (``laddr`` of every connection of each daemon, told apart by
ACL user with several; none of the checker's on TCP): a daemon off its path fails the run
(``redis_paths_checked``, ``redis_path_error``). ``--redis-path unix`` gives the daemons the Unix socket
(no network fault kinds then).

**Silent faults** (in ``--faults all``; with Sentinel and the cluster, see below). Netfilter rules (``iptables -w``, chain
INPUT, which on loopback sees both directions; each rule tagged ``-m comment --comment
cached-checker-<pid>``) match one daemon's path on destination address and port (daemon to Redis) and on
source address and port (Redis's replies):

- ``blackhole``: every packet between one daemon and Redis dropped (``-j DROP``, both directions, nothing
  closed) for 0.2-3 s, then the rules removed (the daemon's reconnections are dropped too);
- ``blackhole-one``: one flow only, both directions, 0.2-3 s: one data connection or the invalidation
  listener (half and half; ``--blackhole-one listener|data`` to choose), its local port read from ``CLIENT
  LIST`` ``addr=`` (a forgetful NAT: the daemon's other and new connections pass);
- ``loss``: 10-50 % of the packets of one daemon's path dropped at random (``-m statistic --mode random
  --probability p``; ``--loss-probability``), both directions, 1-4 s;
- ``stall-daemon``: SIGSTOP of one daemon (one that near-cache clients talk to, when there is one), SIGCONT
  0.2-3 s later, while the other daemons and the direct writer go on (and its clients' near caches: without
  a bound they keep answering).

With ``--topology sentinel`` or ``cluster`` every node listens on 127.0.0.1 and the checker's own connections
use TCP too, so the network kinds hit *flows*, not a path: on one node (the master; one primary at random),
the daemon's connections open at the fault's start, from that node's ``CLIENT LIST`` (its ACL user with
several daemons; with one, every TCP connection not named as the checker's or a Sentinel's and not a
replica's), each matched on both ends' addresses and ports: ``blackhole`` and ``loss`` take all of them,
``blackhole-one`` one; the daemon's new connections pass.

Before the run the checker probes netfilter once (adds and deletes a harmless ``-p tcp --dport <free port>
-j DROP`` on INPUT); when that fails (not root, no netfilter) the network kinds are left out, and the report
says why (``silent_faults_unavailable``). *Cleanup guarantee*: every rule is recorded before it is added
and removed with ``-D`` in the fault's ``finally``, again at teardown, and from an ``atexit`` handler and the
SIGTERM/SIGINT/SIGHUP handlers (which also remove any other rule carrying this process's tag); a stopped
daemon is continued the same ways (teardown continues it before stopping it). A checker killed with
``kill -9`` can run no handler: the next run removes the rules of checker processes that are gone (never
those of one still running); ``iptables -S | grep cached-checker`` finds any left.

``--daemons N`` runs N daemons sharing the Redis topology, each with its own folder, socket,
configuration, handler workers (their values say which daemon made them) and Redis ACL user (so that
``CLIENT LIST`` tells their connections apart); client connection i talks to daemon i mod N. The fleet
code is on (``fleet_single_flight`` defaults to true with Redis): fills and leases take the fill lock in
Redis, stores are fenced, a daemon that finds the lock held waits for the other's value. ``kill-data``
and ``kill-listener`` hit one daemon at random; ``kill-daemon`` (in ``--faults all`` with two daemons or
more) is ``kill -9`` of one daemon at random, restarted 50-300 ms later: its fill in flight dies with its
fill lock held, its clients' requests in flight are dropped. The faults on Redis are unchanged. The
history treats the daemons as one system (history.py, *Daemons*, *Fences*, *Aged entries*): a write
through one daemon reaches another's local copy through an asynchronous invalidation, so it gets
``--cross-lag-ms`` (default: the direct writes' lag) there and none through its own daemon; a fill
produced before a ``set``/``delete`` through any daemon must not be read once that write is visible; an
aged value must not be answered after Redis dropped it.

``--topology sentinel`` replaces the single ``redis-server`` with a master, one replica and three Sentinels
on free TCP ports of 127.0.0.1 (``mymaster``, quorum 2, ``down-after-milliseconds`` 1000,
``failover-timeout`` 3000), and configures ``cached`` with ``redis-sentinel://s1,s2,s3/mymaster``. The
direct writer and the faults go to whichever node the Sentinels name. It adds the ``failover`` fault (at
least ``--failover-interval`` seconds apart): half the time the replica is first partitioned from the
master for 20-300 ms (so that acknowledged writes are lost), then ``kill -9`` of the master; the
replica's contents are read once its link is down and before its promotion, the checker waits for a
Sentinel to name it and for a ``set`` through ``cached`` to be stored by it, then restarts the old
master (empty, on its port) and waits for the Sentinels to make it a replica. history.py models the
failover as a reset of every entry to the promoted replica's value and counts the lost writes.

``--topology cluster`` runs a Redis Cluster of six nodes (three primaries with one replica each, free ports
of 127.0.0.1 at most 55535, ``cluster-node-timeout`` 2000) and configures ``cached`` with
``redis-cluster://p1,p2,p3``. The checker's entries hash to slots of all three primaries; the direct writer
routes each key to the node serving its slot (a slot map from ``CLUSTER SLOTS``, following ``MOVED`` and
``ASK``), and ``kill-data``, ``kill-listener``, ``pause``, ``timeout`` and ``restart`` hit one primary at a
time (a restart resets only that shard's entries). It adds ``reshard`` (1,000-1,500 slots, among them slots
of checker entries, moved from one primary to another by ``CLUSTER SETSLOT``/``MIGRATE``, holding the
entries' slots in the migrating state for up to 200 ms so that ``ASK`` redirections happen) and
``failover`` (``kill -9`` of a primary owning checker entries; its replica is read before its election,
the killed node restarts from its folder and rejoins as a replica): the failover model is the Sentinel
one, applied to the killed shard's entries only. ``--no-daemon`` runs the topology, the direct writer, a
direct reader and the faults without ``cached``, to try the harness itself.

The report adds, per run: operations per daemon, handler calls (from every value the workers produced,
per daemon and key), stale answers, ``stats.fleet`` summed over the daemons (and over the earlier lives
of a daemon that ``kill-daemon`` restarted, asked just before each kill), the aged key's timing figures,
and how many reads only the cross-daemon lag excused.

``--near-clients N`` (default 2) makes the last N client connections keep a *near cache*: they ask the
daemon to ``track`` them and keep its answers that carry ``nearTTL`` in a ``redis_cache.near.NearCache``
(the Python shim's), dropped by the daemon's ``invalidate`` notifications. With a bound the ``track`` answer
names the daemon's proof page (``"proof": {"path", "maxStaleness"}``), taken as the shim takes it
(``NearCache.use_proof``, or ``ProofPage(path)``; a ``redis_cache.near`` without ``ProofPage`` gets no near
hits at all). Such a connection answers a ``get`` as the shim does: ``proven()`` first, then every
notification received applied (here: nothing from the daemon waits unread, else the daemon is asked), then
the near cache, only if the proof was fresh; recorded as a read from before the proof was read to after the
lookup. Besides its ``--depth`` clients, each near-cache connection has a *near reader* that reads, every
1-3 ms, an entry its near cache holds whenever the near cache may answer, never asking the daemon (a process
reading hot entries): it goes on reading while the connection's other requests wait on a stalled daemon.
The history checks those reads like any other (a write through ``cached`` acknowledged before them must be
seen; direct writes and other daemons' writes get their lag).

**The staleness bound** (history.py, *Staleness bound*). With ``--max-staleness S`` (seconds, default 0.5,
written into every daemon's configuration; ``0`` writes ``max_staleness = 0``: no bound) a hit, from a
daemon's local copy or a near cache, may be at most ``S`` behind Redis whatever the fault: direct writes,
restarts, failover resets and other daemons' writes get the lag ``S + --staleness-slack-ms`` (default 50
ms: the instants, the checker's and the daemon's, are taken around awaits), writes through the reading
daemon none. With ``--max-staleness 0`` the old allowances apply (``--direct-lag-ms``, ``--cross-lag-ms``).
A daemon whose configuration check refuses ``max_staleness`` (one from before the bound) runs without the
line; with ``S > 0`` the run is then checked against the bound it lacks and fails.

Every operation's send and answer instants are recorded; the history is then checked by
``history.check`` (see history.py for the rule and why it never flags a legal history). Writes made
directly to Redis, and restarts, are given the lag above for their invalidations to reach ``cached``
(Redis's client-side caching delivers them asynchronously, on another connection).

The report adds the *worst staleness* per fault kind (``worst_staleness_ms_by_fault``, and by layer: near
cache, the daemon's local copy, or fetched from Redis): for every read of a value already replaced, violation
or not, by how long the replacing write's acknowledgement preceded the read's send, counted under the last
fault started before the read (``"none"`` before the first).
A request not answered within ``--unanswered-ms`` is UNANSWERED (at the end the checker stops sending
and waits for every answer). If ``cached`` closes a client connection, the reads in flight on it are
excused and its writes have an unknown outcome (both counted); the connection is reopened.

Exit status: 0 when there are no violations and no unanswered requests (and, with Sentinel, no value on a
promoted replica that nobody wrote and no failover that could not be completed; a daemon on its own TCP
path; no rule left after teardown; the bound configured when one is asked for), 1 otherwise, 2 on a setup
error.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Sequence, Union

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))

import history as H  # noqa: E402
import redis_cache.near as shim_near  # noqa: E402
from redis_cache.near import NearCache, address_key  # noqa: E402  (the shim's near cache, as it is)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FAULT_KINDS = ("kill-data", "kill-listener", "pause", "restart", "timeout")
#: Fault kinds that stop a daemon (``--faults all`` includes them with ``--daemons`` 2 or more).
DAEMON_FAULT_KINDS = ("kill-daemon",)
#: Silent faults (nothing is closed, nobody is told), single topology: netfilter rules on one daemon's TCP
#: path to Redis (left out, with the reason in the report, where netfilter cannot be used)...
NETWORK_FAULT_KINDS = ("blackhole", "blackhole-one", "loss")
#: ... and SIGSTOP/SIGCONT of one daemon.
STALL_FAULT_KINDS = ("stall-daemon",)
SILENT_FAULT_KINDS = NETWORK_FAULT_KINDS + STALL_FAULT_KINDS
#: Fault kinds of the Sentinel topology only (``--faults all`` includes them there).
SENTINEL_FAULT_KINDS = ("failover",)
#: Fault kinds of the cluster topology only (``--faults all`` includes them there).
CLUSTER_FAULT_KINDS = ("reshard", "failover")
CLUSTER_SLOTS = 16384
#: Every cluster node also listens on its port + 10000 (the cluster bus): node ports are at most 55535.
CLUSTER_BUS_OFFSET = 10000
CLUSTER_NODE_COUNT = 6
#: Slots a reshard moves (at least; up to 1.5 times) and slots its source keeps (at least).
RESHARD_SLOTS = 1000
RESHARD_KEEP = 1500
MASTER_NAME = "mymaster"
LOCALHOST = "127.0.0.1"
#: How long the old master stays dead after a promotion. For about 5 s after a failover a Sentinel still
#: counts the others' "master is down" replies to it, so one spurious +sdown of the new master (seen here
#: 1 s after a switch) is an instant odown and a new failover; with the old master dead it has no replica
#: to promote and aborts, instead of promoting the old master restarted empty (which wiped the data).
SETTLE_AFTER_PROMOTION = 6.0
#: Sentinel's down-after-milliseconds, and what it is raised to during the restart and timeout faults.
DOWN_AFTER_MS = 1000
GUARDED_DOWN_AFTER_MS = 10000
CHECKER_PREFIX = "coh-"  # CLIENT SETNAME of the checker's own Redis connections
COMMAND_TIMEOUT = 0.3  # cached's redis_options.command_timeout (seconds)
LEASE_TIMEOUT = 1.0
#: The aged key (``[keys.Aged]``): fresh for AGED_TTL seconds, then stale for AGED_STALE_TTL, then in grace
#: for AGED_GRACE; Redis keeps its entries for the sum. Early refresh (XFetch) with β = AGED_BETA.
AGED_TTL = 1.0
AGED_STALE_TTL = 1.5
AGED_GRACE = 0.5
AGED_BETA = 1.0
#: With several daemons each authenticates as its own Redis ACL user (``cached-1``...), so that
#: ``CLIENT LIST`` tells their connections apart (faults pick one daemon).
ACL_PASSWORD = "coherence"


def now() -> int:
    return time.monotonic_ns()


# ------------------------------------------------------------------------------------------------
# Entries


def address(name: str, identity: int) -> str:
    """pyredis-cache's layout: ``key.zfill(10).upper() + "#" + "%010d" % identity``."""
    return name.zfill(10).upper() + "#" + "%010d" % identity


@dataclass(frozen=True)
class Entry:
    key: str
    identity: int
    hash_key: Optional[str] = None
    hash_id: Optional[int] = None
    handler: bool = False
    #: The share of client operations on this entry that are writes (read-mostly entries keep values in
    #: the daemon's local cache long enough for a missed invalidation to show).
    write_share: float = 0.3
    #: An entry of the aged key (a ttl, a stale window, grace and early refresh; entries expire in Redis).
    aged: bool = False
    #: How often the direct writer picks it, relative to the others.
    direct_weight: float = 1.0

    @functools.cached_property
    def redis_key(self) -> str:
        if self.hash_key is not None and self.hash_id is not None:
            return address(self.hash_key, self.hash_id)
        return address(self.key, self.identity)

    @functools.cached_property
    def redis_field(self) -> Optional[str]:
        return address(self.key, self.identity) if self.hash_key is not None else None

    @functools.cached_property
    def name(self) -> str:
        """The entry's name in the history: its Redis address (``HASH/FIELD`` for a hash entry)."""
        return self.redis_key + ("/" + self.redis_field if self.redis_field else "")

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"key": self.key, "identity": self.identity}
        if self.hash_key is not None:
            p["hashKey"] = self.hash_key
            p["hashId"] = self.hash_id
        return p


HASH_KEY, HASH_ID = "Class", 3
WRITE_SHARES = (0.03, 0.03, 0.15, 0.15, 0.4, 0.4)
BASE_ENTRIES: list[Entry] = (
    [Entry("Student", i, write_share=WRITE_SHARES[i - 1]) for i in range(1, 7)]
    + [Entry("Student", i, HASH_KEY, HASH_ID, write_share=share)
       for i, share in zip(range(11, 15), (0.03, 0.15, 0.4, 0.4))]
    + [Entry("Filled", i, handler=True, write_share=WRITE_SHARES[i - 1]) for i in range(1, 7)]
)
#: Entries of the aged key: the first two are written about every 8 s and 2 s (they go through fresh, stale
#: and refreshed values, and expire), the others often. The direct writer seldom writes them (always with
#: the key's whole lifetime as its TTL, or a DEL).
AGED_ENTRIES: list[Entry] = [Entry("Aged", i, handler=True, aged=True, write_share=share, direct_weight=0.03)
                             for i, share in zip(range(1, 7), (0.001, 0.004, 0.03, 0.15, 0.001, 0.03))]
#: The entries of this run: BASE_ENTRIES and the first ``--aged-entries`` of AGED_ENTRIES (set by Run).
ENTRIES: list[Entry] = list(BASE_ENTRIES)
PROBE = Entry("Student", 999)  # used only to probe the daemon's features, never checked
FAILOVER_PROBE = Entry("Student", 998)  # written through cached to time a failover, never checked


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, Redis Cluster's key hash (``crc16(b"123456789") == 0x31C3``)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The cluster hash slot of a Redis key (a non-empty ``{hash tag}`` hashes alone)."""
    b = key.encode()
    opening = b.find(b"{")
    if opening >= 0:
        closing = b.find(b"}", opening + 1)
        if closing > opening + 1:
            b = b[opening + 1:closing]
    return crc16(b) % CLUSTER_SLOTS


def probe_entry(slots: set[int]) -> Entry:
    """A ``Student`` entry (identity 900-997, never checked) whose key hashes to one of ``slots``."""
    for identity in range(997, 899, -1):
        entry = Entry("Student", identity)
        if key_slot(entry.redis_key) in slots:
            return entry
    return FAILOVER_PROBE


# ------------------------------------------------------------------------------------------------
# A minimal RESP2 client (asyncio)


class RespError(Exception):
    pass


#: A Redis server's address: a Unix socket path, or a TCP (host, port).
Address = Union[str, tuple[str, int]]

#: What the RESP client catches as a failed connection or command.
RESP_FAILURES = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError)


class NotSent(ConnectionError):
    """A command that was surely not executed: no connection to the node that serves its key, or only
    redirections (``MOVED``/``ASK``) or ``CLUSTERDOWN`` for answers."""


class RespClient:
    """One Redis connection; one command at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: Address, name: str, timeout: float = 1.0) -> "RespClient":
        if isinstance(address, str):
            opening = asyncio.open_unix_connection(address, limit=1 << 22)
        else:
            opening = asyncio.open_connection(address[0], address[1], limit=1 << 22)
        reader, writer = await asyncio.wait_for(opening, timeout)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client.call("CLIENT", "SETNAME", name), timeout)
        except BaseException:
            client.close()
            raise
        return client

    @classmethod
    async def query(cls, address: Address, *args: str, timeout: float = 0.5) -> Any:
        """Connects, sends one command, returns its reply, closes."""
        client = await cls.connect(address, CHECKER_PREFIX + "query", timeout)
        try:
            return await asyncio.wait_for(client.call(*args), timeout)
        finally:
            client.close()

    async def pipeline(self, commands: list[tuple[str, ...]]) -> tuple[list[Any], int]:
        """The commands in one write; returns (their replies, the send instant)."""
        self.writer.write(b"".join(self.encode(*c) for c in commands))
        sent = now()
        return [await self._reply() for _ in commands], sent

    async def transaction(self, commands: list[tuple[str, ...]]) -> tuple[Any, int]:
        """``MULTI``, the commands, ``EXEC`` in one write; returns (``EXEC``'s reply, the send instant)."""
        self.writer.write(b"".join(self.encode(*c) for c in [("MULTI",), *commands, ("EXEC",)]))
        sent = now()
        replies = [await self._reply() for _ in range(len(commands) + 2)]
        return replies[-1], sent

    @staticmethod
    def encode(*args: str) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(parts)

    async def call(self, *args: str) -> Any:
        """Sends a command; returns its reply (an error reply is returned as a RespError, not raised)."""
        self.writer.write(self.encode(*args))
        return await self._reply()

    async def _reply(self) -> Any:
        line = await self.reader.readuntil(b"\r\n")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            return RespError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = await self.reader.readexactly(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [await self._reply() for _ in range(n)]
        raise ConnectionError("bad RESP reply %r" % line)

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------------
# Silent faults: netfilter rules and stopped daemons, always undone


#: Every netfilter rule the checker adds carries this comment, so that a leftover can be found (and is
#: removed by a later run once this process is gone: ``sweep_leftover_rules``).
RULE_TAG_PREFIX = "cached-checker-"
RULE_TAG = RULE_TAG_PREFIX + str(os.getpid())
#: The chain the rules go to: on loopback every packet passes OUTPUT then INPUT, so INPUT rules on the
#: destination (daemon to Redis) and on the source (Redis to daemon) drop both directions of a flow.
RULE_CHAIN = "INPUT"


def iptables(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``iptables -w ARGS`` (``-w``: waits for the xtables lock instead of failing when another process holds it)."""
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def drop_rule(*match: str) -> tuple[str, ...]:
    """A rule (without its chain) dropping the packets ``match`` selects, tagged with ``RULE_TAG``."""
    return ("-p", "tcp", *match, "-m", "comment", "--comment", RULE_TAG, "-j", "DROP")


def path_rules(host: str, port: int, extra: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Both directions of every TCP flow to ``host:port`` (one daemon's path to Redis): packets to it
    (destination address and port), and Redis's replies (source address and port)."""
    return [drop_rule("-d", host, "--dport", str(port), *extra), drop_rule("-s", host, "--sport", str(port), *extra)]


def flow_rules(client: tuple[str, int], server: tuple[str, int], extra: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Both directions of one TCP flow (a forgetful NAT's lost mapping): matched on both ends' addresses and
    ports, so the daemon's other connections, and its new ones, pass."""
    (cip, cport), (sip, sport) = client, server
    return [drop_rule("-s", cip, "--sport", str(cport), "-d", sip, "--dport", str(sport), *extra),
            drop_rule("-s", sip, "--sport", str(sport), "-d", cip, "--dport", str(cport), *extra)]


def random_loss(probability: float) -> list[str]:
    return ["-m", "statistic", "--mode", "random", "--probability", "%.3f" % probability]


class SilentFaults:
    """The netfilter rules in place and the processes stopped (SIGSTOP) by this checker, so that every one is
    undone whatever happens: by the fault's ``finally``, at teardown, and from ``atexit`` and the SIGTERM,
    SIGINT and SIGHUP handlers (``undo_all``). A rule is recorded before it is added and forgotten only once
    its ``-D`` succeeded (or found no such rule), a process recorded before its SIGSTOP."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, ...]] = []
        self.stopped: set[int] = set()
        self.added = 0
        self.removed = 0
        #: ``-D`` calls that failed (the rule is kept for the next attempt).
        self.failures: list[str] = []

    def add(self, rule: tuple[str, ...]) -> None:
        self.rules.append(rule)
        done = iptables("-I", RULE_CHAIN, *rule)
        if done.returncode != 0:
            self.rules.remove(rule)
            raise OSError("iptables -I %s %s: %s" % (RULE_CHAIN, " ".join(rule), done.stderr.strip()))
        self.added += 1

    def remove(self, rule: tuple[str, ...]) -> bool:
        try:
            done = iptables("-D", RULE_CHAIN, *rule)
        except (OSError, subprocess.SubprocessError) as error:
            self.failures.append("%s: %r" % (" ".join(rule), error))
            return False
        gone = done.returncode == 0 or "does a matching rule exist" in done.stderr or "Bad rule" in done.stderr
        if gone:
            with contextlib.suppress(ValueError):
                self.rules.remove(rule)
            self.removed += done.returncode == 0
        else:
            self.failures.append("%s: %s" % (" ".join(rule), done.stderr.strip()))
        return gone

    def remove_all(self) -> None:
        for rule in list(reversed(self.rules)):
            self.remove(rule)

    def stop(self, pid: int) -> None:
        self.stopped.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def undo_all(self) -> None:
        """Every stopped process continued, every rule removed (idempotent): the recorded ones, then any
        other rule that carries this process's tag (one whose ``-I`` was still running when a signal came)."""
        for pid in list(self.stopped):
            self.resume(pid)
        if not self.added and not self.rules:
            return
        self.remove_all()
        import shlex
        for line in leftover_rules(RULE_TAG):
            words = shlex.split(line)
            if words[:2] == ["-A", RULE_CHAIN] and RULE_TAG in words:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    if iptables("-D", RULE_CHAIN, *words[2:]).returncode == 0:
                        self.removed += 1


SILENT = SilentFaults()


def leftover_rules(tag_prefix: str = RULE_TAG_PREFIX) -> list[str]:
    """The ``iptables -S`` lines of the INPUT chain that carry a checker's tag."""
    try:
        listing = iptables("-S", RULE_CHAIN)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in listing.stdout.splitlines() if tag_prefix in line]


def sweep_leftover_rules() -> int:
    """Removes the rules left by checker processes that no longer run (a ``kill -9`` of a checker leaves its
    rules: no handler runs); never those of a checker still running. Returns how many."""
    import re
    import shlex
    swept = 0
    for line in leftover_rules():
        found = re.search(re.escape(RULE_TAG_PREFIX) + r"(\d+)", line)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # that checker still runs: its rules are its own
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        words = shlex.split(line)
        if words[:2] == ["-A", RULE_CHAIN] and iptables("-D", RULE_CHAIN, *words[2:]).returncode == 0:
            swept += 1
    return swept


def netfilter_unavailable() -> Optional[str]:
    """Why the network fault kinds cannot run here (None: they can): adds and deletes one harmless rule
    (``-p tcp --dport <a free port> -j DROP`` on INPUT, tagged)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root (iptables needs CAP_NET_ADMIN)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install -y iptables)"
    probe = drop_rule("--dport", str(free_ports(1)[0]))
    try:
        added = iptables("-I", RULE_CHAIN, *probe)
    except (OSError, subprocess.SubprocessError) as error:
        return "iptables failed: %r" % (error,)
    if added.returncode != 0:
        return "iptables -I %s refused a rule: %s" % (RULE_CHAIN, (added.stderr or added.stdout).strip()[-300:])
    deleted = iptables("-D", RULE_CHAIN, *probe)
    if deleted.returncode != 0:
        return "iptables -D %s failed (%s): remove the rule tagged %s by hand" % (
            RULE_CHAIN, deleted.stderr.strip()[-200:], RULE_TAG)
    return None


def install_undo_handlers() -> None:
    """Undoes every silent fault at exit and on SIGTERM, SIGINT and SIGHUP (then exits as the signal asks:
    ``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + n)`` otherwise, so that teardown still runs)."""
    import atexit
    atexit.register(SILENT.undo_all)

    def handler(signum: int, frame: Any) -> None:
        SILENT.undo_all()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------
# Processes


class RedisServer:
    """One redis-server: on a Unix socket (``port`` None, the single topology) or on 127.0.0.1:``port``.

    In the single topology it may also listen on TCP port ``tcp_port`` of each of ``tcp_hosts`` (127.0.0.1,
    127.0.0.2...: one loopback address per daemon, so that a netfilter rule matching an address and the port
    cuts one daemon's path only); the checker itself keeps using the Unix socket (``address``)."""

    def __init__(self, binary: str, directory: Path, port: Optional[int] = None, name: str = "redis",
                 args: Sequence[str] = (), tcp_port: Optional[int] = None, tcp_hosts: Sequence[str] = ()) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.tcp_port = tcp_port
        self.tcp_hosts = list(tcp_hosts)
        self.name = name
        #: More redis-server arguments, at every start (a cluster node's).
        self.args = list(args)
        self.socket = str(directory / "redis.sock")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0

    @property
    def address(self) -> Address:
        return self.socket if self.port is None else (LOCALHOST, self.port)

    def spawn(self, replicaof: Optional[int] = None) -> None:
        """Starts the server (empty: no persistence); as a replica of 127.0.0.1:``replicaof`` if given."""
        self.starts += 1
        if self.port is None:
            if os.path.exists(self.socket):
                os.unlink(self.socket)
            listen = ["--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
            if self.tcp_port is not None:
                # Several addresses in one --bind; protected mode off (it would refuse peers other than
                # 127.0.0.1 without a password): these are loopback addresses only.
                listen[1] = str(self.tcp_port)
                listen += ["--bind", *self.tcp_hosts, "--protected-mode", "no"]
        else:
            # Replicas announce 127.0.0.1 (what Sentinel hands out); no delay before a replica's sync; a
            # replica loads a full sync in memory: by default it writes it to dump.rdb, which a restart would
            # then load (a restart must come back empty, as the history models it).
            listen = ["--port", str(self.port), "--bind", LOCALHOST, "--replica-announce-ip", LOCALHOST,
                      "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "swapdb"]
            if replicaof is not None:
                listen += ["--replicaof", LOCALHOST, str(replicaof)]
            for stale in self.directory.glob("*.rdb"):
                stale.unlink()
        log = open(self.directory / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, *listen, "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--daemonize", "no", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = await RespClient.connect(self.address, CHECKER_PREFIX + "probe", 0.5)
                pong = await asyncio.wait_for(c.call("PING"), 0.5)
                c.close()
                if pong == "PONG":
                    return
            except RESP_FAILURES:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s; see %s" % (
                    self.name, self.proc.returncode, self.directory / "redis.log"))
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not start; see %s" % (self.name, self.directory / "redis.log"))
            await asyncio.sleep(0.01)

    async def replication(self) -> dict[str, str]:
        """``INFO replication`` as a dict."""
        info = await RespClient.query(self.address, "INFO", "replication")
        if not isinstance(info, str):
            raise ConnectionError("INFO replication answered %r" % (info,))
        return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)

    async def in_sync_with(self, master: "RedisServer") -> bool:
        """Whether this server is a replica of ``master`` with its link up."""
        try:
            info = await self.replication()
        except RESP_FAILURES:
            return False
        return (info.get("role") == "slave" and info.get("master_port") == str(master.port)
                and info.get("master_link_status") == "up")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill9()


class SentinelServer:
    """One Sentinel (``redis-server sentinel.conf --sentinel``) on 127.0.0.1:``port``."""

    def __init__(self, binary: str, directory: Path, port: int, index: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.name = "sentinel-%d" % index
        self.conf = directory / "sentinel.conf"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> Address:
        return (LOCALHOST, self.port)

    def spawn(self, master_port: int) -> None:
        # Sentinel rewrites its file (what it learns about replicas and other Sentinels): it must be writable.
        self.conf.write_text("\n".join([
            "# written by Tests/Coherence/checker.py",
            "port %d" % self.port,
            "bind %s" % LOCALHOST,
            "dir %s" % self.directory,
            "sentinel announce-ip %s" % LOCALHOST,
            "sentinel monitor %s %s %d 2" % (MASTER_NAME, LOCALHOST, master_port),
            "sentinel down-after-milliseconds %s %d" % (MASTER_NAME, DOWN_AFTER_MS),
            "sentinel failover-timeout %s 3000" % MASTER_NAME,
            "sentinel parallel-syncs %s 1" % MASTER_NAME,
            ""]))
        log = open(self.directory / "sentinel.log", "ab")
        self.proc = subprocess.Popen([self.binary, str(self.conf), "--sentinel"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_tcp_port(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of ``hosts`` (loopback addresses)."""
    for _ in range(100):
        port = free_ports(1)[0]
        held: list[socket.socket] = []
        try:
            for host in hosts:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no TCP port free on all of %s" % ", ".join(hosts))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class SentinelTopology:
    """A master, one replica and three Sentinels monitoring them as ``mymaster``, in the run's temp dir.

    The two data nodes trade roles at each failover; the current master is whatever the Sentinels name.
    """

    def __init__(self, binary: str, directory: Path, args: Sequence[str] = ()) -> None:
        ports = free_ports(5)
        self.nodes = []
        for name, port in zip(("redis-a", "redis-b"), ports[:2]):
            (directory / name).mkdir()
            self.nodes.append(RedisServer(binary, directory / name, port, name, args))
        self.sentinels = []
        for i, port in enumerate(ports[2:], 1):
            (directory / ("sentinel-%d" % i)).mkdir()
            self.sentinels.append(SentinelServer(binary, directory / ("sentinel-%d" % i), port, i))
        self.next_sentinel = 0

    def url(self) -> str:
        """The daemon's ``redis`` setting."""
        return "redis-sentinel://%s/%s" % (",".join("%s:%d" % s.address for s in self.sentinels), MASTER_NAME)

    def node_at(self, port: int) -> Optional[RedisServer]:
        return next((n for n in self.nodes if n.port == port), None)

    def other(self, node: RedisServer) -> RedisServer:
        return self.nodes[1] if node is self.nodes[0] else self.nodes[0]

    async def master_port(self, sentinel: SentinelServer) -> Optional[int]:
        reply = await RespClient.query(sentinel.address, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    async def master(self) -> RedisServer:
        """The master a Sentinel names (the first that answers, taking turns)."""
        error: Optional[BaseException] = None
        for _ in range(len(self.sentinels)):
            sentinel = self.sentinels[self.next_sentinel % len(self.sentinels)]
            self.next_sentinel += 1
            try:
                port = await self.master_port(sentinel)
            except RESP_FAILURES as e:
                error = e
                continue
            node = self.node_at(port) if port is not None else None
            if node is not None:
                return node
            error = ConnectionError("%s names master port %s" % (sentinel.name, port))
        raise ConnectionError("no Sentinel named the master: %r" % (error,))

    async def sentinels_agree(self, master: RedisServer, replica: Optional[RedisServer]) -> bool:
        """Every Sentinel names ``master``, knows the 2 others, and sees ``replica`` as a healthy replica."""
        try:
            for s in self.sentinels:
                if await self.master_port(s) != master.port:
                    return False
                others = await RespClient.query(s.address, "SENTINEL", "sentinels", MASTER_NAME)
                if not isinstance(others, list) or len(others) != len(self.sentinels) - 1:
                    return False
                if replica is None:
                    continue
                # A replica the Sentinel does not list, or sees down, cannot be promoted ("no good slave").
                # (Its view of the replica's link comes from INFO every 10 s: in_sync_with asks the replica.)
                replicas = await RespClient.query(s.address, "SENTINEL", "replicas", MASTER_NAME)
                listed = [dict(zip(r[::2], r[1::2])) for r in replicas] if isinstance(replicas, list) else []
                if not any(f.get("port") == str(replica.port) and f.get("flags") == "slave" for f in listed):
                    return False
            return True
        except RESP_FAILURES:
            return False

    async def start(self, timeout: float = 60.0) -> None:
        master, replica = self.nodes
        master.spawn()
        await master.wait_ready()
        replica.spawn(replicaof=master.port)
        await replica.wait_ready()
        for s in self.sentinels:
            s.spawn(master.port)
        await self.wait_settled(master, replica, timeout)

    async def wait_settled(self, master: RedisServer, replica: RedisServer, timeout: float,
                           stopping: Optional[Any] = None) -> bool:
        """Waits until ``replica`` is in sync with ``master`` and every Sentinel sees both; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await replica.in_sync_with(master) and await self.sentinels_agree(master, replica):
                return True
            if stopping is not None and stopping():
                return False
            await asyncio.sleep(0.1)
        if stopping is None:
            raise RuntimeError("the Sentinel topology did not settle within %.0f s (logs in %s)" % (
                timeout, master.directory.parent))
        return False

    async def set_down_after(self, ms: int) -> None:
        for s in self.sentinels:
            reply = await RespClient.query(s.address, "SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", str(ms))
            if isinstance(reply, RespError):
                raise ConnectionError("%s: SENTINEL SET: %s" % (s.name, reply))

    async def not_pinged_recently(self, master: RedisServer, within_ms: int = 300) -> Optional[str]:
        """None when every Sentinel names ``master``, does not see it down, and had a PING answered within
        ``within_ms``; else what the first other one says."""
        for s in self.sentinels:
            reply = await RespClient.query(s.address, "SENTINEL", "MASTER", MASTER_NAME)
            fields = dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else {}
            if (fields.get("port") != str(master.port) or fields.get("flags") != "master"
                    or int(fields.get("last-ok-ping-reply", 1 << 30)) > within_ms):
                return "%s: port %s, flags %s, last-ok-ping-reply %s ms" % (
                    s.name, fields.get("port"), fields.get("flags"), fields.get("last-ok-ping-reply"))
        return None

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()


# ------------------------------------------------------------------------------------------------
# Redis Cluster


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``: what one node says about one node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: Optional[str]
    epoch: int
    connected: bool
    #: Slot ranges served (inclusive); slots shown as being imported or migrated (``[...]``) are left out.
    ranges: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    """``<id> <ip:port@bus[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`` per line."""
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split(",")[0].split("@")[0]
        ranges = []
        for f in fields[8:]:
            if f.startswith("["):
                continue
            first, _, last = f.partition("-")
            ranges.append((int(first), int(last or first)))
        views.append(ClusterNodeView(
            fields[0], int(address.rsplit(":", 1)[1] or 0), frozenset(fields[2].split(",")),
            None if fields[3] == "-" else fields[3], int(fields[6]), fields[7] == "connected", tuple(ranges)))
    return views


def parse_info(text: Any) -> dict[str, str]:
    if not isinstance(text, str):
        raise ConnectionError("INFO answered %r" % (text,))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def free_cluster_ports(n: int) -> list[int]:
    """``n`` free ports of 127.0.0.1, at most 55535, whose cluster bus port (+10000) is free too (all held
    open until all are chosen)."""
    rng = random.Random()
    held: list[socket.socket] = []
    ports: list[int] = []
    taken: set[int] = set()
    try:
        for _ in range(2000):
            if len(ports) == n:
                return ports
            port = rng.randint(20000, 65535 - CLUSTER_BUS_OFFSET)
            pair = (port, port + CLUSTER_BUS_OFFSET)
            if taken & set(pair):
                continue
            bound: list[socket.socket] = []
            try:
                for p in pair:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    bound.append(s)
                    s.bind((LOCALHOST, p))
            except OSError:
                for s in bound:
                    s.close()
                continue
            held.extend(bound)
            taken.update(pair)
            ports.append(port)
        raise RuntimeError("no %d free port pairs (p, p+%d) on %s" % (n, CLUSTER_BUS_OFFSET, LOCALHOST))
    finally:
        for s in held:
            s.close()


async def expect_ok(client: RespClient, commands: list[tuple[str, ...]], what: str, timeout: float = 10.0) -> list[Any]:
    """The commands pipelined on ``client``; an error reply to any of them raises."""
    replies, _ = await asyncio.wait_for(client.pipeline(commands), timeout)
    for command, reply in zip(commands, replies):
        if isinstance(reply, RespError):
            raise ConnectionError("%s: %s: %s" % (what, " ".join(command[:4]), reply))
    return replies


class ClusterTopology:
    """Six cluster nodes (three primaries, one replica each) in the run's temp dir, made a cluster by
    ``redis-cli --cluster create``.

    Roles change at each failover: ``primaries`` is what the checker expects (its failovers update it at the
    kill); ``owner`` is the slot map of the last view it learnt.
    """

    def __init__(self, binary: str, cli: str, directory: Path, node_timeout_ms: int, full_coverage: bool,
                 filler_keys: int = 0, extra_args: Sequence[str] = ()) -> None:
        self.cli = cli
        self.filler_keys = filler_keys
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--cluster-announce-ip", LOCALHOST,
                # A replica is always eligible for promotion, however long its link was down (the checker
                # partitions it, and the default factor 10 would refuse a replica down for 20 s + 10 s); no
                # replica migrates to another primary, and a primary that loses all its slots stays one.
                "--cluster-replica-validity-factor", "0", "--cluster-allow-replica-migration", "no",
                "--cluster-require-full-coverage", "yes" if full_coverage else "no", *extra_args]
        self.nodes: list[RedisServer] = []
        for i, port in enumerate(free_cluster_ports(CLUSTER_NODE_COUNT), 1):
            name = "node-%d" % i
            (directory / name).mkdir()
            self.nodes.append(RedisServer(binary, directory / name, port, name, args))
        #: Port -> node id (kept across restarts: each node keeps its nodes.conf).
        self.ids: dict[int, str] = {}
        self.primaries: list[int] = []
        self.owner: list[int] = [0] * CLUSTER_SLOTS
        #: Primary port -> its replica's port (last view).
        self.replica_of: dict[int, int] = {}
        #: Nodes never asked about the topology: a killed primary until it has rejoined as a replica (it
        #: comes back believing it still serves its slots).
        self.untrusted: set[int] = set()
        #: Entries per primary once the cluster is up (the report).
        self.initial_distribution: dict[str, list[str]] = {}

    def url(self) -> str:
        """The daemon's ``redis`` setting: the three first nodes (the initial primaries) as seeds."""
        return "redis-cluster://" + ",".join("%s:%d" % (LOCALHOST, n.port) for n in self.nodes[:3])

    def node_at(self, port: int) -> RedisServer:
        for n in self.nodes:
            if n.port == port:
                return n
        raise ConnectionError("no cluster node on port %d" % port)

    def entries_of(self, port: int) -> list[Entry]:
        return [e for e in ENTRIES if self.owner[key_slot(e.redis_key)] == port]

    def slots_of(self, port: int) -> list[int]:
        return [s for s in range(CLUSTER_SLOTS) if self.owner[s] == port]

    def distribution(self) -> dict[str, list[str]]:
        """Checker entries per expected primary (node name -> entry names)."""
        return {self.node_at(p).name: [e.name for e in self.entries_of(p)] for p in sorted(self.primaries)}

    def trusted(self) -> list[RedisServer]:
        """The nodes to ask about the topology: the expected primaries first, never an untrusted one."""
        order = [self.node_at(p) for p in self.primaries] + self.nodes
        seen: list[RedisServer] = []
        for n in order:
            if n.port not in self.untrusted and n not in seen:
                seen.append(n)
        return seen

    async def nodes_view(self, node: RedisServer) -> list[ClusterNodeView]:
        text = await RespClient.query(node.address, "CLUSTER", "NODES")
        if not isinstance(text, str):
            raise ConnectionError("%s: CLUSTER NODES answered %r" % (node.name, text))
        return parse_cluster_nodes(text)

    async def view(self, learn: bool = True) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` of the first trusted node that answers (learnt: slot map and replicas)."""
        error: Optional[BaseException] = None
        for node in self.trusted():
            try:
                views = await self.nodes_view(node)
            except RESP_FAILURES as e:
                error = e
                continue
            if learn:
                self.learn(views)
            return views
        raise ConnectionError("no cluster node answered CLUSTER NODES: %r" % (error,))

    def learn(self, views: list[ClusterNodeView]) -> None:
        owner = [0] * CLUSTER_SLOTS
        ports = {v.node_id: v.port for v in views}
        for v in views:
            if v.is_master:
                for first, last in v.ranges:
                    owner[first:last + 1] = [v.port] * (last - first + 1)
        self.owner = owner
        self.replica_of = {ports[v.master_id]: v.port for v in views
                           if not v.is_master and v.master_id in ports and not v.failing}

    async def slot_map(self) -> list[int]:
        """The port serving each slot (0: none), from ``CLUSTER SLOTS`` of the first trusted node that answers."""
        error: Optional[BaseException] = None
        for node in self.trusted():
            try:
                reply = await RespClient.query(node.address, "CLUSTER", "SLOTS")
            except RESP_FAILURES as e:
                error = e
                continue
            if not isinstance(reply, list):
                error = ConnectionError("%s: CLUSTER SLOTS answered %r" % (node.name, reply))
                continue
            owner = [0] * CLUSTER_SLOTS
            for first, last, primary, *_ in reply:
                owner[first:last + 1] = [int(primary[1])] * (last - first + 1)
            return owner
        raise ConnectionError("no cluster node answered CLUSTER SLOTS: %r" % (error,))

    async def cluster_state(self, node: RedisServer) -> str:
        return parse_info(await RespClient.query(node.address, "CLUSTER", "INFO")).get("cluster_state", "?")

    async def unsettled(self) -> Optional[str]:
        """None when every node says ``cluster_state:ok``, all list the same primaries with the same slots
        and nothing failing, the primaries are the expected ones, and each has a replica in sync; else why not."""
        reference: Optional[list[tuple[int, tuple[tuple[int, int], ...]]]] = None
        views: list[ClusterNodeView] = []
        for node in self.nodes:
            state = await self.cluster_state(node)
            if state != "ok":
                return "%s: cluster_state %s" % (node.name, state)
            views = await self.nodes_view(node)
            failing = [v for v in views if v.failing]
            if failing:
                return "%s sees %s as %s" % (node.name, failing[0].port, ",".join(sorted(failing[0].flags)))
            shape = sorted((v.port, v.ranges) for v in views if v.is_master and v.ranges)
            if reference is None:
                reference = shape
            elif shape != reference:
                return "%s disagrees about the slot map" % node.name
        assert reference is not None
        serving = sorted(p for p, _ in reference)
        if serving != sorted(self.primaries):
            return "the primaries are %s, expected %s" % (serving, sorted(self.primaries))
        self.learn(views)
        for p in self.primaries:
            replica = self.replica_of.get(p)
            if replica is None:
                return "%s has no replica" % self.node_at(p).name
            if not await self.node_at(replica).in_sync_with(self.node_at(p)):
                return "%s is not in sync with %s" % (self.node_at(replica).name, self.node_at(p).name)
        return None

    async def wait_settled(self, timeout: float, stopping: Optional[Callable[[], bool]] = None) -> bool:
        """Waits until ``unsettled`` says nothing; False on timeout (at start-up: raises)."""
        deadline = time.monotonic() + timeout
        why: Optional[str] = "not asked"
        while time.monotonic() < deadline:
            try:
                why = await self.unsettled()
            except RESP_FAILURES as error:
                why = repr(error)
            if why is None:
                return True
            if stopping is not None and stopping():
                return False
            await asyncio.sleep(0.1)
        if stopping is None:
            raise RuntimeError("the cluster did not settle within %.0f s: %s (logs in %s)" % (timeout, why, self.directory))
        return False

    async def start(self, timeout: float = 60.0) -> None:
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            await n.wait_ready()
        log = self.directory / "cluster-create.log"
        command = [self.cli, "--cluster", "create", *("%s:%d" % (LOCALHOST, n.port) for n in self.nodes),
                   "--cluster-replicas", "1", "--cluster-yes"]
        with open(log, "wb") as out:
            done = await asyncio.to_thread(subprocess.run, command, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("redis-cli --cluster create exited with status %d; see %s" % (done.returncode, log))
        deadline = time.monotonic() + timeout
        while True:  # until the first node's view has three primaries serving slots, and three replicas
            views = await self.nodes_view(self.nodes[0])
            primaries = sorted(v.port for v in views if v.is_master and v.ranges)
            replicas = [v for v in views if not v.is_master and v.master_id]
            if len(primaries) == CLUSTER_NODE_COUNT // 2 and len(replicas) == CLUSTER_NODE_COUNT // 2:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster has primaries %s and %d replicas after %.0f s" % (
                    primaries, len(replicas), timeout))
            await asyncio.sleep(0.1)
        self.ids = {v.port: v.node_id for v in views}
        self.primaries = primaries
        self.learn(views)
        await self.wait_settled(timeout)
        await self.fill()
        for e in [*ENTRIES, PROBE, FAILOVER_PROBE]:
            slot = await RespClient.query(self.nodes[0].address, "CLUSTER", "KEYSLOT", e.redis_key)
            if slot != key_slot(e.redis_key):
                raise RuntimeError("CLUSTER KEYSLOT %s is %r, the checker computes %d" % (
                    e.redis_key, slot, key_slot(e.redis_key)))

    async def fill(self) -> None:
        """Writes ``filler_keys`` keys (``coh-filler:N``, 32 bytes each, never read) spread over all slots, each
        on its slot's primary, so that a reshard's ``MIGRATE`` moves real data (about 1,200 keys per 1,000 slots
        with 20,000). A restart of a primary loses its shard's share; a failover keeps it."""
        by_port: dict[int, list[tuple[str, ...]]] = {}
        for i in range(self.filler_keys):
            key = "coh-filler:%06d" % i
            by_port.setdefault(self.owner[key_slot(key)], []).append(("SET", key, "%032d" % i))
        for port, commands in by_port.items():
            client = await RespClient.connect((LOCALHOST, port), CHECKER_PREFIX + "fill", 1.0)
            try:
                for i in range(0, len(commands), 1000):
                    await expect_ok(client, commands[i:i + 1000], "filler keys")
            finally:
                client.close()

    async def spread_entries(self) -> None:
        """Makes every primary own some checker entries: a primary without any gets one entry slot of the
        primary owning the most distinct ones (not needed with redis-cli's slot ranges, where the entries
        hash to all three primaries)."""
        for _ in range(len(self.primaries)):
            slots = {p: sorted({key_slot(e.redis_key) for e in self.entries_of(p)}) for p in self.primaries}
            empty = [p for p in self.primaries if not slots[p]]
            if not empty:
                break
            donor = max(self.primaries, key=lambda p: len(slots[p]))
            if len(slots[donor]) < 2:
                raise RuntimeError("the checker's entries cannot be spread over the primaries: %s" % slots)
            await self.move_slots(donor, empty[0], slots[donor][:1])
            await self.wait_settled(30.0)
        self.initial_distribution = self.distribution()

    async def move_slots(self, source: int, target: int, slots: list[int],
                         hold: Callable[[list[int]], float] = lambda batch: 0.0) -> list[str]:
        """Moves ``slots`` from the primary on ``source`` to the one on ``target`` as ``redis-cli --cluster
        reshard`` does, 128 at a time: ``SETSLOT IMPORTING`` on the target, ``SETSLOT MIGRATING`` on the
        source, ``MIGRATE`` of every key (``GETKEYSINSLOT`` until empty: a migrating slot takes no new key),
        then ``SETSLOT NODE`` on the target, the source and the other primaries. ``hold(batch)`` seconds are
        waited before and after the keys of a batch move (clients meet ``ASK`` meanwhile). Returns the keys
        moved; an error reply raises (the slots may then stay open)."""
        source_id, target_id = self.ids[source], self.ids[target]
        clients: list[RespClient] = []
        try:
            for port in [target, source, *(p for p in self.primaries if p not in (source, target))]:
                clients.append(await RespClient.connect((LOCALHOST, port), CHECKER_PREFIX + "reshard", 1.0))
            dst, src = clients[0], clients[1]
            moved: list[str] = []
            for i in range(0, len(slots), 128):
                batch = [str(s) for s in slots[i:i + 128]]
                await expect_ok(dst, [("CLUSTER", "SETSLOT", s, "IMPORTING", source_id) for s in batch], "target")
                await expect_ok(src, [("CLUSTER", "SETSLOT", s, "MIGRATING", target_id) for s in batch], "source")
                pause = hold(slots[i:i + 128])
                await asyncio.sleep(pause)
                pending = batch
                while pending:
                    listed = await expect_ok(src, [("CLUSTER", "GETKEYSINSLOT", s, "100") for s in pending], "source")
                    pending = [s for s, keys in zip(pending, listed) if keys]
                    for keys in (k for k in listed if k):
                        reply = await asyncio.wait_for(
                            src.call("MIGRATE", LOCALHOST, str(target), "", "0", "5000", "KEYS", *keys), 10.0)
                        if reply not in ("OK", "NOKEY"):
                            raise ConnectionError("MIGRATE to %d: %r" % (target, reply))
                        moved.extend(keys if reply == "OK" else [])
                await asyncio.sleep(pause)
                for client in clients:
                    await expect_ok(client, [("CLUSTER", "SETSLOT", s, "NODE", target_id) for s in batch], "SETSLOT NODE")
            return moved
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class MasterRoute:
    """Commands to the current master (the single server, or the one the Sentinels name) on one connection,
    reopened after a failure or a Sentinel switch."""

    def __init__(self, run: "Run", name: str) -> None:
        self.run = run
        self.name = name
        self.client: Optional[RespClient] = None
        self.generation = -1

    async def call(self, key: str, *args: str, timeout: float = 5.0) -> Any:
        """The reply (an error reply is returned); ``NotSent`` without a connection; other RESP failures
        (the outcome is unknown) after closing the connection."""
        if self.client is not None and self.generation != self.run.master_generation:
            self.close()  # a master was switched: a demoted master keeps its clients, and takes writes
        if self.client is None:
            try:
                self.generation = self.run.master_generation
                self.client, _ = await self.run.connect_master(self.name)
            except RESP_FAILURES as error:
                raise NotSent(repr(error)) from error
        try:
            return await asyncio.wait_for(self.client.call(*args), timeout)
        except RESP_FAILURES:
            self.close()
            raise

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


class ClusterRoute:
    """Commands to the node serving each key's slot, as a cluster client does: a slot map from ``CLUSTER
    SLOTS`` (asked of trusted nodes, again after a connection failure), updated by ``MOVED``; ``ASK`` is
    followed once, with ``ASKING``. Redirections are counted in ``counters``."""

    def __init__(self, topology: ClusterTopology, name: str, counters: Counter[str]) -> None:
        self.topology = topology
        self.name = name
        self.counters = counters
        self.slots: Optional[list[int]] = None
        self.refreshed = 0.0
        self.clients: dict[int, RespClient] = {}

    async def connection(self, port: int) -> RespClient:
        client = self.clients.get(port)
        if client is None:
            client = await RespClient.connect((LOCALHOST, port), CHECKER_PREFIX + self.name, 0.5)
            self.clients[port] = client
        return client

    def drop(self, port: int) -> None:
        client = self.clients.pop(port, None)
        if client is not None:
            client.close()
        self.slots = None  # asked again before the next command

    async def call(self, key: str, *args: str, timeout: float = 5.0) -> Any:
        """As ``MasterRoute.call``; ``NotSent`` also when only redirections came back."""
        slot = key_slot(key)
        if self.slots is None:
            await asyncio.sleep(max(0.0, self.refreshed + 0.05 - time.monotonic()))  # at most 20 maps a second
            self.refreshed = time.monotonic()
            try:
                self.slots = await self.topology.slot_map()
            except RESP_FAILURES as error:
                raise NotSent("no slot map: %r" % (error,)) from error
        port, asking = self.slots[slot], False
        for _ in range(5):
            if port == 0:
                self.slots = None
                raise NotSent("slot %d is not served" % slot)
            try:
                client = await self.connection(port)
            except RESP_FAILURES as error:
                self.drop(port)
                raise NotSent("%d: %r" % (port, error)) from error
            try:
                if asking:
                    client.writer.write(RespClient.encode("ASKING") + RespClient.encode(*args))
                    await asyncio.wait_for(client._reply(), timeout)
                    reply = await asyncio.wait_for(client._reply(), timeout)
                else:
                    reply = await asyncio.wait_for(client.call(*args), timeout)
            except RESP_FAILURES:
                self.drop(port)
                raise
            word, _, rest = str(reply).partition(" ") if isinstance(reply, RespError) else ("", "", "")
            if word not in ("MOVED", "ASK"):
                return reply
            self.counters["direct %s redirections" % word] += 1
            port, asking = int(rest.split()[1].rsplit(":", 1)[1]), word == "ASK"
            if word == "MOVED":
                self.slots[slot] = port
        raise NotSent("slot %d: more than 5 redirections" % slot)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


Route = Union[MasterRoute, ClusterRoute]


def daemon_user(index: int) -> str:
    """The Redis ACL user of daemon ``index`` (from 1) when there are several."""
    return "cached-%d" % index


def acl_args(daemons: int) -> list[str]:
    """redis-server arguments defining one ACL user per daemon (none for a single daemon)."""
    if daemons < 2:
        return []
    args: list[str] = []
    for i in range(1, daemons + 1):
        args += ["--user", daemon_user(i), "on", ">" + ACL_PASSWORD, "~*", "&*", "+@all"]
    return args


def with_user(url: str, user: str) -> str:
    """``url`` (unix://, redis://, redis-sentinel://, redis-cluster://) authenticating as ``user``."""
    if url.startswith("unix://"):
        return url + ("&" if "?" in url else "?") + "user=%s&password=%s" % (user, ACL_PASSWORD)
    scheme, _, rest = url.partition("://")
    return "%s://%s:%s@%s" % (scheme, user, ACL_PASSWORD, rest.rpartition("@")[2])


def toml_number(x: float) -> str:
    """``0``, ``2``, ``0.5``: an integral value as a TOML integer, else a TOML float."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def config_text(redis_url: str, socket: str, worker_tag: str = "", fills_log: str = "", aged: bool = False,
                max_staleness: Optional[float] = None) -> str:
    """The daemon's configuration; ``max_staleness`` (seconds; 0: no bound) is written as ``[local_cache]
    max_staleness`` unless None (a daemon that does not know the setting refuses the whole file)."""
    worker = [sys.executable, str(HERE / "fill_worker.py")]
    if worker_tag:
        worker += ["--tag", worker_tag]
    if fills_log:
        worker += ["--log", fills_log]
    text = f"""# written by Tests/Coherence/checker.py
socket = {json.dumps(socket)}
redis = {json.dumps(redis_url)}
log_level = "notice"

[redis_options]
pool_size = 2
connect_timeout = 0.5
command_timeout = {COMMAND_TIMEOUT}
reconnect_max_delay = 0.5

[local_cache]
max_bytes = 16777216
max_age = 300.0
{"" if max_staleness is None else "max_staleness = %s" % toml_number(max_staleness)}

[keys.Student]
ttl = 0
lease_timeout = {LEASE_TIMEOUT}

[keys.Filled]
ttl = 0
lease_timeout = {LEASE_TIMEOUT}
handler = {json.dumps(worker)}
workers = 2
timeout = 2.0
fallback_concurrency = 2
"""
    if aged:
        text += f"""
[keys.Aged]
ttl = {AGED_TTL}
stale_ttl = {AGED_STALE_TTL}
grace = {AGED_GRACE}
early_refresh_beta = {AGED_BETA}
lease_timeout = {LEASE_TIMEOUT}
handler = {json.dumps(worker)}
workers = 2
timeout = 2.0
fallback_concurrency = 2
"""
    return text


class Daemon:
    """One cached process. With several, daemon ``index`` (from 1) has its own folder, socket,
    configuration, handler workers (whose values say ``d<index>``) and Redis ACL user."""

    def __init__(self, binary: str, directory: Path, redis_url: str, index: int = 1, several: bool = False,
                 aged: bool = False, max_staleness: Optional[float] = None) -> None:
        self.binary = binary
        self.index = index
        self.name = "d%d" % index
        self.user = daemon_user(index) if several else None
        self.directory = directory
        self.socket = str(directory / "cached.sock")
        self.config = directory / "cached.toml"
        #: Every value the handler workers produced, one a line (the handler calls).
        self.fills_log = directory / "fills.log"
        self.config.write_text(config_text(with_user(redis_url, self.user) if self.user else redis_url, self.socket,
                                           self.name, str(self.fills_log), aged, max_staleness))
        self.redis_url = redis_url
        self.log_path = directory / "cached.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        #: Killed by the checker (``kill-daemon``) and not yet serving again: its exit is expected.
        self.down = False
        self.kills = 0
        #: Times stopped by ``stall-daemon``.
        self.stalls = 0

    def spawn(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "--config", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("cached %s exited with status %s:\n%s" % (self.name, self.proc.returncode,
                                                                            self.log_tail()))
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), 0.5)
                writer.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
                line = await asyncio.wait_for(reader.readline(), 2.0)
                writer.close()
                if b"pong" in line:
                    return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cached %s did not answer a ping:\n%s" % (self.name, self.log_tail()))
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def handler_values(self) -> list[str]:
        try:
            return [line for line in self.fills_log.read_text(errors="replace").splitlines() if line]
        except OSError:
            return []

    def stop(self) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ------------------------------------------------------------------------------------------------
# Connections to cached


class ConnectionLost(Exception):
    """The connection to cached closed before the answer came (``sent``: the request had been written)."""

    def __init__(self, sent: bool = True) -> None:
        super().__init__("connection lost")
        self.sent = sent


OVERDUE = object()  # a future's result when the watchdog gave up waiting for the answer


@dataclass(slots=True)
class Pending:
    method: str
    start: int
    future: "asyncio.Future[Any]"
    overdue: bool = False


class DaemonConnection:
    """One client connection to cached: requests are pipelined and answers matched by id."""

    def __init__(self, index: int, daemon: Optional[Daemon], run: "Run", near: int = 0) -> None:
        self.index = index
        self.daemon = daemon
        self.path = daemon.socket if daemon is not None else ""
        self.run = run
        self.pending: dict[int, Pending] = {}
        self.next_id = 0
        self.closed = True
        self.writer: Optional[asyncio.StreamWriter] = None
        self.reader: Optional[asyncio.StreamReader] = None
        self.lock = asyncio.Lock()
        self.reader_task: Optional[asyncio.Task[None]] = None
        self.counted = index >= 0  # the probe and stats connections are not part of the workload
        #: Entries of the near cache (0: none); ``near`` is this stream's, new with each stream.
        self.near_size = near
        self.near: Optional[NearCache] = None
        #: The daemon named a proof page this checker cannot use: no near hit at all (as the shim does).
        self.near_unprovable = False

    async def open(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 24)
        self.writer = writer
        self.reader = reader
        self.closed = False
        self.near = None
        near = NearCache(self.near_size) if self.near_size else None
        self.reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader, near))
        if near is not None:
            msg, _, _ = await self.call("track", {"maxEntries": self.near_size})
            if msg is OVERDUE or "result" not in msg:
                raise OSError("track refused: %r" % (msg,))
            self.use_proof(near, msg["result"])
            self.near = near

    def use_proof(self, near: NearCache, result: Any) -> None:
        """The proof page a ``track`` answer names (``{"proof": {"path", "maxStaleness"}}``), taken as the shim
        takes it (``NearCache.use_proof``; else ``ProofPage(path)`` set on the near cache, which a
        ``redis_cache.near`` older than the bound lacks: then no near hit at all, since the bound cannot be
        checked). A daemon without a bound names none: hits need no proof."""
        self.near_unprovable = False
        proof = result.get("proof") if isinstance(result, dict) else None
        if not isinstance(proof, dict):
            self.run.counters["near: track answers without a proof"] += 1
            return
        bound = proof.get("maxStaleness")
        expected = self.run.o.max_staleness_ns / 1e9
        if not isinstance(bound, (int, float)) or abs(float(bound) - expected) > 1e-6:
            self.run.anomaly("track proof maxStaleness is not the configured max_staleness",
                             "%r, configured %g" % (bound, expected))
        use = getattr(near, "use_proof", None)
        page = getattr(shim_near, "ProofPage", None)
        if use is not None:
            use(result)
        elif page is not None:
            try:
                near.proof = page(str(proof.get("path")))  # type: ignore[attr-defined]
                near.max_staleness_ns = int(float(bound) * 1e9)  # type: ignore[attr-defined,arg-type]
            except (OSError, ValueError, TypeError, AttributeError) as error:
                self.run.anomaly("proof page not usable: no near hits", repr(error))
                self.near_unprovable = True
                return
        else:
            self.run.counters["near: a proof page named, redis_cache.near has no ProofPage: no near hits"] += 1
            self.near_unprovable = True
            return
        if getattr(near, "proof", None) is None:
            self.run.anomaly("proof page not usable: no near hits", str(proof.get("path")))
        else:
            self.run.counters["near: proof pages used"] += 1

    def near_proven(self, near: NearCache) -> bool:
        """``near.proven()`` (a redis_cache.near without it has no bound to check: True)."""
        if self.near_unprovable:
            return False
        proven = getattr(near, "proven", None)
        return True if proven is None else bool(proven())

    def nothing_unread(self) -> bool:
        """No byte from the daemon waits unread (socket, or the reader's buffer): every notification sent
        so far has been applied to the near cache."""
        reader, writer = self.reader, self.writer
        if self.closed or reader is None or writer is None:
            return False
        if len(getattr(reader, "_buffer", b"x")):
            return False
        sock = writer.get_extra_info("socket")
        if sock is None or sock.fileno() < 0:
            return False  # closed (the read loop has not seen it yet)
        import select
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def ensure_open(self) -> None:
        async with self.lock:
            while self.closed and not self.run.stopping:
                try:
                    await self.open()
                    self.run.counters["client reconnects"] += 1
                except OSError:
                    await asyncio.sleep(0.05)

    async def _read_loop(self, reader: asyncio.StreamReader, near: Optional[NearCache] = None) -> None:
        try:
            while True:
                line = await reader.readline()
                end = now()
                if not line:
                    break
                msg = json.loads(line)
                if near is not None and isinstance(msg, dict) and msg.get("method") == "invalidate" and "id" not in msg:
                    near.invalidate(msg.get("params"))
                    self.run.counters["near: notifications"] += 1
                    continue
                rid = msg.get("id") if isinstance(msg, dict) else None
                p = self.pending.pop(rid, None) if isinstance(rid, int) else None
                if p is None:
                    self.run.anomaly("answer with an unknown id", line.decode(errors="replace")[:200])
                    continue
                if p.overdue:
                    self.run.counters["answers after the unanswered bound"] += 1
                    continue
                p.future.set_result((msg, end))
        except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError) as error:
            if self.counted and not self.run.stopping and not (self.daemon is not None and self.daemon.down):
                self.run.anomaly("client connection broke", repr(error))
        finally:
            self.closed = True
            if near is not None:
                near.clear()
            self.near = None
            if self.counted and not self.run.stopping:
                if self.daemon is not None and self.daemon.down:
                    self.run.counters["connections lost to kill-daemon"] += 1
                else:
                    self.run.counters["connections closed by cached"] += 1
            for p in self.pending.values():
                if not p.future.done():
                    p.future.set_exception(ConnectionLost())
                elif p.overdue and self.counted:
                    self.run.never_answered += 1
            self.pending.clear()
            if self.writer is not None:
                self.writer.close()

    async def call(self, method: str, params: dict[str, Any]) -> tuple[Any, int, int]:
        """Sends one request; returns (answer object or OVERDUE, send instant, answer instant)."""
        if self.closed or self.writer is None:
            raise ConnectionLost(sent=False)
        self.next_id += 1
        rid = self.next_id
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
                          separators=(",", ":")).encode() + b"\n"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        start = now()
        self.pending[rid] = Pending(method, start, future)
        self.writer.write(line)
        msg, end = await future
        if self.counted and self.daemon is not None:
            self.run.ops_by_daemon[self.daemon.name] += 1
        return msg, start, end

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------------
# The run


def outcome(source: str, code: Optional[int]) -> str:
    """A write's source with its failure, if any (code 0: no answer within the bound)."""
    if code is None:
        return source
    return source + (" unanswered" if code == 0 else " error %d" % code)


@dataclass
class Options:
    seconds: float
    clients: int
    depth: int
    seed: int
    faults: list[str]
    lag_ns: int
    bound_ns: int
    binary: str
    redis_server: str
    keep: bool
    examples: int
    #: "single" (one redis-server on a Unix socket), "sentinel" (master, replica, three Sentinels) or
    #: "cluster" (three primaries with a replica each).
    topology: str = "single"
    #: Least time between the kills of two failovers (seconds).
    failover_interval: float = 10.0
    #: The daemon's ``redis`` setting instead of the topology's ("master": redis://127.0.0.1:<first master>).
    daemon_redis: Optional[str] = None
    #: How the old master comes back after a failover: "sentinel" (restarted as a master, empty; the
    #: Sentinels make it a replica, about 10 s later) or "replicaof" (restarted as a replica of the new one).
    rejoin: str = "sentinel"
    #: No cached: the topology, the direct writer, a direct reader and the faults only (tries the harness).
    no_daemon: bool = False
    redis_cli: Optional[str] = None
    cluster_node_timeout_ms: int = 2000
    cluster_full_coverage: bool = True
    #: Filler keys spread over the cluster's slots (moved by reshards, never read).
    cluster_keys: int = 20000
    #: cached daemons sharing the Redis topology (clients spread over them).
    daemons: int = 1
    #: How long a write through one daemon may stay invisible to reads through another (ns).
    cross_lag_ns: int = 100_000_000
    #: Entries of the aged key in the workload (the first of AGED_ENTRIES).
    aged_entries: int = 0
    #: How late after its latest possible expiry an aged value may still be answered (ns).
    age_slack_ns: int = 100_000_000
    #: Client connections (the last ones) that keep a near cache through ``track``.
    near_clients: int = 2
    #: The daemon's ``[local_cache] max_staleness`` (ns; 0: no bound). With a bound, ``lag_ns`` and
    #: ``cross_lag_ns`` are ``max_staleness + staleness_slack`` (history.staleness_lag).
    max_staleness_ns: int = 0
    staleness_slack_ns: int = 50_000_000
    #: The allowance for direct writes without a bound (``--direct-lag-ms``), for the report.
    unbounded_lag_ns: int = 100_000_000
    #: Single topology: the daemons reach Redis over TCP, daemon i on 127.0.0.<i> (False: the Unix socket, and
    #: no network fault kinds).
    redis_tcp: bool = True
    #: ``blackhole-one``'s flow: "random" (a data connection or the listener, half and half), "listener", "data".
    blackhole_one: str = "random"
    #: ``loss``'s drop probability (None: 0.1 to 0.5 at random each time).
    loss_probability: Optional[float] = None


@dataclass
class FaultRecord:
    at: int
    kind: str
    detail: str


@dataclass
class FailoverRecord:
    """What one ``failover`` fault measured (instants from ``now()``)."""

    killed: int
    #: The replica was partitioned (link cut, reconnections refused) this long before the kill.
    cut_ms: Optional[float] = None
    promoted: Optional[int] = None
    #: The first answer of cached served by the new master (a ``set`` stored after the kill).
    first_answer: Optional[int] = None
    rejoined: Optional[int] = None
    exact: bool = True
    #: Cluster: the killed primary, its promoted replica, the entries of its shard, and every live node
    #: saying cluster_state:ok again.
    old: str = ""
    new: str = ""
    entries: int = 0
    cluster_ok: Optional[int] = None


@dataclass
class ReshardRecord:
    """What one ``reshard`` fault moved (instants from ``now()``)."""

    started: int
    source: str
    target: str
    slots: int
    #: Slots holding checker entries among them, and those entries.
    entry_slots: int
    entries: list[str]
    keys: int = 0
    ended: Optional[int] = None
    #: Every node agreed on the new slot map (and said cluster_state:ok).
    settled: Optional[int] = None


def daemon_host(index: int) -> str:
    """The loopback address daemon ``index`` (from 1) reaches Redis on, in the single topology over TCP."""
    return "127.0.0.%d" % index


@dataclass(frozen=True)
class RedisClientInfo:
    """One line of ``CLIENT LIST``."""

    id: str
    name: str
    user: str
    #: The server's end: ``127.0.0.<i>:<port>``, or the socket path.
    laddr: str
    #: The client's end (address, port); ("", 0) on the Unix socket.
    client: tuple[str, int]
    tcp: bool
    #: "listener" (subscribed: the invalidation connection) or "data".
    role: str
    #: The daemon it belongs to (None: the checker's, or nobody's).
    daemon: Optional["Daemon"]
    #: The server's end as (address, port) (None on the Unix socket).
    server: Optional[tuple[str, int]] = None


@dataclass
class Features:
    release: bool = True
    lease_false: bool = True


class Run:
    def __init__(self, options: Options, directory: Path) -> None:
        self.o = options
        self.dir = directory
        self.rng = random.Random(options.seed)
        self.history = H.History()
        self.counters: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.fault_log: list[FaultRecord] = []
        self.anomalies: Counter[str] = Counter()
        self.anomaly_examples: dict[str, list[str]] = {}
        self.features = Features()
        self.stopping = False
        self.value_counter = 0
        self.unanswered = 0
        self.never_answered = 0
        self.unanswered_examples: list[str] = []
        self.connections: list[DaemonConnection] = []
        ENTRIES[:] = BASE_ENTRIES + AGED_ENTRIES[:options.aged_entries]
        self.history.cross_lag = options.cross_lag_ns if options.daemons > 1 else 0
        self.history.age_slack = options.age_slack_ns
        self.history.stale_early_slack = int((COMMAND_TIMEOUT + 0.05) * 1e9)
        self.history.aging = {e.name: H.Aging(int(AGED_TTL * 1e9), int(AGED_STALE_TTL * 1e9), int(AGED_GRACE * 1e9))
                              for e in ENTRIES if e.aged}
        acl = acl_args(options.daemons)
        tcp = options.topology == "single" and options.redis_tcp and not options.no_daemon
        hosts = [daemon_host(i) for i in range(1, options.daemons + 1)]
        self.redis = RedisServer(options.redis_server, directory, args=acl,
                                 tcp_port=free_tcp_port(hosts) if tcp else None, tcp_hosts=hosts)
        #: Why the network fault kinds were left out (netfilter unusable here), if they were.
        self.silent_unavailable: Optional[str] = None
        #: Fault kinds asked for but left out (with ``silent_unavailable``).
        self.faults_left_out: list[str] = []
        #: The daemon's refusal of ``[local_cache] max_staleness`` (a daemon from before the bound), if it refused.
        self.bound_refused: Optional[str] = None
        #: Rules of dead checker processes removed before the run; rules of this one still there after teardown.
        self.rules_swept = 0
        self.rules_left: list[str] = []
        #: Each daemon's connections on its path (``verify_paths``), at the start and at the end; a problem.
        self.path_checks: dict[str, Any] = {}
        self.path_error: Optional[str] = None
        self.sentinel: Optional[SentinelTopology] = None
        if options.topology == "sentinel":
            self.sentinel = SentinelTopology(options.redis_server, directory, acl)
        self.cluster: Optional[ClusterTopology] = None
        if options.topology == "cluster":
            self.cluster = ClusterTopology(options.redis_server, options.redis_cli or "redis-cli", directory,
                                           options.cluster_node_timeout_ms, options.cluster_full_coverage,
                                           options.cluster_keys, acl)
        self.reshards: list[ReshardRecord] = []
        #: A cluster failover is under way (primaries change): the cluster watch holds off.
        self.cluster_busy = False
        self.final_distribution: dict[str, list[str]] = {}
        self.failovers: list[FailoverRecord] = []
        #: A problem of the topology itself (no promotion, a failover the checker did not inject): the run fails.
        self.topology_error: Optional[str] = None
        #: The master port the Sentinels should name (changed by an injected failover at its kill), and
        #: every +switch-master seen, by (sentinel, from port, to port).
        self.expected_master: Optional[int] = None
        self.switches: list[tuple[int, str, int, int]] = []
        #: Bumped at every +switch-master: the direct writer reconnects.
        self.master_generation = 0
        self.daemons: list[Daemon] = []
        self.t0 = now()
        self.elapsed = 0.0
        self.daemon_exit: Optional[int] = None
        #: Each daemon's ``stats`` at the end, by daemon name.
        self.daemon_stats: dict[str, Any] = {}
        #: ``stats.fleet`` and handler calls of daemons' earlier lives (asked just before ``kill-daemon``).
        self.fleet_before_kills: dict[str, Counter[str]] = {}
        self.ops_by_daemon: Counter[str] = Counter()
        #: Get answers marked ``"stale": true``, by key.
        self.stale_answers: Counter[str] = Counter()

    @property
    def daemon(self) -> Optional[Daemon]:
        """The first daemon (None with --no-daemon)."""
        return self.daemons[0] if self.daemons else None

    # --- recording

    def anomaly(self, kind: str, example: str) -> None:
        self.anomalies[kind] += 1
        ex = self.anomaly_examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(example)

    def new_value(self, prefix: str) -> str:
        self.value_counter += 1
        return "%s-%d" % (prefix, self.value_counter)

    def write(self, entry: Entry, value: Optional[str], start: int, end: float, source: str,
              lag: int = 0, claimed_unwritten: bool = False, conn: Optional[DaemonConnection] = None,
              fences: bool = False, expires: bool = False) -> None:
        """A write; ``conn``: made through that connection's daemon (``fences``: a set, delete or deleteHash,
        which end the entry's fill lock); ``expires``: stored with the aged key's whole lifetime as its TTL."""
        daemon = conn.daemon.index if conn is not None and conn.daemon is not None else None
        self.history.writes.append(H.Write(entry.name, value, start, end, lag, sys.intern(source), claimed_unwritten,
                                           daemon, fences, expires and entry.aged))

    def read(self, entry: Entry, value: Optional[str], start: int, end: int, source: str,
             uncached_fill: bool = False, uncached: bool = False, conn: Optional[DaemonConnection] = None,
             stale: bool = False) -> None:
        daemon = conn.daemon.index if conn is not None and conn.daemon is not None else None
        self.history.reads.append(H.Read(entry.name, value, start, end, sys.intern(source), uncached_fill, uncached,
                                         daemon, stale))
        self.register_fill(value)

    def register_fill(self, value: Optional[str]) -> None:
        """A handler's value (it names its entry, the daemon whose worker made it, and when it was produced)
        becomes a fill of the history."""
        if value is not None and value.startswith("F|") and value not in self.history.fills:
            parts = value.split("|")
            try:
                worker = parts[2]
                daemon = int(worker[1:worker.index(".")]) if worker.startswith("d") else None
                self.history.fills[value] = H.Fill(parts[1], int(parts[3]), daemon)
            except (IndexError, ValueError):
                self.anomaly("malformed fill value", value)

    # --- the Redis master

    async def master(self) -> RedisServer:
        """The current master: the single server, or the one a Sentinel names."""
        return self.redis if self.sentinel is None else await self.sentinel.master()

    async def connect_master(self, name: str) -> tuple[RespClient, RedisServer]:
        """A connection to the current master, checked with ``ROLE`` (Sentinel: a restarted old master
        says ``master`` until the Sentinels make it a replica, so the Sentinels are asked again)."""
        node = await self.master()
        client = await RespClient.connect(node.address, CHECKER_PREFIX + name, 0.5)
        if self.sentinel is None:
            return client, node
        try:
            role = await asyncio.wait_for(client.call("ROLE"), 0.5)
            if not (isinstance(role, list) and role and role[0] == "master") or await self.master() is not node:
                raise ConnectionError("%s is not the master" % node.name)
        except BaseException:
            client.close()
            raise
        return client, node

    # --- client operations

    async def actor(self, conn: DaemonConnection, rng: random.Random) -> None:
        while not self.stopping:
            if conn.closed:
                await conn.ensure_open()
                continue
            entry = rng.choice(ENTRIES)
            x = rng.random() / entry.write_share  # below 1: a write (sets 60 %, deletes 38 %, deleteHash 2 %)
            try:
                if x >= 1.0:
                    await self.op_get(conn, entry, rng)
                elif x < 0.6:
                    await self.op_set(conn, entry)
                elif x < 0.98 or entry.hash_key is None:
                    await self.op_delete(conn, entry)
                else:
                    await self.op_delete_hash(conn)
            except ConnectionLost:
                await asyncio.sleep(0.01)
            except (KeyError, TypeError, AttributeError, ValueError) as error:  # an answer of an unexpected shape
                self.anomaly("unexpected answer", repr(error))
                await asyncio.sleep(0.01)

    def error_answer(self, op: str, msg: Any) -> Optional[int]:
        """The error code of an error answer (counted), 0 for no answer within the bound, None for a result."""
        if msg is OVERDUE:
            self.ops[op + " unanswered"] += 1
            return 0
        error = msg.get("error")
        if error is None:
            return None
        code = int(error.get("code", 0))
        redis_error = str((error.get("data") or {}).get("redis", "")) if isinstance(error.get("data"), dict) else ""
        self.ops["%s error %d%s" % (op, code, " " + redis_error if redis_error else "")] += 1
        # A cluster without a primary for some slots (a failover, a restarted primary's first 2 s) answers
        # CLUSTERDOWN to every command (cluster-require-full-coverage yes) or to the shard's.
        expected = code in (-32000, -32002, -32004, -32005, -32006, -32009) or (
            code == -32003 and self.cluster is not None and redis_error == "CLUSTERDOWN")
        if not expected:
            self.anomaly("unexpected error %d to %s" % (code, op), json.dumps(error)[:300])
        return code

    async def op_get(self, conn: DaemonConnection, entry: Entry, rng: random.Random) -> None:
        params = entry.params()
        no_lease = not entry.handler and self.features.lease_false and rng.random() < 0.15
        if no_lease:
            params["lease"] = False
        op = "get(lease:false)" if no_lease else "get"
        near = conn.near
        if near is not None:
            if self.near_hit(conn, near, entry, params, op):
                return
            sent_at = near.begin(address_key(params))
        finished = keep = False
        try:
            msg, s, e = await conn.call("get", params)
            if near is not None:
                finished = True
                keep = near.finish(address_key(params))
        except ConnectionLost as lost:
            if lost.sent:
                self.ops[op + " dropped (excused)"] += 1
            raise
        finally:
            if near is not None and not finished:
                near.finish(address_key(params))
        if keep and near is conn.near and msg is not OVERDUE and isinstance(msg.get("result"), dict):
            near.keep(address_key(params), msg["result"], sent_at)
            if "nearTTL" in msg["result"]:
                self.counters["near: answers kept"] += 1
        if no_lease and msg is not OVERDUE and msg.get("error", {}).get("code") == -32602:
            self.features.lease_false = False
            self.counters["get lease:false refused with -32602: stopped using it"] += 1
            return
        if self.error_answer(op, msg) is not None:
            await asyncio.sleep(0.002)
            return
        result = msg["result"]
        value = result.get("value")
        if result.get("encoding") == "base64":
            self.anomaly("base64 value", json.dumps(result)[:200])
        lease = result.get("lease")
        src = "c%d %s %s" % (conn.index, conn.daemon.name if conn.daemon else "", op)
        if lease is not None:
            if no_lease:
                self.anomaly("lease granted to a get with lease:false", json.dumps(result)[:200])
            self.ops[op + " lease"] += 1
            self.read(entry, None, s, e, src + " -> lease", conn=conn)
            await self.fulfil_lease(conn, entry, lease, rng)
            return
        uncached = result.get("cached") is False
        stale = result.get("stale") is True
        if stale:
            self.stale_answers[entry.key] += 1
            if not entry.aged:
                self.anomaly("stale answer for a key without a stale window", json.dumps(result)[:200])
            if not result.get("hit"):
                self.anomaly("stale answer that is not a hit", json.dumps(result)[:200])
        if "stale" in result and not stale:
            self.anomaly("stale written as something else than true", json.dumps(result)[:200])
        if stale:
            kind = "hit stale"
        elif result.get("hit"):
            kind = "hit"
        elif value is None:
            kind = "miss"
        elif entry.handler:
            kind = "fill" + (" cached:false" if uncached else "")
        else:
            kind = "waited" + (" cached:false" if uncached else "")
        self.ops["%s %s" % (op, kind)] += 1
        uncached_fill = uncached and entry.handler and isinstance(value, str) and value.startswith("F|")
        self.read(entry, value, s, e, "%s -> %s" % (src, kind), uncached_fill, uncached, conn, stale)

    def near_hit(self, conn: DaemonConnection, near: NearCache, entry: Entry, params: dict[str, Any], op: str) -> bool:
        """A get answered from the connection's near cache, as the shim answers one: the proof first
        (``proven()``), then every notification already received applied (here: nothing from the daemon
        waits unread, else the daemon is asked), then the near cache, only if the proof was fresh. The read
        is recorded from before the proof was read to after the lookup. False: ask the daemon."""
        address = address_key(params)
        looked = now()
        proven = conn.near_proven(near)
        kept = near.get(address) if proven and conn.nothing_unread() else None
        if kept is None:
            if not proven and address in near.entries:
                self.counters["near: hits refused, the proof too old"] += 1
            return False
        instant = now()
        self.ops[op + " near hit"] += 1
        src = "c%d %s %s -> near hit" % (conn.index, conn.daemon.name if conn.daemon else "", op)
        self.read(entry, kept.get("value"), looked, instant, src, conn=conn)
        return True

    async def near_reader(self, conn: DaemonConnection, rng: random.Random) -> None:
        """A client of a near-cache connection that reads, every 1-3 ms, an entry its near cache holds, and only
        when the near cache may answer (``near_hit``): it never asks the daemon, so it goes on reading while
        the connection's other requests wait (a stalled daemon), as a process reading hot entries would."""
        by_address = {address_key(e.params()): e for e in ENTRIES}
        while not self.stopping:
            await asyncio.sleep(rng.uniform(0.001, 0.003))
            near = conn.near
            if near is None or conn.closed or not near.entries:
                continue
            entry = by_address.get(rng.choice(list(near.entries)))
            if entry is None:
                continue
            try:
                self.near_hit(conn, near, entry, entry.params(), "get(near reader)")
            except (KeyError, TypeError, AttributeError, ValueError, OSError) as error:
                self.anomaly("near reader failed", repr(error))

    async def fulfil_lease(self, conn: DaemonConnection, entry: Entry, lease: str, rng: random.Random) -> None:
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.003)
        if self.features.release and rng.random() < 0.2:
            params = entry.params()
            params["lease"] = lease
            msg, s, e = await conn.call("release", params)
            if msg is not OVERDUE and msg.get("error", {}).get("code") == -32601:
                self.features.release = False
                self.counters["release answered -32601: stopped using it"] += 1
            elif self.error_answer("release", msg) is None:
                released = msg["result"].get("released")
                self.ops["release released:%s" % json.dumps(released)] += 1
                return
            else:
                return
        await self.op_set(conn, entry, lease)

    async def op_set(self, conn: DaemonConnection, entry: Entry, lease: Optional[str] = None) -> None:
        value = self.new_value("c%d" % conn.index)
        params = entry.params()
        params["value"] = value
        op = "set"
        if lease is not None:
            params["lease"] = lease
            op = "set(lease)"
        src = "c%d %s %s" % (conn.index, conn.daemon.name if conn.daemon else "", op)
        fences = lease is None  # a plain set ends the entry's fill lock; a lease set only its own
        start = now()
        try:
            msg, start, e = await conn.call("set", params)
        except ConnectionLost as lost:
            if lost.sent:
                self.ops[op + " dropped (unknown outcome)"] += 1
                self.write(entry, value, start, H.INF, src + " dropped", conn=conn, fences=fences, expires=True)
            raise
        code = self.error_answer(op, msg)
        if code is not None:
            self.write(entry, value, start, H.INF, outcome(src, code), claimed_unwritten=code == -32000, conn=conn,
                       fences=fences, expires=True)
            await asyncio.sleep(0.002)
            return
        result = msg["result"]
        if result.get("stored") is True:
            self.ops[op + " stored"] += 1
            self.write(entry, value, start, e, src, conn=conn, fences=fences, expires=True)
        else:
            self.ops[op + " refused"] += 1
            if lease is None:
                self.anomaly("plain set refused", json.dumps(result)[:200])
            self.history.refused[value] = entry.name

    async def op_delete(self, conn: DaemonConnection, entry: Entry) -> None:
        src = "c%d %s delete" % (conn.index, conn.daemon.name if conn.daemon else "")
        start = now()
        try:
            msg, start, e = await conn.call("delete", entry.params())
        except ConnectionLost as lost:
            if lost.sent:
                self.ops["delete dropped (unknown outcome)"] += 1
                self.write(entry, H.ABSENT, start, H.INF, src + " dropped", conn=conn, fences=True)
            raise
        code = self.error_answer("delete", msg)
        if code is not None:
            self.write(entry, H.ABSENT, start, H.INF, outcome(src, code), claimed_unwritten=code == -32000, conn=conn,
                       fences=True)
            await asyncio.sleep(0.002)
            return
        self.ops["delete"] += 1
        self.write(entry, H.ABSENT, start, e, src, conn=conn, fences=True)

    async def op_delete_hash(self, conn: DaemonConnection) -> None:
        src = "c%d %s deleteHash" % (conn.index, conn.daemon.name if conn.daemon else "")
        hashed = [x for x in ENTRIES if x.hash_key is not None]
        start = now()
        try:
            msg, start, e = await conn.call("deleteHash", {"hashKey": HASH_KEY, "hashId": HASH_ID})
        except ConnectionLost as lost:
            if lost.sent:
                self.ops["deleteHash dropped (unknown outcome)"] += 1
                for x in hashed:
                    self.write(x, H.ABSENT, start, H.INF, src + " dropped", conn=conn, fences=True)
            raise
        code = self.error_answer("deleteHash", msg)
        end: float = H.INF if code is not None else e
        if code is None:
            self.ops["deleteHash"] += 1
        for x in hashed:
            self.write(x, H.ABSENT, start, end, outcome(src, code), claimed_unwritten=code == -32000, conn=conn,
                       fences=True)

    # --- the direct writer

    def route(self, name: str) -> Route:
        """Where the direct writer (and reader) send a key's commands."""
        return ClusterRoute(self.cluster, name, self.counters) if self.cluster is not None else MasterRoute(self, name)

    async def direct_writer(self, rng: random.Random) -> None:
        route = self.route("direct")
        weights = [e.direct_weight for e in ENTRIES]
        lifetime_ms = str(int((AGED_TTL + AGED_STALE_TTL + AGED_GRACE) * 1000))
        try:
            while not self.stopping:
                await asyncio.sleep(rng.uniform(0.001, 0.006))
                entry = rng.choices(ENTRIES, weights)[0]
                value: Optional[str] = self.new_value("d") if rng.random() < 0.6 else None
                f = entry.redis_field
                cmd: tuple[str, ...]
                if value is not None and entry.aged:
                    # As a pyredis-cache client of the aged key would: with the key's whole lifetime as TTL.
                    cmd = ("SET", entry.redis_key, value, "PX", lifetime_ms)
                elif value is not None:
                    cmd = ("HSET", entry.redis_key, f, value) if f else ("SET", entry.redis_key, value)
                else:
                    cmd = ("HDEL", entry.redis_key, f) if f else ("DEL", entry.redis_key)
                start = now()
                try:
                    reply = await route.call(entry.redis_key, *cmd)
                    end = now()
                except NotSent:
                    self.counters["direct writes not sent (no connection, redirections only)"] += 1
                    await asyncio.sleep(0.05)
                    continue
                except RESP_FAILURES:
                    self.ops["direct %s dropped (unknown outcome)" % cmd[0]] += 1
                    self.write(entry, value, start, H.INF, "direct %s dropped" % cmd[0], self.o.lag_ns, expires=True)
                    continue
                if isinstance(reply, RespError) and str(reply).startswith("CLUSTERDOWN"):
                    # Refused before execution: no write (an unknown outcome would explain stale reads later).
                    self.ops["direct %s refused (CLUSTERDOWN)" % cmd[0]] += 1
                    await asyncio.sleep(0.01)
                    continue
                if isinstance(reply, RespError):
                    self.ops["direct %s error" % cmd[0]] += 1
                    self.write(entry, value, start, H.INF, "direct %s error" % cmd[0], self.o.lag_ns, expires=True)
                    continue
                self.ops["direct " + cmd[0]] += 1
                self.write(entry, value, start, end, "direct " + cmd[0], self.o.lag_ns, expires=True)
        finally:
            route.close()

    async def direct_reader(self, rng: random.Random) -> None:
        """``--no-daemon``: reads the entries straight from Redis (as routed by the checker), checked like the
        daemon's answers: the harness's routing and failover model must explain them."""
        route = self.route("reader")
        try:
            while not self.stopping:
                await asyncio.sleep(rng.uniform(0.0005, 0.003))
                entry = rng.choice(ENTRIES)
                f = entry.redis_field
                cmd = ("HGET", entry.redis_key, f) if f else ("GET", entry.redis_key)
                start = now()
                try:
                    reply = await route.call(entry.redis_key, *cmd)
                    end = now()
                except NotSent:
                    await asyncio.sleep(0.05)
                    continue
                except RESP_FAILURES:
                    self.ops["direct read dropped"] += 1
                    continue
                if isinstance(reply, RespError):
                    self.ops["direct read error %s" % str(reply).split(" ", 1)[0]] += 1
                    await asyncio.sleep(0.01)
                    continue
                self.ops["direct read " + cmd[0]] += 1
                self.read(entry, reply, start, end, "direct read " + cmd[0])
        finally:
            route.close()

    # --- faults

    async def fault_injector(self, rng: random.Random) -> None:
        admin: Optional[RespClient] = None
        admin_node: Optional[RedisServer] = None
        bag: list[str] = []  # each kind once per round, in a random order: every kind comes up early
        while not self.stopping:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            if self.stopping:
                break
            if not bag:
                bag = list(self.o.faults)
                rng.shuffle(bag)
            kind = bag.pop()
            if kind == "failover":
                wait = self.failover_wait()
                if wait > 0 and any(k != "failover" for k in bag):
                    bag.insert(0, kind)  # too soon after the last one: the other kinds first
                    continue
                if wait > 0:
                    await self.sleep_unless_stopping(wait)
                    if self.stopping:
                        break
            detail: Optional[str]
            started = now()
            try:
                async with self.no_sentinel_failover(kind in ("restart", "timeout")):
                    if kind in SILENT_FAULT_KINDS:
                        detail = await self.silent_fault(kind, rng)
                    elif kind == "kill-daemon":
                        detail = await self.kill_daemon(rng)
                    elif self.cluster is not None:
                        detail = await self.cluster_fault(kind, rng)
                    elif kind in ("restart", "failover"):
                        if admin is not None:
                            admin.close()
                            admin = None
                        detail = await (self.restart_redis(rng) if kind == "restart" else self.failover(rng))
                    else:
                        if admin is not None and self.sentinel is not None and await self.master() is not admin_node:
                            admin.close()
                            admin = None
                        if admin is None:
                            admin, admin_node = await self.connect_master("faults")
                        detail = await self.admin_fault(admin, kind, rng)
            except RESP_FAILURES as error:
                self.counters["fault attempts that failed"] += 1
                self.anomaly("fault %s failed" % kind, repr(error))
                if admin is not None:
                    admin.close()
                admin = None
                bag.append(kind)  # try it again next
                continue
            if detail is None:
                self.counters["faults skipped (%s: no target)" % kind] += 1
                bag.append(kind)
                continue
            self.faults[kind] += 1
            self.fault_log.append(FaultRecord(started, kind, detail))
        if admin is not None:
            admin.close()

    def pick_daemon(self, rng: random.Random) -> Optional[Daemon]:
        """The daemon a fault hits: one at random when there are several (no random draw for one)."""
        if not self.daemons:
            return None
        return self.daemons[0] if len(self.daemons) == 1 else rng.choice(self.daemons)

    # --- silent faults (single topology): nothing is closed, nobody is told

    def daemon_path(self, daemon: Daemon) -> tuple[str, int]:
        """The loopback address and port by which ``daemon`` reaches Redis."""
        assert self.redis.tcp_port is not None
        return daemon_host(daemon.index), self.redis.tcp_port

    async def silent_fault(self, kind: str, rng: random.Random) -> Optional[str]:
        """``blackhole`` (every packet of one daemon's path to Redis dropped, both directions, 0.2-3 s),
        ``blackhole-one`` (one of its flows: a data connection or the invalidation listener, 0.2-3 s), ``loss``
        (10-50 % of its path's packets dropped at random, 1-4 s), ``stall-daemon`` (SIGSTOP of one daemon,
        SIGCONT 0.2-3 s later). Every rule is removed, and the daemon continued, in a ``finally``."""
        if kind == "stall-daemon":
            return await self.stall_daemon(rng)
        target = self.pick_daemon(rng)
        if target is None or target.down:
            return None
        if self.sentinel is not None or self.cluster is not None:
            return await self.topology_silent_fault(kind, target, rng)
        if self.redis.tcp_port is None:
            return None
        host, port = self.daemon_path(target)
        if kind == "blackhole":
            seconds = rng.uniform(0.2, 3.0)
            rules = path_rules(host, port)
            what = "%s's path %s:%d, both directions," % (target.name, host, port)
        elif kind == "loss":
            p = self.o.loss_probability if self.o.loss_probability is not None else rng.uniform(0.1, 0.5)
            seconds = rng.uniform(1.0, 4.0)
            rules = path_rules(host, port, random_loss(p))
            what = "%.0f %% of %s's packets to and from %s:%d" % (p * 100, target.name, host, port)
        else:  # blackhole-one: one flow, found from CLIENT LIST (asked on the Unix socket)
            connections = [c for c in await self.redis_clients() if c.daemon is target and c.tcp]
            role = self.o.blackhole_one if self.o.blackhole_one != "random" else rng.choice(("listener", "data"))
            pool = [c for c in connections if c.role == role] or (connections if self.o.blackhole_one == "random" else [])
            if not pool:
                return None
            flow = rng.choice(pool)
            seconds = rng.uniform(0.2, 3.0)
            rules = flow_rules(flow.client, (host, port))
            what = "%s's %s (id %s, %s:%d -> %s:%d), both directions," % (
                target.name, flow.role, flow.id, flow.client[0], flow.client[1], host, port)
            self.counters["blackhole-one flows: " + flow.role] += 1
        held = await self.hold_rules(rules, seconds)
        return "%s dropped for %.0f ms" % (what, held * 1000)

    async def topology_silent_fault(self, kind: str, target: Daemon, rng: random.Random) -> Optional[str]:
        """The network kinds with Sentinel or a cluster, where every node listens on 127.0.0.1 and the checker
        talks TCP too: on one node (the master; one primary at random), the daemon's flows open at the fault's
        start (``CLIENT LIST``: its ACL user with several daemons, else every TCP connection that is not the
        checker's, a Sentinel's or a replica's), each matched on both ends' addresses and ports. ``blackhole``
        and ``loss`` take all of them, ``blackhole-one`` one; the daemon's new connections pass (a blackhole
        of the flows, not of the path)."""
        if self.sentinel is not None:
            node = await self.master()
        else:
            assert self.cluster is not None
            node = self.cluster.node_at(rng.choice(self.cluster.primaries))
        connections = [c for c in await self.redis_clients(node.address) if c.daemon is target and c.tcp and c.server]
        extra: list[str] = []
        if kind == "blackhole-one":
            role = self.o.blackhole_one if self.o.blackhole_one != "random" else rng.choice(("listener", "data"))
            pool = [c for c in connections if c.role == role] or (connections if self.o.blackhole_one == "random" else [])
            flows = [rng.choice(pool)] if pool else []
            seconds = rng.uniform(0.2, 3.0)
            what = "%s's %s to %s" % (target.name, flows[0].role if flows else "?", node.name)
        elif kind == "loss":
            flows = connections
            p = self.o.loss_probability if self.o.loss_probability is not None else rng.uniform(0.1, 0.5)
            extra = random_loss(p)
            seconds = rng.uniform(1.0, 4.0)
            what = "%.0f %% of the packets of %s's %d flows to %s" % (p * 100, target.name, len(flows), node.name)
        else:
            flows = connections
            seconds = rng.uniform(0.2, 3.0)
            what = "%s's %d flows to %s" % (target.name, len(flows), node.name)
        if not flows:
            return None
        for flow in flows:
            self.counters["%s flows: %s" % (kind, flow.role)] += 1
        rules = [rule for flow in flows for rule in flow_rules(flow.client, flow.server, extra)]
        held = await self.hold_rules(rules, seconds)
        return "%s (%s), both directions, dropped for %.0f ms" % (
            what, ", ".join("%s %s:%d" % (f.role, *f.client) for f in flows), held * 1000)

    async def hold_rules(self, rules: list[tuple[str, ...]], seconds: float) -> float:
        """Adds ``rules``, waits ``seconds``, removes them (also when cancelled or failing); returns how long
        they were all in place (seconds)."""
        added: list[tuple[str, ...]] = []
        complete: Optional[float] = None
        try:
            for rule in rules:
                await asyncio.to_thread(SILENT.add, rule)
                added.append(rule)
            complete = time.monotonic()
            await asyncio.sleep(seconds)
        finally:
            for rule in reversed(added):
                if not await asyncio.to_thread(SILENT.remove, rule):
                    self.anomaly("netfilter rule not removed at once (retried at teardown)", " ".join(rule))
        return time.monotonic() - complete if complete is not None else 0.0

    async def stall_daemon(self, rng: random.Random) -> Optional[str]:
        """SIGSTOP of one daemon, SIGCONT 0.2-3 s later, while the other daemons, the direct writer and the
        near caches of its clients go on. The daemon is one that near-cache clients talk to, when there is
        one: without a near cache a stalled daemon answers nothing, stale or not."""
        alive = [d for d in self.daemons if not d.down and d.proc is not None and d.proc.poll() is None]
        near = [d for d in alive if any(c.near_size and c.daemon is d for c in self.connections)]
        pool = near or alive
        if not pool:
            return None
        target = pool[0] if len(pool) == 1 else rng.choice(pool)
        assert target.proc is not None
        seconds = rng.uniform(0.2, 3.0)
        pid = target.proc.pid
        SILENT.stop(pid)
        stopped = time.monotonic()
        target.stalls += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            SILENT.resume(pid)
        return "%s (pid %d) stopped for %.0f ms%s" % (
            target.name, pid, (time.monotonic() - stopped) * 1000,
            ", its near-cache clients going on" if target in near else "")

    async def redis_clients(self, address: Optional[Address] = None) -> list["RedisClientInfo"]:
        """``CLIENT LIST`` of a node (default: the single server, asked on the Unix socket), each connection
        with the daemon it belongs to (by ACL user with several daemons; with one, every TCP connection not
        named as the checker's or a Sentinel's and not a replica's: in the single topology the checker's are
        all on the Unix socket) and its role."""
        listing = await RespClient.query(self.redis.address if address is None else address, "CLIENT", "LIST",
                                         timeout=2.0)
        several = len(self.daemons) > 1
        users = {d.user: d for d in self.daemons}
        out = []
        for line in str(listing).splitlines():
            f = dict(x.split("=", 1) for x in line.split() if "=" in x)
            laddr = f.get("laddr", "")
            tcp = bool(laddr) and not laddr.startswith("/")
            name = f.get("name", "")
            if name.startswith((CHECKER_PREFIX, "sentinel-")) or set(f.get("flags", "")) & {"S", "M"}:
                daemon = None
            elif several:
                daemon = users.get(f.get("user"))
            else:
                daemon = self.daemons[0] if tcp and self.daemons else None
            role = "listener" if f.get("sub", "0") != "0" or f.get("cmd") == "subscribe" else "data"
            addr = f.get("addr", "")
            host, _, port = addr.rpartition(":")
            client = (host, int(port)) if tcp and port.isdigit() else ("", 0)
            shost, _, sport = laddr.rpartition(":")
            server = (shost, int(sport)) if tcp and sport.isdigit() else None
            out.append(RedisClientInfo(f.get("id", "?"), name, f.get("user", ""), laddr, client, tcp, role, daemon,
                                       server))
        return out

    async def verify_paths(self, when: str) -> None:
        """Checks that every connection of daemon i reaches Redis on 127.0.0.<i>:<port> (``laddr`` of
        ``CLIENT LIST``), and none of the checker's uses TCP, so that a rule on one daemon's path touches that
        daemon only. At the start every daemon must have connections there; a failure fails the run."""
        if self.redis.tcp_port is None or not self.daemons:
            return
        try:
            clients = await self.redis_clients()
        except RESP_FAILURES as error:
            self.anomaly("CLIENT LIST failed", repr(error))
            return
        seen: dict[str, Counter[str]] = {d.name: Counter() for d in self.daemons}
        problems: list[str] = []
        for c in clients:
            if c.name.startswith(CHECKER_PREFIX):
                if c.tcp:
                    problems.append("the checker's connection %s (%s) uses TCP" % (c.id, c.name))
                continue
            if c.daemon is None:
                continue
            expected = "%s:%d" % self.daemon_path(c.daemon)
            if c.laddr != expected:
                problems.append("%s's connection id %s (%s) reaches Redis on %s, not %s" % (
                    c.daemon.name, c.id, c.role, c.laddr or "?", expected))
            else:
                seen[c.daemon.name][c.role] += 1
        if when == "start":
            problems += ["%s has no connection on its path" % name for name, n in seen.items() if not n]
        self.path_checks[when] = {
            name: {"path": "%s:%d" % self.daemon_path(d), **dict(seen[name])} for name, d in
            ((d.name, d) for d in self.daemons)}
        if problems:
            self.anomaly("a daemon's connections are not on its own path", "%s: %s" % (when, "; ".join(problems[:3])))
            if self.path_error is None:
                self.path_error = "%s: %s" % (when, "; ".join(problems[:5]))

    async def admin_fault(self, admin: RespClient, kind: str, rng: random.Random) -> Optional[str]:
        if kind in ("kill-data", "kill-listener"):
            # With several daemons, one at random: its connections are those of its ACL user.
            target = self.pick_daemon(rng)
            user = target.user if target is not None else None
            listing = await asyncio.wait_for(admin.call("CLIENT", "LIST"), 5.0)
            data, listeners = [], []
            for line in str(listing).splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                if fields.get("name", "").startswith((CHECKER_PREFIX, "sentinel-")):
                    continue  # the checker's own, and the Sentinels' (their hello channel is a subscription)
                if user is not None and fields.get("user") != user:
                    continue  # another daemon's
                if "S" in fields.get("flags", "") or "M" in fields.get("flags", ""):
                    continue  # a replica's link
                if fields.get("sub", "0") != "0" or fields.get("cmd") == "subscribe":
                    listeners.append(fields["id"])
                else:
                    data.append(fields["id"])
            if kind == "kill-listener":
                targets = listeners
            else:
                targets = rng.sample(data, rng.randint(1, len(data))) if data else []
            if not targets:
                return None
            for cid in targets:
                await asyncio.wait_for(admin.call("CLIENT", "KILL", "ID", cid), 5.0)
            return ("%s " % target.name if user is not None and target is not None else "") + "ids " + ",".join(targets)
        if kind == "pause":
            ms, mode = rng.randint(50, 400), rng.choice(["ALL", "WRITE"])
        else:  # timeout: longer than cached's command timeout
            timeout_ms = int(COMMAND_TIMEOUT * 1000)
            ms, mode = rng.randint(timeout_ms + 200, timeout_ms + 600), rng.choice(["ALL", "WRITE"])
        await asyncio.wait_for(admin.call("CLIENT", "PAUSE", str(ms), mode), 5.0)
        await asyncio.sleep(ms / 1000)
        return "%d ms %s" % (ms, mode)

    async def kill_daemon(self, rng: random.Random) -> Optional[str]:
        """``kill -9`` of one daemon (at random), restarted 50-300 ms later: its fill in flight dies with it
        (its fill lock expires after ``lease_timeout`` and another daemon fills), its clients' requests in
        flight are dropped (reads excused, writes of unknown outcome), its local copy is gone. Its stats are
        asked just before, so that the report's sums cover its earlier lives."""
        target = self.pick_daemon(rng)
        if target is None:
            return None
        before = await self.fetch_stats(target)
        if isinstance(before, dict):
            self.absorb_stats(target, before)
        down = rng.uniform(0.05, 0.3)
        target.down = True
        kill_at = now()
        target.kill9()
        target.kills += 1
        await asyncio.sleep(down)
        target.spawn()
        try:
            await target.wait_ready()
        except RuntimeError as error:
            self.daemon_exit = target.proc.returncode if target.proc and target.proc.poll() is not None else -1
            self.anomaly("cached did not come back after kill-daemon", "%s: %s" % (target.name, str(error)[-300:]))
            self.stopping = True
            return None
        target.down = False
        return "%s down %.0f ms, serving after %.0f ms" % (target.name, down * 1000, (now() - kill_at) / 1e6)

    def absorb_stats(self, daemon: Daemon, stats: dict[str, Any]) -> None:
        """Adds ``stats.fleet`` and the handler calls of a daemon about to be killed to its earlier lives'."""
        acc = self.fleet_before_kills.setdefault(daemon.name, Counter())
        for k, v in (stats.get("fleet") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                acc[k] += v
        for key, h in (stats.get("handlers") or {}).items():
            if isinstance(h, dict) and isinstance(h.get("calls"), (int, float)):
                acc["handler calls " + key] += h["calls"]

    async def restart_redis(self, rng: random.Random) -> str:
        """``kill -9`` of the master, restarted empty at once (Sentinel: too soon for a failover; its
        replica then resyncs from the empty master)."""
        down = rng.uniform(0.05, 0.3)
        node = await self.master()
        kill_at = now()
        node.kill9()
        await asyncio.sleep(down)
        node.spawn()
        await node.wait_ready()
        ready_at = now()
        for entry in ENTRIES:
            self.write(entry, H.ABSENT, kill_at, ready_at, "restart of Redis", self.o.lag_ns)
        detail = "down %.0f ms, ready after %.0f ms" % (down * 1000, (ready_at - kill_at) / 1e6)
        if self.sentinel is not None:
            if await self.master() is not node:
                self.topology_error = "a failover happened during a restart of the master (%s)" % detail
                self.anomaly("unplanned failover", detail)
            detail += " (%s)" % node.name
        return detail

    # --- failovers (Sentinel topology)

    @contextlib.asynccontextmanager
    async def no_sentinel_failover(self, guard: bool) -> AsyncIterator[None]:
        """Around a restart or a long pause of the master (Sentinel topology): with a ping a second and
        ``down-after-milliseconds`` 1000, a Sentinel whose last answered ping is old when the master goes
        away sees it down at once, two of them make a failover (seen here, racing the replica's resync from
        the restarted empty master): a failover the fault is not about and the history cannot model. The
        Sentinels get ``GUARDED_DOWN_AFTER_MS`` for the fault, and 1000 again once each has a fresh ping answer."""
        if not guard or self.sentinel is None:
            yield
            return
        topo = self.sentinel
        try:
            await topo.set_down_after(GUARDED_DOWN_AFTER_MS)
            yield
        finally:
            deadline = time.monotonic() + 10.0
            try:
                master = await self.master()
                while (stale := await topo.not_pinged_recently(master)) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if stale:
                    self.anomaly("Sentinels without a fresh ping 10 s after a fault", stale)
            finally:
                await topo.set_down_after(DOWN_AFTER_MS)

    def failover_wait(self) -> float:
        """Seconds until the next failover may be injected."""
        if not self.failovers:
            return 0.0
        return self.o.failover_interval - (now() - self.failovers[-1].killed) / 1e9

    async def sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def snapshot_commands(entries: list[Entry]) -> list[tuple[str, ...]]:
        return [("HGET", e.redis_key, e.redis_field) if e.redis_field else ("GET", e.redis_key) for e in entries]

    async def failover(self, rng: random.Random) -> Optional[str]:
        """``kill -9`` of the master; the Sentinels promote its replica; the old master comes back on its
        port (empty, ``SETTLE_AFTER_PROMOTION`` after the promotion) and the Sentinels make it a replica of
        the new one (``--rejoin``). See history.py, *Failovers*, for how the replica's contents are read
        and modelled; ``None`` when the replica is not in sync."""
        assert self.sentinel is not None
        topo = self.sentinel
        old = await self.master()
        new = topo.other(old)
        if not await topo.wait_settled(old, new, 10.0, lambda: self.stopping):
            return None
        record = FailoverRecord(killed=0)
        record.cut_ms = await self.partition_replica(old, new, rng)
        record.killed = killed = now()
        self.expected_master = new.port
        old.kill9()
        dead = now()
        self.failovers.append(record)
        if record.cut_ms is not None:
            await self.heal_replica(new)
        probe = asyncio.get_running_loop().create_task(self.first_answer_after(dead))
        try:
            values, frozen, read_end, exact = await self.read_promoted_replica(new)
            record.exact = exact
            for value in values.values():
                self.register_fill(value)
            promoted = await self.wait_promotion(new, 30.0)
            if promoted is None:
                raise ConnectionError("the Sentinels did not promote %s within 30 s of the kill" % new.name)
            record.promoted = promoted
            self.history.failovers.append(H.Failover(
                killed, dead, frozen, promoted if exact else read_end, values, exact, self.o.lag_ns,
                "failover %d" % len(self.failovers)))
            # The first answer cached serves from the new master (the old one comes back only after it).
            done, _ = await asyncio.wait([probe], timeout=10.0)
            if done:
                record.first_answer = probe.result()
        except RESP_FAILURES as error:
            # Without the replica's contents the history cannot model the failover: the run stops.
            self.topology_error = "failover %d: %s" % (len(self.failovers), error)
            self.anomaly("failover could not be modelled", str(error))
            self.stopping = True
            return "failed: %s" % error
        finally:
            if not probe.done():
                probe.cancel()
        await asyncio.sleep(max(0.0, SETTLE_AFTER_PROMOTION - (now() - promoted) / 1e9))
        old.spawn(replicaof=new.port if self.o.rejoin == "replicaof" else None)
        await old.wait_ready()
        if await topo.wait_settled(new, old, 60.0, lambda: self.stopping):
            record.rejoined = now()
        elif not self.stopping:
            self.anomaly("old master did not rejoin as a replica within 60 s", old.name)
        return "%s -> %s%s; promoted after %.0f ms; first answer from the new master %s; rejoined %s%s" % (
            old.name, new.name, ", replica partitioned %.0f ms before" % record.cut_ms if record.cut_ms else "",
            (promoted - killed) / 1e6,
            "after %.0f ms" % ((record.first_answer - killed) / 1e6) if record.first_answer else "not seen",
            "after %.0f ms" % ((record.rejoined - killed) / 1e6) if record.rejoined else "not awaited",
            "" if exact else "; replica read after its promotion (inexact)")

    async def partition_replica(self, old: RedisServer, new: RedisServer, rng: random.Random) -> Optional[float]:
        """Half the time, partitions the replica ``new`` from its master ``old`` a little before the kill, so
        that writes are lost: its link is cut, and a wrong masterauth makes each reconnection fail its
        handshake (a replica otherwise reconnects at once and catches up from the backlog). Returns how long
        (ms) before now, or None; ``heal_replica`` after the kill."""
        if rng.random() >= 0.5:
            return None
        cut_ms = rng.uniform(20, 300)
        await RespClient.query(new.address, "CONFIG", "SET", "masterauth", "partitioned-by-the-checker")
        try:
            await RespClient.query(old.address, "CLIENT", "KILL", "TYPE", "replica")
        except RESP_FAILURES:
            await RespClient.query(new.address, "CONFIG", "SET", "masterauth", "")
            raise  # the fault is tried again later
        await asyncio.sleep(cut_ms / 1000)
        return cut_ms

    async def heal_replica(self, new: RedisServer) -> None:
        try:
            await RespClient.query(new.address, "CONFIG", "SET", "masterauth", "")
        except RESP_FAILURES as error:
            self.anomaly("masterauth not restored", repr(error))

    async def watch_switches(self, sentinel: SentinelServer) -> None:
        """Follows one Sentinel's ``+switch-master``: a switch to another master than the one an injected
        failover promotes is a failover the checker did not make and cannot model (the run stops)."""
        client: Optional[RespClient] = None
        while not self.stopping:
            try:
                if client is None:
                    client = await RespClient.connect(sentinel.address, CHECKER_PREFIX + "switches", 0.5)
                    await asyncio.wait_for(client.call("SUBSCRIBE", "+switch-master"), 0.5)
                message = await client._reply()
            except RESP_FAILURES:
                if client is not None:
                    client.close()
                client = None
                await asyncio.sleep(0.1)
                continue
            if not (isinstance(message, list) and len(message) == 3 and message[0] == "message"):
                continue
            fields = str(message[2]).split()  # <name> <old ip> <old port> <new ip> <new port>
            if len(fields) != 5 or fields[0] != MASTER_NAME:
                continue
            at, old_port, new_port = now(), int(fields[2]), int(fields[4])
            self.switches.append((at, sentinel.name, old_port, new_port))
            self.master_generation += 1
            if new_port != self.expected_master and self.topology_error is None:
                self.topology_error = (
                    "the Sentinels failed over on their own at %s (%s: +switch-master %d -> %d): a failover the "
                    "checker did not inject and cannot model; reads after it are not meaningful" % (
                        fmt_t(self, at), sentinel.name, old_port, new_port))
                self.anomaly("failover not injected by the checker", self.topology_error)
                self.stopping = True
        if client is not None:
            client.close()

    async def read_promoted_replica(self, replica: RedisServer, entries: Optional[list[Entry]] = None,
                                    cluster: bool = False) -> tuple[dict[str, H.Value], int, int, bool]:
        """Every entry's value (of ``entries``: those of the killed shard) on ``replica`` once its link to the
        dead master is down and it has applied all it received (two reads 30 ms apart agree), read with
        ``ROLE`` in one ``MULTI``. A cluster refuses a ``MULTI`` over keys of several slots (``CROSSSLOT``):
        there the reads are pipelined between two ``ROLE``s, on a ``READONLY`` connection; the second
        ``ROLE`` still saying ``slave`` shows every read came before the promotion (nothing else writes to
        a replica whose master is dead).

        Returns (values, send instant of the ``EXEC`` or pipeline, its answer instant, exact): exact when
        ``ROLE`` still said ``slave`` (the values are the new master's state at its promotion, which came
        later).
        """
        entries = ENTRIES if entries is None else entries
        client: Optional[RespClient] = None
        previous: Optional[tuple[Any, list[Any]]] = None
        deadline = time.monotonic() + 30.0
        commands = [("ROLE",), *self.snapshot_commands(entries)]
        try:
            while time.monotonic() < deadline:
                after: Any = None
                try:
                    if client is None:
                        client = await RespClient.connect(replica.address, CHECKER_PREFIX + "snapshot", 0.5)
                        if cluster:  # a cluster replica serves reads only on a READONLY connection (else MOVED)
                            await asyncio.wait_for(client.call("READONLY"), 0.5)
                    if cluster:
                        replies, sent = await asyncio.wait_for(client.pipeline([*commands, ("ROLE",)]), 2.0)
                        reply, after = replies[:-1], replies[-1]
                    else:
                        reply, sent = await asyncio.wait_for(client.transaction(commands), 2.0)
                    end = now()
                except RESP_FAILURES:
                    if client is not None:
                        client.close()
                    client = None
                    await asyncio.sleep(0.01)
                    continue
                if (not isinstance(reply, list) or len(reply) != len(commands)
                        or any(isinstance(x, RespError) for x in reply)):
                    await asyncio.sleep(0.01)  # e.g. -LOADING, or CLUSTERDOWN on a cluster replica
                    continue
                role, values = reply[0], reply[1:]
                snapshot = {e.name: v for e, v in zip(entries, values)}
                if role[0] == "master" or (isinstance(after, list) and after[0] == "master"):
                    self.counters["failover: replica read after its promotion (inexact)"] += 1
                    return snapshot, sent, end, False
                state, offset = role[3], role[4]
                if state in ("connected", "sync", "handshake"):
                    await asyncio.sleep(0.005)  # still reading what the dead master sent
                    continue
                if previous is not None and previous == (offset, values):
                    return snapshot, sent, end, True
                previous = (offset, values)
                await asyncio.sleep(0.03)
        finally:
            if client is not None:
                client.close()
        raise ConnectionError("could not read the replica %s after the kill" % replica.name)

    async def wait_promotion(self, new: RedisServer, timeout: float) -> Optional[int]:
        """The instant a Sentinel first names ``new`` as the master (polled every 10 ms)."""
        assert self.sentinel is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.sentinel.sentinels:
                try:
                    if await self.sentinel.master_port(s) == new.port:
                        return now()
                except RESP_FAILURES:
                    pass
            await asyncio.sleep(0.01)
        return None

    async def first_answer_after(self, dead: int, probe: Entry = FAILOVER_PROBE) -> int:
        """The instant cached first stores a ``set`` of ``probe`` (cluster: a key of the killed shard) sent
        after ``dead`` (the old master is dead then and restarted only after this, so the new master served
        it), polling every 10 ms."""
        conn = DaemonConnection(-3, self.daemon, self)
        call: Optional[asyncio.Task[Any]] = None
        try:
            while True:  # until cancelled by failover() (it waits 10 s after the promotion at most)
                if conn.closed:
                    try:
                        await conn.open()
                    except OSError:
                        await asyncio.sleep(0.05)
                        continue
                params = probe.params()
                params["value"] = self.new_value("probe")
                call = asyncio.get_running_loop().create_task(conn.call("set", params))
                done, _ = await asyncio.wait([call], timeout=2.0)
                if not done:
                    conn.close()  # the read loop fails the call
                    await asyncio.wait([call])
                    continue
                try:
                    msg, start, end = call.result()
                except ConnectionLost:
                    await asyncio.sleep(0.01)
                    continue
                if start > dead and isinstance(msg, dict) and msg.get("result", {}).get("stored") is True:
                    return end
                await asyncio.sleep(0.01)
        finally:
            conn.close()  # a call still waiting fails with ConnectionLost: nobody needs it
            if call is not None and not call.done():
                call.add_done_callback(lambda t: t.cancelled() or t.exception())

    # --- the cluster topology's faults

    async def cluster_fault(self, kind: str, rng: random.Random) -> Optional[str]:
        """One fault on a cluster: ``reshard`` and ``failover`` below; ``restart`` of one primary; the other
        kinds on one primary's connections (the daemon keeps data connections and a listener per primary)."""
        assert self.cluster is not None
        if kind == "reshard":
            return await self.reshard(rng)
        if kind == "failover":
            return await self.cluster_failover(rng)
        if kind == "restart":
            return await self.restart_cluster_primary(rng)
        node = self.cluster.node_at(rng.choice(self.cluster.primaries))
        admin = await RespClient.connect(node.address, CHECKER_PREFIX + "faults", 0.5)
        try:
            detail = await self.admin_fault(admin, kind, rng)
        finally:
            admin.close()
        return None if detail is None else "%s on %s" % (detail, node.name)

    async def restart_cluster_primary(self, rng: random.Random) -> Optional[str]:
        """``kill -9`` of one primary, restarted empty from its folder 50-300 ms later (far within
        ``cluster-node-timeout``: no failover; its nodes.conf keeps it the primary of its slots). Only its
        shard's entries are reset; Redis keeps a restarted primary refusing queries (CLUSTERDOWN) for 2 s."""
        topo = self.cluster
        assert topo is not None
        if not await topo.wait_settled(10.0, lambda: self.stopping):
            return None
        node = topo.node_at(rng.choice(topo.primaries))
        entries = topo.entries_of(node.port)
        down = rng.uniform(0.05, 0.3)
        kill_at = now()
        node.kill9()
        await asyncio.sleep(down)
        node.spawn()
        await node.wait_ready()
        ready_at = now()
        for entry in entries:
            self.write(entry, H.ABSENT, kill_at, ready_at, "restart of Redis", self.o.lag_ns)
        detail = "%s (%d entries) down %.0f ms, ready after %.0f ms" % (
            node.name, len(entries), down * 1000, (ready_at - kill_at) / 1e6)
        if await topo.wait_settled(30.0, lambda: self.stopping):
            detail += ", cluster ok after %.0f ms" % ((now() - kill_at) / 1e6)
        elif not self.stopping:
            self.anomaly("cluster not settled 30 s after a restart", node.name)
        return detail

    @staticmethod
    def reshard_window(owned: list[int], entry_slots: list[int], n: int, rng: random.Random) -> list[int]:
        """``n`` consecutive slots of ``owned`` (sorted) with at least one of ``entry_slots`` among them, and
        (when some 20 tries allow it) not all of them: the source keeps entries."""
        window: list[int] = []
        for _ in range(20):
            i = owned.index(rng.choice(entry_slots))
            first = rng.randint(max(0, i - n + 1), min(i, len(owned) - n))
            window = owned[first:first + n]
            if len(entry_slots) < 2 or not set(entry_slots) <= set(window):
                break
        return window

    async def reshard(self, rng: random.Random) -> Optional[str]:
        """Moves 1,000-1,500 slots, among them slots of checker entries, from a primary that keeps at least
        ``RESHARD_KEEP`` (and, when one can, entries) to the primary with the fewest slots. ``MIGRATE`` moves
        each key atomically: nothing is lost, nothing to model. The entries' slots stay migrating 0-200 ms
        before and after their keys move, so that clients meet ``ASK`` (and ``MOVED`` after)."""
        topo = self.cluster
        assert topo is not None
        if not await topo.wait_settled(10.0, lambda: self.stopping):
            return None
        counts = {p: len(topo.slots_of(p)) for p in topo.primaries}
        entry_slots = {p: sorted({key_slot(e.redis_key) for e in topo.entries_of(p)}) for p in topo.primaries}
        n = rng.randint(RESHARD_SLOTS, RESHARD_SLOTS * 3 // 2)
        sources = [p for p in topo.primaries if counts[p] >= n + RESHARD_KEEP and entry_slots[p]]
        if not sources:
            return None
        source = rng.choice([p for p in sources if len(entry_slots[p]) >= 2] or sources)
        target = min((p for p in topo.primaries if p != source), key=lambda p: counts[p])
        slots = self.reshard_window(topo.slots_of(source), entry_slots[source], n, rng)
        held = set(slots) & set(entry_slots[source])
        record = ReshardRecord(now(), topo.node_at(source).name, topo.node_at(target).name, len(slots), len(held),
                               [e.name for e in topo.entries_of(source) if key_slot(e.redis_key) in held])
        self.reshards.append(record)
        try:
            keys = await topo.move_slots(source, target, slots,
                                         lambda batch: rng.uniform(0.0, 0.2) if held.intersection(batch) else 0.0)
        except RESP_FAILURES as error:
            # Slots may be left migrating: the cluster is no longer what the checker expects.
            self.topology_error = "reshard %d (%s -> %s) failed: %r" % (
                len(self.reshards), record.source, record.target, error)
            self.anomaly("reshard failed", self.topology_error)
            self.stopping = True
            return "failed: %r" % (error,)
        record.ended = now()
        record.keys = len(keys)
        if await topo.wait_settled(30.0, lambda: self.stopping):
            record.settled = now()
        return "%d slots (%d of them with %d checker entries) %s -> %s: %d keys in %.0f ms; every node agreed %s" % (
            record.slots, record.entry_slots, len(record.entries), record.source, record.target, record.keys,
            (record.ended - record.started) / 1e6,
            "after %.0f ms" % ((record.settled - record.started) / 1e6) if record.settled else "not seen")

    async def cluster_failover(self, rng: random.Random) -> Optional[str]:
        """``kill -9`` of a primary owning checker entries; the cluster promotes its replica (after
        ``cluster-node-timeout``, the failure agreement of the other primaries and the replica's election
        delay); the killed node restarts from its folder and rejoins as a replica of the promoted one. The
        Sentinel mode's model (history.py, *Failovers*) applies to the killed shard's entries only: their
        values are read from the replica after its link is down and before it is promoted; no other entry
        can lose a write."""
        topo = self.cluster
        assert topo is not None
        if not await topo.wait_settled(10.0, lambda: self.stopping):
            return None
        candidates = [p for p in topo.primaries if topo.entries_of(p) and p in topo.replica_of]
        if not candidates:
            return None
        old = topo.node_at(rng.choice(candidates))
        new = topo.node_at(topo.replica_of[old.port])
        entries = topo.entries_of(old.port)
        probe_key = probe_entry(set(topo.slots_of(old.port)))
        record = FailoverRecord(killed=0, old=old.name, new=new.name, entries=len(entries))
        record.cut_ms = await self.partition_replica(old, new, rng)
        self.cluster_busy = True
        try:
            record.killed = killed = now()
            topo.primaries = [new.port if p == old.port else p for p in topo.primaries]
            topo.untrusted.add(old.port)
            old.kill9()
            dead = now()
            self.failovers.append(record)
            if record.cut_ms is not None:
                await self.heal_replica(new)
            probe = (asyncio.get_running_loop().create_task(self.first_answer_after(dead, probe_key))
                     if self.daemon is not None else None)
            promoted = killed
            try:
                values, frozen, read_end, exact = await self.read_promoted_replica(new, entries, cluster=True)
                record.exact = exact
                for value in values.values():
                    self.register_fill(value)
                promoted_at = await self.wait_role_master(new, 30.0)
                if promoted_at is None:
                    raise ConnectionError("%s was not promoted within 30 s of the kill of %s" % (new.name, old.name))
                promoted = record.promoted = promoted_at
                self.history.failovers.append(H.Failover(
                    killed, dead, frozen, promoted if exact else read_end, values, exact, self.o.lag_ns,
                    "failover %d" % len(self.failovers)))
                record.cluster_ok = await self.wait_cluster_ok([n for n in topo.nodes if n is not old], 30.0)
                if probe is not None:
                    done, _ = await asyncio.wait([probe], timeout=10.0)
                    if done:
                        record.first_answer = probe.result()
            except RESP_FAILURES as error:
                self.topology_error = "failover %d: %s" % (len(self.failovers), error)
                self.anomaly("failover could not be modelled", str(error))
                self.stopping = True
                return "failed: %s" % error
            finally:
                if probe is not None and not probe.done():
                    probe.cancel()
            # The killed node comes back from its folder, empty: its nodes.conf still names it the primary of
            # its slots, with an older config epoch; the others' gossip makes it a replica of the promoted one
            # within milliseconds, and until then Redis keeps a restarted primary refusing every query
            # (CLUSTERDOWN) for 2 s, so no write can land on it and be lost.
            old.spawn()
            await old.wait_ready()
            deadline = time.monotonic() + 60.0
            while not self.stopping and time.monotonic() < deadline:
                if await old.in_sync_with(new):
                    record.rejoined = now()
                    break
                await asyncio.sleep(0.05)
            topo.untrusted.discard(old.port)
            if not await topo.wait_settled(60.0, lambda: self.stopping) and not self.stopping:
                self.anomaly("cluster not settled 60 s after a failover", "%s -> %s" % (old.name, new.name))
        finally:
            self.cluster_busy = False

        def after(instant: Optional[int]) -> str:
            return "after %.0f ms" % ((instant - killed) / 1e6) if instant else "not seen"

        return ("%s -> %s (%d entries)%s; promoted %s; cluster ok %s; first answer for its slots %s; rejoined %s%s" % (
            old.name, new.name, len(entries),
            ", replica partitioned %.0f ms before" % record.cut_ms if record.cut_ms else "",
            after(record.promoted), after(record.cluster_ok), after(record.first_answer), after(record.rejoined),
            "" if record.exact else "; replica read after its promotion (inexact)"))

    async def wait_role_master(self, node: RedisServer, timeout: float) -> Optional[int]:
        """The instant ``node`` first answers ``ROLE`` as a master (polled every 10 ms): after its promotion."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                role = await RespClient.query(node.address, "ROLE")
                if isinstance(role, list) and role and role[0] == "master":
                    return now()
            except RESP_FAILURES:
                pass
            await asyncio.sleep(0.01)
        return None

    async def wait_cluster_ok(self, nodes: list[RedisServer], timeout: float) -> Optional[int]:
        """The instant every node of ``nodes`` says ``cluster_state:ok`` (polled every 20 ms)."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [await self.cluster.cluster_state(n) for n in nodes]
                if all(state == "ok" for state in states):
                    return now()
            except RESP_FAILURES:
                pass
            await asyncio.sleep(0.02)
        return None

    async def watch_cluster(self) -> None:
        """Every 0.5 s asks a trusted node which primaries serve slots: other ones than the checker expects,
        three times in a row outside an injected failover, are a failover the checker did not make and
        cannot model (the run stops)."""
        topo = self.cluster
        assert topo is not None
        strikes = 0
        while not self.stopping:
            await asyncio.sleep(0.5)
            if self.cluster_busy:
                strikes = 0
                continue
            try:
                views = await topo.view(learn=False)
            except RESP_FAILURES:
                continue
            serving = sorted(v.port for v in views if v.is_master and v.ranges and not v.failing)
            if self.cluster_busy or serving == sorted(topo.primaries):
                strikes = 0
                continue
            strikes += 1
            if strikes >= 3 and self.topology_error is None:
                self.topology_error = (
                    "the cluster changed primaries on its own at %s: %s serve slots, the checker expects %s; reads "
                    "after it are not meaningful" % (fmt_t(self, now()), [topo.node_at(p).name for p in serving],
                                                     [topo.node_at(p).name for p in sorted(topo.primaries)]))
                self.anomaly("failover not injected by the checker", self.topology_error)
                self.stopping = True

    # --- watchdogs

    async def watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            limit = now() - self.o.bound_ns
            for conn in self.connections:
                for rid, p in conn.pending.items():
                    if not p.overdue and p.start < limit:
                        p.overdue = True
                        self.unanswered += 1
                        if len(self.unanswered_examples) < 5:
                            self.unanswered_examples.append("c%d id %d %s sent at %.3f s" % (
                                conn.index, rid, p.method, (p.start - self.t0) / 1e9))
                        p.future.set_result((OVERDUE, now()))
            for d in self.daemons:
                if d.proc and not d.down and d.proc.poll() is not None and self.daemon_exit is None:
                    self.daemon_exit = d.proc.returncode
                    self.anomaly("cached exited during the run", "%s: status %s" % (d.name, self.daemon_exit))
                    self.stopping = True

    # --- setup, run, teardown

    async def probe_features(self) -> None:
        conn = DaemonConnection(-1, self.daemon, self)
        await conn.open()
        params = PROBE.params()
        params["lease"] = False
        msg, _, _ = await conn.call("get", params)
        if msg.get("error", {}).get("code") == -32602:
            self.features.lease_false = False
        elif "lease" in msg.get("result", {}):
            self.anomaly("lease granted to a get with lease:false", json.dumps(msg)[:200])
        params = PROBE.params()
        params["lease"] = "0" * 32
        msg, _, _ = await conn.call("release", params)
        if msg.get("error", {}).get("code") == -32601:
            self.features.release = False
        conn.reader_task and conn.reader_task.cancel()
        conn.close()

    async def fetch_stats(self, daemon: Daemon) -> Any:
        conn = DaemonConnection(-2, daemon, self)
        try:
            await conn.open()
            msg, _, _ = await asyncio.wait_for(conn.call("stats", {}), 5.0)
            return msg.get("result")
        except (OSError, asyncio.TimeoutError, ConnectionLost):
            return None
        finally:
            conn.close()

    def daemon_redis_url(self, index: int = 1) -> str:
        """Daemon ``index``'s ``redis`` setting (before its ACL user is added)."""
        topology = self.sentinel or self.cluster
        if topology is None:
            if self.redis.tcp_port is not None:
                return "redis://%s:%d" % (daemon_host(index), self.redis.tcp_port)
            return "unix://" + self.redis.socket
        if self.o.daemon_redis == "master":
            return "redis://%s:%d" % (LOCALHOST, topology.nodes[0].port)
        return self.o.daemon_redis or topology.url()

    async def main(self) -> None:
        if self.sentinel is not None:
            await self.sentinel.start()
        elif self.cluster is not None:
            await self.cluster.start()
            await self.cluster.spread_entries()
        else:
            self.redis.spawn()
            await self.redis.wait_ready()
        for entry in ENTRIES:
            self.write(entry, H.ABSENT, 0, 0, "initial state")
        if not self.o.no_daemon:
            several = self.o.daemons > 1
            for i in range(1, self.o.daemons + 1):
                directory = self.dir / ("daemon-%d" % i) if several else self.dir
                directory.mkdir(exist_ok=True)
                bound = None if self.bound_refused is not None else self.o.max_staleness_ns / 1e9
                self.daemons.append(Daemon(self.o.binary, directory, self.daemon_redis_url(i), i, several,
                                           aged=any(e.aged for e in ENTRIES), max_staleness=bound))
            for d in self.daemons:
                d.spawn()
            for d in self.daemons:
                await d.wait_ready()
            await self.probe_features()
            await self.verify_paths("start")
        loop = asyncio.get_running_loop()
        self.t0 = now()
        for i in range(self.o.clients if self.daemons else 0):
            # Client i talks to daemon i mod N, all its life; the last near_clients keep a near cache.
            near = 64 if i >= self.o.clients - self.o.near_clients else 0
            conn = DaemonConnection(i, self.daemons[i % len(self.daemons)], self, near=near)
            await conn.open()
            self.connections.append(conn)
        watchdog = loop.create_task(self.watchdog())
        tasks = [loop.create_task(self.actor(conn, random.Random(self.rng.random())))
                 for conn in self.connections for _ in range(self.o.depth)]
        tasks += [loop.create_task(self.near_reader(conn, random.Random(self.rng.random())))
                  for conn in self.connections if conn.near_size]
        tasks.append(loop.create_task(self.direct_writer(random.Random(self.rng.random()))))
        if self.daemon is None:
            tasks.append(loop.create_task(self.direct_reader(random.Random(self.rng.random()))))
        watchers = []
        if self.sentinel is not None:
            self.expected_master = self.sentinel.nodes[0].port
            watchers = [loop.create_task(self.watch_switches(s)) for s in self.sentinel.sentinels]
        if self.cluster is not None:
            watchers = [loop.create_task(self.watch_cluster())]
        if self.o.faults:
            tasks.append(loop.create_task(self.fault_injector(random.Random(self.rng.random()))))
        deadline = time.monotonic() + self.o.seconds
        # A run with faults goes on past --seconds until every enabled kind has been injected once (a whole
        # round), so a short run's verdict always covers every kind; capped, and the shortfall shows in "faults".
        cap = deadline + max(2 * self.o.seconds, 60.0)
        while not self.stopping:
            t = time.monotonic()
            if t >= deadline and (t >= cap or all(self.faults[k] > 0 for k in self.o.faults)):
                break
            await asyncio.sleep(0.2 if t >= deadline else min(0.2, max(0.0, deadline - t)))
        self.elapsed = (now() - self.t0) / 1e9
        # Drain: no new requests; every request sent is answered or passes the unanswered bound.
        self.stopping = True
        await asyncio.wait(tasks, timeout=self.o.bound_ns / 1e9 + 10)
        for t in tasks:
            if not t.done():
                t.cancel()
                self.anomaly("task did not finish at the end", repr(t))
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                self.anomaly("task failed", repr(t.exception()))
        # Wait for answers that came after the bound (already counted as unanswered).
        drain_deadline = time.monotonic() + 2.0
        while any(c.pending for c in self.connections) and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.05)
        for conn in self.connections:
            self.never_answered += sum(1 for p in conn.pending.values() if p.overdue)
            conn.pending.clear()
        watchdog.cancel()
        for w in watchers:
            w.cancel()
        if self.cluster is not None:
            with contextlib.suppress(*RESP_FAILURES):
                await self.cluster.view()
                self.final_distribution = self.cluster.distribution()
        await self.verify_paths("end")
        for d in self.daemons:
            self.daemon_stats[d.name] = await self.fetch_stats(d)
        for conn in self.connections:
            conn.close()

    def teardown(self) -> None:
        # Every rule removed and every stopped daemon continued first (a stopped daemon ignores SIGTERM).
        SILENT.undo_all()
        if SILENT.added:
            self.rules_left = leftover_rules(RULE_TAG)
        for d in self.daemons:
            status = d.stop()
            if self.daemon_exit is None and status not in (0, None):
                self.anomaly("cached exit status after SIGTERM", "%s: %s" % (d.name, status))
        self.redis.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        if self.cluster is not None:
            self.cluster.stop()


# ------------------------------------------------------------------------------------------------
# Report


def fmt_t(run: Run, instant: float) -> str:
    if instant == H.INF:
        return "never"
    if instant == 0:
        return "start"
    return "%.6f s" % ((instant - run.t0) / 1e9)


def last_fault(run: Run, instant: int) -> Optional[str]:
    before = [f for f in run.fault_log if f.at <= instant]
    if not before:
        return None
    f = before[-1]
    return "%s (%s) %.0f ms before the read" % (f.kind, f.detail, (instant - f.at) / 1e6)


def violation_dict(run: Run, v: H.Violation, reads: int = 1) -> dict[str, Any]:
    r = v.read
    d: dict[str, Any] = {
        "kind": v.kind, "entry": r.entry, "value": r.value, "read": r.source,
        "read_interval": [fmt_t(run, r.start), fmt_t(run, r.end)],
    }
    if v.write is not None:
        d["write"] = {"source": v.write.source, "interval": [fmt_t(run, v.write.invoke), fmt_t(run, v.write.respond)]}
    if v.superseded_by is not None:
        w2 = v.superseded_by
        d["superseded_by"] = {"source": w2.source, "value": w2.value,
                              "interval": [fmt_t(run, w2.invoke), fmt_t(run, w2.respond)], "lag_ms": w2.lag / 1e6}
        d["stale_for_ms"] = round(stale_ms(v), 3)
    aging = run.history.aging.get(r.entry)
    if v.kind == "expired" and v.write is not None and aging is not None:
        d["after_latest_expiry_ms"] = round((r.start - (v.write.respond + aging.total)) / 1e6, 3)
    lf = last_fault(run, r.start)
    if lf:
        d["last_fault"] = lf
    if reads > 1:
        d["reads_in_episode"] = reads
    return d


def stale_ms(v: H.Violation) -> float:
    """How long after the superseding write became visible (respond + lag) the stale read began."""
    w2 = v.superseded_by
    return (v.read.start - (w2.respond + w2.lag)) / 1e6 if w2 is not None else 0.0


@dataclass
class Episode:
    """Violations that are one fault of the daemon: the same value read from one entry after the same write."""

    first: H.Violation
    reads: int = 0
    max_stale_ms: float = 0.0
    last_fault_kind: str = "none"


def episodes(run: Run, violations: list[H.Violation]) -> list[Episode]:
    by_key: dict[tuple[str, Optional[str], int], Episode] = {}
    for v in violations:
        key = (v.read.entry, v.read.value, id(v.superseded_by) if v.superseded_by is not None else 0)
        ep = by_key.get(key)
        if ep is None:
            before = [f for f in run.fault_log if f.at <= v.read.start]
            ep = by_key[key] = Episode(v, last_fault_kind=before[-1].kind if before else "none")
        ep.reads += 1
        ep.max_stale_ms = max(ep.max_stale_ms, stale_ms(v))
    return sorted(by_key.values(), key=lambda e: e.first.read.start)


def build_report(run: Run, result: H.Result, cross: Optional[list[H.Violation]] = None) -> dict[str, Any]:
    ops_total = sum(run.ops.values())
    elapsed = run.elapsed
    eps = episodes(run, result.violations)
    by_key = Counter(v.read.entry.split("#")[0].lstrip("0") for v in result.violations)
    writes_by_source: Counter[str] = Counter()
    for w in run.history.writes:
        s = w.source
        writes_by_source["direct" if s.startswith("direct") else "restart" if s.startswith("restart")
                         else "initial" if s.startswith("initial") else "client"] += 1
    local = None
    topology = None
    first = run.daemon_stats.get(run.daemons[0].name) if run.daemons else None
    if isinstance(first, dict):
        local = first.get("store", {}).get("localCache")
        topology = first.get("store", {}).get("topology")
    bound_missing = run.bound_refused is not None and run.o.max_staleness_ns > 0
    passed = (not result.violations and run.unanswered == 0 and run.never_answered == 0 and run.daemon_exit is None
              and not result.failover_unexplained and run.topology_error is None and run.path_error is None
              and not run.rules_left and not bound_missing)
    return {
        "passed": passed,
        "seconds": round(elapsed, 3),
        "clients": run.o.clients, "depth": run.o.depth, "seed": run.o.seed,
        "topology": run.o.topology,
        "daemon": not run.o.no_daemon,
        "daemon_redis": run.daemon_redis_url() if run.o.topology != "single" and not run.o.no_daemon else None,
        "faults_enabled": run.o.faults, "binary": run.o.binary,
        "direct_lag_ms": run.o.lag_ns / 1e6, "unanswered_bound_ms": run.o.bound_ns / 1e6,
        **bound_report(run, result),
        "features": {"release": run.features.release, "get_lease_false": run.features.lease_false},
        "operations": ops_total,
        "operations_per_second": round(ops_total / elapsed) if elapsed > 0 else 0,
        "operations_by_kind": dict(sorted(run.ops.items())),
        "faults": {k: run.faults.get(k, 0) for k in run.o.faults},
        "history": {"entries": len(ENTRIES), "reads_checked": result.reads_checked,
                    "writes": result.writes_checked, "fills": len(run.history.fills),
                    "refused_writes": len(run.history.refused),
                    "writes_by_source": dict(writes_by_source)},
        "violations": len(result.violations),
        "violations_by_kind": dict(Counter(v.kind for v in result.violations)),
        "violations_by_key": dict(by_key),
        "violation_episodes": len(eps),
        "violation_episodes_by_last_fault": dict(Counter(e.last_fault_kind for e in eps)),
        "max_stale_ms": round(max((e.max_stale_ms for e in eps), default=0.0), 3),
        "violation_examples": [violation_dict(run, e.first, e.reads) for e in eps[: run.o.examples]],
        "unanswered": run.unanswered,
        "never_answered": run.never_answered,
        "unanswered_examples": run.unanswered_examples,
        "counters": dict(sorted(run.counters.items())),
        "notes": {k: n for k, n in result.notes.items() if n},
        "note_examples": result.note_examples,
        "unwritten_but_read": unwritten_but_read(run),
        "anomalies": dict(run.anomalies),
        "anomaly_examples": run.anomaly_examples,
        "daemon_exit_during_run": run.daemon_exit,
        "daemon_local_cache": local,
        "daemon_topology": topology,
        "topology_error": run.topology_error,
        **fleet_report(run, result, cross),
        **failover_report(run, result),
        **cluster_report(run),
    }


def read_layer(source: str) -> str:
    """Where a read was answered from: "near" (a client's near cache), "daemon" (the daemon's local copy: a
    hit), "fetched" (the daemon asked Redis: a miss, a fill, a lease, a wait)."""
    if source.endswith("near hit"):
        return "near"
    return "daemon" if " -> hit" in source else "fetched"


def bound_report(run: Run, result: H.Result) -> dict[str, Any]:
    """The staleness bound and the silent faults: the bound configured and the lag it gives, the daemons'
    TCP paths and their check, the netfilter rules (added, removed, left), and the worst staleness measured
    (history.py, *Staleness measured*) by the last fault before the read, and by layer."""
    ats = [f.at for f in run.fault_log]
    worst: dict[str, float] = {k: 0.0 for k in run.o.faults}
    by_layer: dict[str, dict[str, float]] = {}
    counts: Counter[str] = Counter()
    worst_of: dict[str, H.Staleness] = {}
    for x in result.staleness:
        i = bisect.bisect_right(ats, x.read.start)
        kind = run.fault_log[i - 1].kind if i else "none"
        ms = x.ns / 1e6
        counts[kind] += 1
        layer = read_layer(x.read.source)
        layers = by_layer.setdefault(kind, {})
        layers[layer] = round(max(layers.get(layer, 0.0), ms), 3)
        if kind not in worst_of or x.ns > worst_of[kind].ns:
            worst_of[kind] = x
        worst[kind] = max(worst.get(kind, 0.0), ms)

    def example(x: H.Staleness) -> str:
        r, w2 = x.read, x.overwrite
        return "%s %s read by %s in [%s, %s], replaced by %s of %s acknowledged at %s (%.1f ms before the read)%s" % (
            r.entry, json.dumps(r.value), r.source, fmt_t(run, r.start), fmt_t(run, r.end), w2.source,
            json.dumps(w2.value), fmt_t(run, w2.respond), x.ns / 1e6,
            "; last fault: " + (last_fault(run, r.start) or "none"))

    tcp = run.redis.tcp_port is not None and bool(run.daemons)
    return {
        "max_staleness_s": run.o.max_staleness_ns / 1e9,
        "max_staleness_configured": bool(run.daemons) and run.bound_refused is None,
        "max_staleness_refused": run.bound_refused,
        "staleness_slack_ms": run.o.staleness_slack_ns / 1e6,
        "lag_without_bound_ms": run.o.unbounded_lag_ns / 1e6,
        "cross_lag_ms": run.o.cross_lag_ns / 1e6,
        "redis_paths": {d.name: "%s:%d" % run.daemon_path(d) for d in run.daemons} if tcp else None,
        "redis_paths_checked": run.path_checks,
        "redis_path_error": run.path_error,
        "silent_faults_unavailable": run.silent_unavailable,
        "faults_left_out": run.faults_left_out,
        "netfilter": {"tag": RULE_TAG, "rules_added": SILENT.added, "rules_removed": SILENT.removed,
                      "rules_of_dead_checkers_swept": run.rules_swept, "rules_left_after_teardown": run.rules_left,
                      "remove_failures": SILENT.failures[:5]},
        "daemon_stalls": {d.name: d.stalls for d in run.daemons},
        "worst_staleness_ms_by_fault": {k: round(v, 3) for k, v in worst.items()},
        "worst_staleness_ms_by_fault_and_layer": by_layer,
        "stale_reads_by_fault": dict(counts),
        "worst_staleness_examples": {k: example(x) for k, x in worst_of.items()},
        "violations_by_layer": dict(Counter(read_layer(v.read.source) for v in result.violations)),
    }


def fleet_report(run: Run, result: H.Result, cross: Optional[list[H.Violation]]) -> dict[str, Any]:
    """Per daemon and summed over them: operations, handler calls, stale answers, ``stats.fleet`` (over every
    life of a daemon that ``kill-daemon`` restarted); the aged key's checks; reads that only the cross-daemon
    lag excused (``cross``: the violations a check with no cross lag adds)."""
    fleet: Counter[str] = Counter()
    fleet_by_daemon: dict[str, dict[str, Any]] = {}
    local_by_daemon: dict[str, Any] = {}
    handler_stats: Counter[str] = Counter()
    for d in run.daemons:
        acc: Counter[str] = Counter(run.fleet_before_kills.get(d.name, Counter()))
        stats = run.daemon_stats.get(d.name)
        if isinstance(stats, dict):
            for k, v in (stats.get("fleet") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    acc[k] += v
            for key, h in (stats.get("handlers") or {}).items():
                if isinstance(h, dict) and isinstance(h.get("calls"), (int, float)):
                    acc["handler calls " + key] += h["calls"]
            local_by_daemon[d.name] = (stats.get("store") or {}).get("localCache")
        for k, v in acc.items():
            if k.startswith("handler calls "):
                handler_stats[k[len("handler calls "):]] += v
            else:
                fleet[k] += v
        fleet_by_daemon[d.name] = {k: v for k, v in sorted(acc.items()) if not k.startswith("handler calls ")}
    produced: dict[str, list[str]] = {d.name: d.handler_values() for d in run.daemons}
    seen = {r.value for r in run.history.reads if r.value is not None and r.value.startswith("F|")}
    by_key: Counter[str] = Counter()
    for values in produced.values():
        for v in values:
            by_key[v.split("|")[1].split("#")[0].lstrip("0")] += 1
    all_produced = [v for vs in produced.values() for v in vs]
    aging_notes = {k: n for k, n in result.notes.items() if "aged" in k or "stale:true" in k}
    aging_examples = {k: ["%s %s read by %s in [%s, %s], written by %s in [%s, %s]%s" % (
        r.entry, json.dumps(r.value), r.source, fmt_t(run, r.start), fmt_t(run, r.end), w.source, fmt_t(run, w.invoke),
        fmt_t(run, w.respond), "; last fault: " + (last_fault(run, r.start) or "none")) for r, w in pairs]
        for k, pairs in result.aging_examples.items()}
    report: dict[str, Any] = {
        "daemons": len(run.daemons),
        "operations_by_daemon": {d.name: run.ops_by_daemon.get(d.name, 0) for d in run.daemons},
        "daemon_kills": {d.name: d.kills for d in run.daemons},
        "handler_calls": {
            "total": len(all_produced),
            "by_daemon": {name: len(vs) for name, vs in produced.items()},
            "by_key": dict(sorted(by_key.items())),
            "never_answered_or_read": sum(1 for v in all_produced if v not in seen),
            "daemon_stats_by_key": dict(sorted(handler_stats.items())),
        },
        "stale_answers": {"total": sum(run.stale_answers.values()), "by_key": dict(run.stale_answers)},
        "fleet": dict(sorted(fleet.items())),
        "fleet_by_daemon": fleet_by_daemon,
        "local_cache_by_daemon": local_by_daemon,
        "aging": {
            "entries": sorted(run.history.aging),
            "ttl_s": AGED_TTL, "stale_ttl_s": AGED_STALE_TTL, "grace_s": AGED_GRACE, "early_refresh_beta": AGED_BETA,
            "slack_ms": run.o.age_slack_ns / 1e6,
            "latest_answer_after_expiry_within_slack_ms": round(result.latest_expiry_ms, 3),
            "earliest_stale_answer_before_ttl_ms": round(result.earliest_stale_ms, 3),
            "stale_early_slack_ms": run.history.stale_early_slack / 1e6,
            "notes": aging_notes,
            "note_examples": aging_examples,
        } if run.history.aging else None,
    }
    if cross is not None:
        report["cross_daemon"] = {
            "lag_ms": run.history.cross_lag / 1e6,
            "reads_excused_by_the_lag": len(cross),
            "max_ms_after_the_write": round(max((stale_ms(v) for v in cross), default=0.0), 3),
            "by_kind": dict(Counter(v.kind for v in cross)),
        }
    return report


def unwritten_but_read(run: Run) -> list[str]:
    """Writes answered -32000 (nothing written) whose value was read later: when, and the fault before."""
    claimed = {w.value: w for w in run.history.writes if w.claimed_unwritten and w.value is not None}
    seen: dict[str, H.Read] = {}
    for r in run.history.reads:
        if r.value in claimed and not r.uncached and (r.value not in seen or r.end < seen[r.value].end):
            seen[r.value] = r
    out = []
    for value, r in list(seen.items())[: run.o.examples]:
        w = claimed[value]
        out.append("%s %r by %s sent at %s, read by %s in [%s, %s]; last fault before the write: %s" % (
            w.entry, value, w.source, fmt_t(run, w.invoke), r.source, fmt_t(run, r.start), fmt_t(run, r.end),
            (last_fault(run, w.invoke) or "none").replace("before the read", "before")))
    return out


def cluster_report(run: Run) -> dict[str, Any]:
    """The cluster's nodes, where the entries lived, and the reshards (empty outside the cluster topology)."""
    topo = run.cluster
    if topo is None:
        return {}

    def ms(a: Optional[int], b: int) -> Optional[float]:
        return round((a - b) / 1e6, 1) if a is not None else None

    return {"cluster": {
        "nodes": {n.name: n.port for n in topo.nodes},
        "node_timeout_ms": run.o.cluster_node_timeout_ms,
        "filler_keys": run.o.cluster_keys,
        "require_full_coverage": run.o.cluster_full_coverage,
        "entries_per_primary_at_start": {k: len(v) for k, v in topo.initial_distribution.items()},
        "entries_per_primary_at_end": {k: len(v) for k, v in run.final_distribution.items()},
        "direct_redirections": {k.split()[1]: n for k, n in run.counters.items() if k.endswith("redirections")},
        "reshards": {
            "injected": len(run.reshards),
            "moves": ["%s -> %s" % (r.source, r.target) for r in run.reshards],
            "slots": [r.slots for r in run.reshards],
            "slots_with_entries": [r.entry_slots for r in run.reshards],
            "entries_moved": [len(r.entries) for r in run.reshards],
            "keys": [r.keys for r in run.reshards],
            "duration_ms": [ms(r.ended, r.started) for r in run.reshards],
            "settled_ms": [ms(r.settled, r.started) for r in run.reshards],
        },
    }}


def failover_report(run: Run, result: H.Result) -> dict[str, Any]:
    """Failovers, their timings, and the writes they lost (empty in the single topology)."""
    if run.o.topology == "single":
        return {}

    def ms(a: Optional[int], b: int) -> Optional[float]:
        return round((a - b) / 1e6, 1) if a is not None else None

    def write_text(w: H.Write) -> str:
        return "%s by %s in [%s, %s]" % (json.dumps(w.value), w.source, fmt_t(run, w.invoke), fmt_t(run, w.respond))

    examples = []
    for x in result.lost_writes[: run.o.examples]:
        f = run.history.failovers[x.failover]
        examples.append({
            "failover": x.failover + 1, "entry": x.entry, "survived": x.survived,
            "survived_write": write_text(x.survived_write) if x.survived_write is not None else None,
            "lost": [write_text(w) + ", acknowledged %.1f ms before the kill" % ((f.killed - w.respond) / 1e6)
                     for w in x.lost[-3:]],
        })
    return {
        "failovers": {
            "injected": len(run.failovers),
            "rejoin": run.o.rejoin,
            "switch_messages": len(run.switches),
            "kill_to_promotion_ms": [ms(f.promoted, f.killed) for f in run.failovers],
            "kill_to_first_answer_ms": [ms(f.first_answer, f.killed) for f in run.failovers],
            "kill_to_rejoin_ms": [ms(f.rejoined, f.killed) for f in run.failovers],
            "replica_partitioned_ms": [round(f.cut_ms, 1) if f.cut_ms else None for f in run.failovers],
            "inexact_snapshots": sum(1 for f in run.failovers if not f.exact),
            **({"shards": ["%s -> %s (%d entries)" % (f.old, f.new, f.entries) for f in run.failovers],
                "kill_to_cluster_ok_ms": [ms(f.cluster_ok, f.killed) for f in run.failovers]}
               if run.o.topology == "cluster" else {}),
        },
        "lost_writes": sum(len(x.lost) for x in result.lost_writes),
        "lost_write_entries": len(result.lost_writes),
        "lost_write_examples": examples,
        "loss_unknown_entries": sum(result.loss_unknown),
        "excused_reads": result.excused_reads,
        "failover_unexplained": [
            {"failover": u.failover + 1, "entry": u.entry, "value": u.value, "kind": u.kind}
            for u in result.failover_unexplained],
    }


def print_text(rep: dict[str, Any]) -> None:
    p = print
    p("cached coherence check: %.1f s, %d clients x %d, seed %d, topology %s, faults: %s" % (
        rep["seconds"], rep["clients"], rep["depth"], rep["seed"], rep["topology"],
        ",".join(rep["faults_enabled"]) or "none"))
    if rep["daemon_redis"]:
        p("daemon redis: " + rep["daemon_redis"])
    if not rep["daemon"]:
        p("no daemon (--no-daemon): the direct writer, a direct reader and the faults only")
    p("features: release %s, get lease:false %s" % (
        "yes" if rep["features"]["release"] else "no (-32601)",
        "yes" if rep["features"]["get_lease_false"] else "no (-32602)"))
    p("operations: %d (%d/s)" % (rep["operations"], rep["operations_per_second"]))
    for k, n in rep["operations_by_kind"].items():
        p("  %-40s %d" % (k, n))
    p("faults injected: " + (", ".join("%s %d" % kv for kv in rep["faults"].items()) or "none"))
    h = rep["history"]
    p("history: %d entries, %d writes (%s), %d handler fills, %d refused writes, %d reads checked" % (
        h["entries"], h["writes"], ", ".join("%s %d" % kv for kv in h["writes_by_source"].items()),
        h["fills"], h["refused_writes"], h["reads_checked"]))
    if rep["max_staleness_s"]:
        p("staleness bound: max_staleness %g s (%s); direct writes, restarts and other daemons' writes may stay "
          "invisible for %.0f ms (the bound + %.0f ms slack), writes through the reading daemon for none" % (
              rep["max_staleness_s"], "no daemon" if not rep["daemon"] else "configured"
              if rep["max_staleness_configured"] else
              "REFUSED by the daemon, run without it: %s" % rep["max_staleness_refused"],
              rep["direct_lag_ms"], rep["staleness_slack_ms"]))
    else:
        p("  no staleness bound (max_staleness 0): writes made directly to Redis and restarts may stay invisible for"
          " %.0f ms: Redis's client-side caching delivers their invalidations asynchronously" % rep["direct_lag_ms"])
    if rep["redis_paths"]:
        p("daemons' paths to Redis (TCP; the checker's own connections on the Unix socket): %s; checked: %s%s" % (
            ", ".join("%s %s" % kv for kv in rep["redis_paths"].items()), json.dumps(rep["redis_paths_checked"]),
            "; PATH ERROR: " + rep["redis_path_error"] if rep["redis_path_error"] else ""))
    if rep["silent_faults_unavailable"]:
        p("silent network faults left out (%s): %s" % (",".join(rep["faults_left_out"]) or "none asked",
                                                      rep["silent_faults_unavailable"]))
    nf = rep["netfilter"]
    if nf["rules_added"] or nf["rules_of_dead_checkers_swept"] or nf["rules_left_after_teardown"]:
        p("netfilter rules (tag %s): %d added, %d removed, %d left after teardown%s%s" % (
            nf["tag"], nf["rules_added"], nf["rules_removed"], len(nf["rules_left_after_teardown"]),
            "; %d of dead checkers swept before the run" % nf["rules_of_dead_checkers_swept"]
            if nf["rules_of_dead_checkers_swept"] else "",
            "".join("\n  LEFT: " + r for r in nf["rules_left_after_teardown"])))
    if any(rep["daemon_stalls"].values()):
        p("daemons stopped (stall-daemon): " + json.dumps(rep["daemon_stalls"]))
    p("worst staleness (ms by which a replacing write's acknowledgement preceded a read of the old value, within "
      "the lag or not), by the last fault before the read: " + (", ".join(
          "%s %.1f%s" % (k, v, " (%s; %d reads)" % (", ".join(
              "%s %.1f" % lv for lv in sorted(rep["worst_staleness_ms_by_fault_and_layer"].get(k, {}).items())),
              rep["stale_reads_by_fault"].get(k, 0)) if rep["stale_reads_by_fault"].get(k) else "")
          for k, v in rep["worst_staleness_ms_by_fault"].items()) or "no faults"))
    for k, ex in rep["worst_staleness_examples"].items():
        p("  worst after %s: %s" % (k, ex))
    if rep.get("daemons", 0) > 1:
        for name, local in rep["local_cache_by_daemon"].items():
            p("daemon %s local cache: %s" % (name, json.dumps(local)))
    elif rep["daemon_local_cache"]:
        p("daemon local cache: " + json.dumps(rep["daemon_local_cache"]))
    if rep.get("daemons"):
        hc = rep["handler_calls"]
        p("daemons: %d; operations by daemon: %s; killed (kill-daemon): %s" % (
            rep["daemons"], json.dumps(rep["operations_by_daemon"]), json.dumps(rep["daemon_kills"])))
        p("handler calls: %d (by daemon %s, by key %s; %d values never answered nor read; the daemons' stats count %s)" % (
            hc["total"], json.dumps(hc["by_daemon"]), json.dumps(hc["by_key"]), hc["never_answered_or_read"],
            json.dumps(hc["daemon_stats_by_key"])))
        p("stale answers: %d %s" % (rep["stale_answers"]["total"], json.dumps(rep["stale_answers"]["by_key"])))
        p("fleet stats (summed over daemons and their lives): " + json.dumps(rep["fleet"]))
        if rep["daemons"] > 1:
            for name, f in rep["fleet_by_daemon"].items():
                p("  %s: %s" % (name, json.dumps(f)))
        if rep.get("aging"):
            a = rep["aging"]
            p("aged key: %d entries (ttl %g s, stale_ttl %g s, grace %g s, beta %g); latest answer after its value's "
              "latest possible expiry: %.1f ms (slack %.0f ms); earliest stale:true before its ttl: %.1f ms (noted beyond "
              "%.0f ms); %s" % (
                  len(a["entries"]), a["ttl_s"], a["stale_ttl_s"], a["grace_s"], a["early_refresh_beta"],
                  a["latest_answer_after_expiry_within_slack_ms"], a["slack_ms"], a["earliest_stale_answer_before_ttl_ms"],
                  a["stale_early_slack_ms"], json.dumps(a["notes"]) or "{}"))
            for k, exs in a["note_examples"].items():
                for ex in exs:
                    p("  %s: %s" % (k, ex))
        if "cross_daemon" in rep:
            c = rep["cross_daemon"]
            p("reads through one daemon of a value another daemon's write had replaced, within the %.0f ms cross-daemon"
              " lag (not violations): %d, at most %.1f ms after the write %s" % (
                  c["lag_ms"], c["reads_excused_by_the_lag"], c["max_ms_after_the_write"], json.dumps(c["by_kind"])))
    for k, n in rep["counters"].items():
        p("  %s: %d" % (k, n))
    if "failovers" in rep:
        f = rep["failovers"]

        def series(xs: list[Optional[float]]) -> str:
            return ", ".join("-" if x is None else "%.0f" % x for x in xs) or "none"

        if rep["topology"] == "cluster":
            p("failovers: %d (%d read from the replica after its promotion: inexact); the killed primary restarts "
              "from its folder and rejoins as a replica" % (f["injected"], f["inexact_snapshots"]))
            p("  shards: " + (", ".join(f["shards"]) or "none"))
        else:
            p("failovers: %d (%d read from the replica after its promotion: inexact); old master rejoins by %s;"
              " +switch-master messages seen: %d" % (
                  f["injected"], f["inexact_snapshots"], f["rejoin"], f["switch_messages"]))
        p("  kill to promotion (ms): " + series(f["kill_to_promotion_ms"]))
        if "kill_to_cluster_ok_ms" in f:
            p("  kill to cluster_state:ok on every live node (ms): " + series(f["kill_to_cluster_ok_ms"]))
        p("  kill to first answer served by the new master (ms): " + series(f["kill_to_first_answer_ms"]))
        p("  kill to old %s rejoined as a replica (ms): " % ("primary" if "shards" in f else "master")
          + series(f["kill_to_rejoin_ms"]))
        p("  replica partitioned before the kill (ms): " + series(f["replica_partitioned_ms"]))
        if rep["daemon_topology"]:
            p("  daemon topology: " + json.dumps(rep["daemon_topology"]))
        p("lost writes (acknowledged by the old master, never on the promoted replica; not violations): "
          "%d in %d entries%s" % (rep["lost_writes"], rep["lost_write_entries"],
                                  ", %d entries not judged" % rep["loss_unknown_entries"]
                                  if rep["loss_unknown_entries"] else ""))
        for x in rep["lost_write_examples"]:
            p("  failover %d, %s: survived %s (%s)" % (x["failover"], x["entry"], json.dumps(x["survived"]),
                                                      x["survived_write"]))
            for lost in x["lost"]:
                p("    lost " + lost)
        if rep["excused_reads"]:
            p("  reads excused around inexact snapshots: %d" % rep["excused_reads"])
        for u in rep["failover_unexplained"]:
            p("FAILOVER UNEXPLAINED: failover %d, %s holds %s (%s)" % (
                u["failover"], u["entry"], json.dumps(u["value"]), u["kind"]))
    if "cluster" in rep:
        c = rep["cluster"]
        r = c["reshards"]
        p("cluster: nodes %s; entries per primary at start %s, at end %s; direct writer redirections %s" % (
            json.dumps(c["nodes"]), json.dumps(c["entries_per_primary_at_start"]),
            json.dumps(c["entries_per_primary_at_end"]), json.dumps(c["direct_redirections"])))
        p("reshards: %d" % r["injected"])
        for i in range(r["injected"]):
            p("  %s: %d slots (%d with checker entries, %d entries), %d keys, %s ms, every node agreed after %s ms" % (
                r["moves"][i], r["slots"][i], r["slots_with_entries"][i], r["entries_moved"][i], r["keys"][i],
                r["duration_ms"][i], r["settled_ms"][i]))
    if rep["topology_error"]:
        p("TOPOLOGY ERROR: " + rep["topology_error"])
    p("violations: %d %s" % (rep["violations"], json.dumps(rep["violations_by_kind"]) if rep["violations"] else ""))
    if rep["violations"]:
        p("  by key: " + json.dumps(rep["violations_by_key"]) + "; by layer: " + json.dumps(rep["violations_by_layer"]))
        p("  %d episodes (the same value read from one entry after the same write), by the last fault before"
          " them: %s; longest staleness beyond the lag: %.1f ms" % (
              rep["violation_episodes"], json.dumps(rep["violation_episodes_by_last_fault"]), rep["max_stale_ms"]))
        p("  first read of the first %d episodes:" % len(rep["violation_examples"]))
    for i, v in enumerate(rep["violation_examples"], 1):
        p("  %d. %s read of %s: value %s, read by %s in [%s, %s]%s" % (
            i, v["kind"], v["entry"], json.dumps(v["value"]), v["read"], *v["read_interval"],
            " (%d reads in this episode)" % v["reads_in_episode"] if v.get("reads_in_episode") else ""))
        if "write" in v:
            p("     written by %s in [%s, %s]" % (v["write"]["source"], *v["write"]["interval"]))
        if "superseded_by" in v:
            s = v["superseded_by"]
            p("     superseded by %s of %s in [%s, %s] (+%.0f ms lag): stale for %.3f ms" % (
                s["source"], json.dumps(s["value"]), *s["interval"], s["lag_ms"], v["stale_for_ms"]))
        if "after_latest_expiry_ms" in v:
            p("     answered %.3f ms after the value's latest possible expiry in Redis" % v["after_latest_expiry_ms"])
        if "last_fault" in v:
            p("     last fault: " + v["last_fault"])
    p("unanswered: %d (within %.0f ms), never answered: %d" % (
        rep["unanswered"], rep["unanswered_bound_ms"], rep["never_answered"]))
    for ex in rep["unanswered_examples"]:
        p("  " + ex)
    for k, n in rep["notes"].items():
        p("note: %s: %d %s" % (k, n, "; ".join(rep["note_examples"].get(k, []))))
    for x in rep["unwritten_but_read"]:
        p("  " + x)
    for k, n in rep["anomalies"].items():
        p("anomaly: %s: %d  e.g. %s" % (k, n, " | ".join(rep["anomaly_examples"].get(k, []))))
    p("result: " + ("PASS" if rep["passed"] else "FAIL"))


# ------------------------------------------------------------------------------------------------
# Command line


#: --dump-history
DUMP_HISTORY: Optional[str] = None
#: --discard
DISCARD = False


def daemon_refuses_max_staleness(binary: str) -> Optional[str]:
    """The daemon's answer when its configuration check refuses ``[local_cache] max_staleness`` (a daemon
    from before the bound), else None."""
    with tempfile.TemporaryDirectory(prefix="cached-bound-") as d:
        config = Path(d) / "cached.toml"
        config.write_text('socket = "%s/cached.sock"\nredis = "unix://%s/redis.sock"\n\n[local_cache]\n'
                          'max_staleness = 0.5\n' % (d, d))
        try:
            done = subprocess.run([binary, "--check-config", "--config", str(config)], capture_output=True,
                                  text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
    out = (done.stdout + done.stderr).strip()
    return out.splitlines()[0][-300:] if done.returncode != 0 and "max_staleness" in out else None


def default_binary() -> str:
    return os.environ.get("CACHED_BIN") or str(REPO / ".build" / "debug" / "cached")


def find_redis_server() -> Optional[str]:
    found = shutil.which("redis-server")
    return found or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def parse_args(argv: Optional[list[str]] = None) -> tuple[Options, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, required=True, help="how long the workload runs")
    ap.add_argument("--clients", type=int, default=8, help="client connections to cached (default 8)")
    ap.add_argument("--depth", type=int, default=2, help="concurrent requests per connection (default 2)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--faults", default="all", help="all, none, or a comma list of %s (also "
                    "the silent %s (network kinds: with --topology single over --redis-path tcp, on flows with sentinel "
                    "and cluster); with --topology sentinel, %s; with --topology cluster, %s; all includes them there; "
                    "kill-daemon with --daemons 2 or more)" % (
                        ",".join(FAULT_KINDS), ",".join(SILENT_FAULT_KINDS), ",".join(SENTINEL_FAULT_KINDS),
                        ",".join(CLUSTER_FAULT_KINDS)))
    ap.add_argument("--topology", choices=("single", "sentinel", "cluster"), default="single",
                    help="single: one redis-server on a Unix socket (default); sentinel: a master, a replica and "
                    "three Sentinels on 127.0.0.1, cached configured with a redis-sentinel:// URL; cluster: a Redis "
                    "Cluster of three primaries with a replica each, cached configured with a redis-cluster:// URL")
    ap.add_argument("--failover-interval", type=float, default=10.0,
                    help="least seconds between the kills of two failovers (default 10)")
    ap.add_argument("--rejoin", choices=("sentinel", "replicaof"), default="sentinel",
                    help="sentinel topology: how the old master comes back after a failover: restarted as a master "
                    "(empty) for the Sentinels to make it a replica, about 10 s later (default), or restarted as a "
                    "replica of the new master")
    ap.add_argument("--daemon-redis", default=None,
                    help="sentinel or cluster topology: the daemon's redis URL instead of the topology's ('master': "
                    "redis://127.0.0.1:<first data node>, to try the harness with a daemon that cannot follow it)")
    ap.add_argument("--no-daemon", action="store_true",
                    help="no cached: the topology, the direct writer, a direct reader (checked like the daemon's "
                    "answers) and the faults only, to try the harness itself")
    ap.add_argument("--redis-cli", default=None, help="cluster topology: the redis-cli binary (default: next to "
                    "redis-server, else on PATH)")
    ap.add_argument("--cluster-node-timeout", type=int, default=2000,
                    help="cluster topology: cluster-node-timeout in ms (default 2000)")
    ap.add_argument("--cluster-full-coverage", choices=("yes", "no"), default="yes",
                    help="cluster topology: cluster-require-full-coverage (default yes, as Redis: while a shard has "
                    "no primary every node answers CLUSTERDOWN; no: only that shard's slots)")
    ap.add_argument("--cluster-keys", type=int, default=20000,
                    help="cluster topology: filler keys written over all slots before the load, so that reshards move "
                    "data (default 20000; never read)")
    ap.add_argument("--daemons", type=int, default=1,
                    help="cached daemons sharing the Redis topology, each with its own socket, configuration and "
                    "handler workers; client i talks to daemon i mod N; kill-data, kill-listener and kill-daemon hit "
                    "one at random (default 1; with 2 or more, --faults all includes kill-daemon)")
    ap.add_argument("--aged-entries", type=int, default=None,
                    help="entries of the aged key Aged (ttl %g s, stale_ttl %g s, grace %g s, early_refresh_beta %g, "
                    "a handler) in the workload, at most %d (default 4 with --topology single, else 0)" % (
                        AGED_TTL, AGED_STALE_TTL, AGED_GRACE, AGED_BETA, len(AGED_ENTRIES)))
    ap.add_argument("--max-staleness", type=float, default=0.5,
                    help="the daemons' [local_cache] max_staleness in seconds (default 0.5; 0: no bound, written as "
                    "max_staleness = 0, or left out for a daemon that does not know the setting): direct writes, "
                    "restarts and other daemons' writes may then stay invisible for max_staleness plus "
                    "--staleness-slack-ms")
    ap.add_argument("--strict-lag-ms", type=float, default=None,
                    help="check direct and other daemons' writes with this lag instead of the bound's (for runs whose "
                    "faults all announce themselves, where the invalidations must arrive within ~100 ms, not just "
                    "within max_staleness)")
    ap.add_argument("--staleness-slack-ms", type=float, default=50.0,
                    help="added to --max-staleness for the lag (default 50: the instants are taken around awaits, "
                    "the checker's and the daemon's; see history.py, Staleness bound)")
    ap.add_argument("--direct-lag-ms", type=float, default=100.0,
                    help="without a bound (--max-staleness 0): time a direct write to Redis (or a restart) may stay "
                    "invisible (default 100)")
    ap.add_argument("--cross-lag-ms", type=float, default=None,
                    help="without a bound (--max-staleness 0): time a write through one daemon may stay invisible to "
                    "reads through another (its invalidation is asynchronous; default: --direct-lag-ms)")
    ap.add_argument("--redis-path", choices=("tcp", "unix"), default="tcp",
                    help="single topology: how the daemons reach Redis: tcp (default; daemon i connects to "
                    "127.0.0.<i>:<port>, so that a netfilter rule cuts one daemon's path only) or unix (the Unix "
                    "socket; no network fault kinds). The checker's own connections always use the Unix socket")
    ap.add_argument("--blackhole-one", choices=("random", "listener", "data"), default="random",
                    help="the flow blackhole-one cuts: a data connection or the invalidation listener at random "
                    "(default), always the listener, or always a data connection")
    ap.add_argument("--loss-probability", type=float, default=None,
                    help="loss: the share of packets dropped (default: 0.1 to 0.5 at random each time)")
    ap.add_argument("--age-slack-ms", type=float, default=100.0,
                    help="how late after its latest possible expiry in Redis an aged value may still be answered "
                    "(default 100)")
    ap.add_argument("--unanswered-ms", type=float, default=15000.0,
                    help="a request not answered within this is UNANSWERED (default 15000)")
    ap.add_argument("--bin", default=default_binary(),
                    help="the cached binary (default $CACHED_BIN or .build/debug/cached)")
    ap.add_argument("--redis-server", default=find_redis_server(), help="the redis-server binary")
    ap.add_argument("--examples", type=int, default=5, help="violations printed in detail (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config)")
    ap.add_argument("--discard", action="store_true",
                    help="remove the temp dir even when the run fails (a run expected to find violations)")
    ap.add_argument("--dump-history", default=None, metavar="PATH",
                    help="write the history, the run's start instant and its faults to PATH (pickle), to study a run")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ap.add_argument("--near-clients", type=int, default=2,
                    help="client connections (the last ones) that keep a near cache through track (default 2)")
    a = ap.parse_args(argv)
    if a.daemons < 1:
        ap.error("--daemons must be at least 1")
    known = FAULT_KINDS + {"sentinel": SENTINEL_FAULT_KINDS, "cluster": CLUSTER_FAULT_KINDS}.get(a.topology, ())
    known += () if a.no_daemon else DAEMON_FAULT_KINDS
    silent_known: tuple[str, ...] = ()
    if not a.no_daemon:
        silent_known = SILENT_FAULT_KINDS if a.redis_path == "tcp" or a.topology != "single" else STALL_FAULT_KINDS
    known += silent_known
    if a.faults == "all":
        faults = [f for f in known if f not in DAEMON_FAULT_KINDS or a.daemons > 1]
    elif a.faults in ("none", ""):
        faults = []
    else:
        faults = [f.strip() for f in a.faults.split(",") if f.strip()]
        bad = [f for f in faults if f not in known]
        if bad:
            ap.error("unknown fault kind(s): %s (known: %s%s%s%s%s)" % (
                ",".join(bad), ",".join(known),
                "; failover needs --topology sentinel or cluster" if "failover" in bad else "",
                "; reshard needs --topology cluster" if "reshard" in bad else "",
                "; kill-daemon needs a daemon" if "kill-daemon" in bad else "",
                "; %s need a daemon (and with --topology single, --redis-path tcp)" % ",".join(
                    f for f in bad if f in SILENT_FAULT_KINDS) if set(bad) & set(SILENT_FAULT_KINDS) else ""))
    if a.no_daemon:
        # Without cached there are no data connections or listeners to kill.
        needs_daemon = [f for f in faults if f in ("kill-data", "kill-listener")]
        if needs_daemon and a.faults != "all":
            ap.error("--no-daemon: %s need the daemon's connections" % ",".join(needs_daemon))
        faults = [f for f in faults if f not in needs_daemon]
    if a.daemon_redis is not None and a.topology == "single":
        ap.error("--daemon-redis is for --topology sentinel or cluster")
    if not a.redis_server:
        ap.error("redis-server not found (PATH or /usr/bin); pass --redis-server")
    redis_cli = a.redis_cli
    if a.topology == "cluster" and redis_cli is None:
        beside = Path(a.redis_server).with_name("redis-cli")
        redis_cli = str(beside) if os.access(beside, os.X_OK) else shutil.which("redis-cli")
        if redis_cli is None:
            ap.error("redis-cli not found (next to redis-server or on PATH); pass --redis-cli")
    seed = a.seed if a.seed is not None else int(time.time()) % 1_000_000
    aged = a.aged_entries if a.aged_entries is not None else (4 if a.topology == "single" else 0)
    if not 0 <= aged <= len(AGED_ENTRIES):
        ap.error("--aged-entries must be 0 to %d" % len(AGED_ENTRIES))
    cross_lag_ms = a.cross_lag_ms if a.cross_lag_ms is not None else a.direct_lag_ms
    if a.max_staleness < 0 or a.staleness_slack_ms < 0:
        ap.error("--max-staleness and --staleness-slack-ms must not be negative")
    if a.loss_probability is not None and not 0 < a.loss_probability <= 1:
        ap.error("--loss-probability must be in (0, 1]")
    if a.daemons > 254 and a.redis_path == "tcp" and a.topology == "single":
        ap.error("--redis-path tcp gives each daemon an address 127.0.0.<i>: at most 254 daemons")
    max_staleness_ns = int(round(a.max_staleness * 1e9))
    slack_ns = int(round(a.staleness_slack_ms * 1e6))
    lag_ns = H.staleness_lag(max_staleness_ns, slack_ns, int(a.direct_lag_ms * 1e6))
    cross_lag_ns = H.staleness_lag(max_staleness_ns, slack_ns, int(cross_lag_ms * 1e6))
    if a.strict_lag_ms is not None:
        lag_ns = cross_lag_ns = int(a.strict_lag_ms * 1e6)
    global DUMP_HISTORY, DISCARD
    DUMP_HISTORY = a.dump_history
    DISCARD = a.discard and not a.keep
    return Options(a.seconds, max(1, a.clients), max(1, a.depth), seed, faults, lag_ns,
                   int(a.unanswered_ms * 1e6), a.bin, a.redis_server, a.keep, a.examples, a.topology,
                   a.failover_interval, a.daemon_redis, a.rejoin, a.no_daemon, redis_cli, a.cluster_node_timeout,
                   a.cluster_full_coverage == "yes", max(0, a.cluster_keys), a.daemons, cross_lag_ns, aged,
                   int(a.age_slack_ms * 1e6), max(0, min(a.near_clients, a.clients)), max_staleness_ns, slack_ns,
                   int(a.direct_lag_ms * 1e6), a.redis_path == "tcp", a.blackhole_one, a.loss_probability), a.json


def main(argv: Optional[list[str]] = None) -> int:
    options, as_json = parse_args(argv)
    if not options.no_daemon and not os.access(options.binary, os.X_OK):
        print("cached binary not found: %s" % options.binary, file=sys.stderr)
        return 2
    install_undo_handlers()
    unavailable: Optional[str] = None
    left_out: list[str] = []
    swept = 0
    if any(f in NETWORK_FAULT_KINDS for f in options.faults):
        unavailable = netfilter_unavailable()
        if unavailable is not None:
            left_out = [f for f in options.faults if f in NETWORK_FAULT_KINDS]
            options.faults = [f for f in options.faults if f not in NETWORK_FAULT_KINDS]
            print("silent network faults left out (%s): %s" % (",".join(left_out), unavailable), file=sys.stderr)
        else:
            swept = sweep_leftover_rules()
    refused = None if options.no_daemon else daemon_refuses_max_staleness(options.binary)
    directory = Path(tempfile.mkdtemp(prefix="cached-coherence-"))
    run = Run(options, directory)
    run.silent_unavailable, run.faults_left_out, run.rules_swept, run.bound_refused = unavailable, left_out, swept, refused
    if refused is not None and options.max_staleness_ns:
        run.anomaly("the daemon refuses [local_cache] max_staleness: run without the bound, checked against it",
                    refused)
    try:
        try:
            asyncio.run(run.main())
        finally:
            run.teardown()
    except RuntimeError as error:
        print("setup failed: %s" % error, file=sys.stderr)
        if options.topology != "single" and "invalid Redis URL" in str(error):
            print("the daemon does not accept the %s URL (%s)" % (
                "redis-sentinel://" if options.topology == "sentinel" else "redis-cluster://", run.daemon_redis_url()),
                file=sys.stderr)
        print("files kept in %s" % directory, file=sys.stderr)
        return 2
    if DUMP_HISTORY:
        import pickle
        with open(DUMP_HISTORY, "wb") as out:
            pickle.dump({"history": run.history, "t0": run.t0,
                         "faults": [(f.at, f.kind, f.detail) for f in run.fault_log]}, out)
    result = H.check(run.history)
    cross: Optional[list[H.Violation]] = None
    if run.history.cross_lag:
        # The reads only the cross-daemon lag excused: the violations a check without it adds.
        flagged = {id(v.read) for v in result.violations}
        strict = H.check(dataclasses.replace(run.history, cross_lag=0))
        cross = [v for v in strict.violations if id(v.read) not in flagged]
    report = build_report(run, result, cross)
    if options.keep or (not report["passed"] and not DISCARD):
        report["directory"] = str(directory)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print_text(report)
        if "directory" in report:
            print("files (config, logs) in " + report["directory"])
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
