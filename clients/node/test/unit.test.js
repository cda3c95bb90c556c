"use strict";
// Unit tests: the codec, the near cache's state, the proof page, and the connection's own behaviour
// (backstop timer, a closed connection) against tiny local socket servers. The daemon itself is only ever
// the real one (integration.test.js, conformance.test.js).

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const codec = require("../lib/codec");
const { NearCache, ProofPage, monotonicNs } = require("../lib/near");
const { CachedClient, CachedError, CachedConnectionError, codes, DEADLINE_EXCEEDED, CONNECTION_ERROR } = require("..");

test("requests: bigints are exact JSON integers, -0 is 0, strings escaped", () => {
  const line = codec.encodeRequest(7, "get", { key: "Student", identity: 123456789012345678901234567890n, hashKey: "Class", hashId: -0, lease: false });
  assert.equal(line, '{"jsonrpc":"2.0","id":7,"method":"get","params":{"key":"Student","identity":123456789012345678901234567890,"hashKey":"Class","hashId":0,"lease":false}}\n');
  const tricky = codec.encodeRequest(1, "set", { key: "K\n\"x", identity: "a\u2028b", value: "\u0000" });
  assert.ok(!tricky.slice(0, -1).includes("\n"), "no raw newline inside a line");
  assert.deepEqual(JSON.parse(tricky).params, { key: "K\n\"x", identity: "a\u2028b", value: "\u0000" });
  assert.throws(() => codec.encodeRequest(1, "x", { a: NaN }), TypeError);
});

test("identities: safe integers, bigints and strings; anything else is a TypeError", () => {
  assert.equal(codec.checkIdentity(12, "identity"), 12);
  assert.equal(codec.checkIdentity(2n ** 70n, "identity"), 2n ** 70n);
  assert.equal(codec.checkIdentity("alice", "identity"), "alice");
  assert.throws(() => codec.checkIdentity(1.5, "identity"), TypeError);
  assert.throws(() => codec.checkIdentity(2 ** 53, "identity"), /bigint/);
  assert.throws(() => codec.checkIdentity(null, "identity"), TypeError);
  assert.throws(() => codec.entryParams("Student", 1, { hashKey: "Class" }), /together/);
});

test("values: UTF-8 travels as text, other bytes as base64, and come back byte for byte", () => {
  assert.deepEqual(codec.putValue({}, "héllo"), { value: "héllo" });
  assert.deepEqual(codec.putValue({}, Buffer.from("日本")), { value: "日本" });
  const binary = Buffer.from([0, 0xff, 0xfe, 0x80, 0x41, 0x0a]);
  const params = codec.putValue({}, binary);
  assert.equal(params.encoding, "base64");
  assert.ok(codec.valueOf(params).equals(binary));
  assert.ok(codec.valueOf(codec.putValue({}, new Uint8Array([1, 2, 0xc3]))).equals(Buffer.from([1, 2, 0xc3])));
  assert.deepEqual(codec.putValue({}, "a\ud800b"), { value: "a\ufffdb" }); // a lone surrogate is not UTF-8
  assert.equal(codec.valueOf({ value: null }), null);
  assert.throws(() => codec.putValue({}, 12), TypeError);
});

test("near addresses: exact for integers of any size, from requests and from notifications alike", () => {
  const big = "123456789012345678901234567890";
  const note = codec.parseNotification('{"jsonrpc":"2.0","method":"invalidate","params":{"entries":[{"key":"Student","identity":' + big + ',"hashKey":"Class","hashId":-3},{"key":"Student","identity":"12"}]}}');
  const [first, second] = note.params.entries;
  assert.equal(codec.addressOf(first), codec.addressOf({ key: "Student", identity: BigInt(big), hashKey: "Class", hashId: -3 }));
  assert.notEqual(codec.addressOf(first), codec.addressOf({ key: "Student", identity: BigInt(big) + 1n, hashKey: "Class", hashId: -3 }));
  assert.equal(codec.addressOf({ key: "S", identity: 12 }), codec.addressOf({ key: "S", identity: 12n }));
  assert.equal(codec.addressOf(second), codec.addressOf({ key: "Student", identity: "12" }));
  assert.notEqual(codec.addressOf(second), codec.addressOf({ key: "Student", identity: 12 }));
  // A string identity that looks like JSON is not rewritten.
  const sneaky = codec.parseNotification(JSON.stringify({ method: "invalidate", params: { entries: [{ key: "K", identity: '"identity":12' }] } }));
  assert.equal(sneaky.params.entries[0].identity, '"identity":12');
});

function fakeNear(capacity = 2) {
  const near = new NearCache(capacity);
  near.fd = 1 << 30; // "attached"; drain() is not reached in these tests (proof "unprovable" is not set)
  near.drain = () => true;
  return near;
}

test("near state: keeps only nearTTL hits, drops on invalidate, never keeps an answer overtaken in flight", () => {
  const near = fakeNear(2);
  const a = codec.addressOf({ key: "Student", identity: 1 });
  let token = near.begin(a);
  near.finish(token, { hit: true, value: "v1", nearTTL: 60000 });
  assert.equal(near.lookup(a).value, "v1");
  near.invalidate({ entries: [{ key: "Student", identity: 1 }] });
  assert.equal(near.lookup(a), undefined);
  // Overtaken: the notification came while the get was in flight.
  token = near.begin(a);
  near.invalidate({ entries: [{ key: "Student", identity: 1 }] });
  near.finish(token, { hit: true, value: "old", nearTTL: 60000 });
  assert.equal(near.lookup(a), undefined);
  // Without nearTTL (read from Redis, filled, stale...) nothing is kept.
  near.finish(near.begin(a), { hit: true, value: "x" });
  near.finish(near.begin(a), { hit: false, value: "filled", nearTTL: 1000 });
  assert.equal(near.lookup(a), undefined);
  // LRU bound, and {all: true}.
  for (const i of [1, 2, 3]) near.finish(near.begin("e" + i), { hit: true, value: String(i), nearTTL: 60000 });
  assert.equal(near.entries.size, 2);
  assert.equal(near.lookup("e1"), undefined);
  near.invalidate({ all: true });
  assert.equal(near.entries.size, 0);
});

test("near state: an entry lives at most nearTTL from when its get was sent", async () => {
  const near = fakeNear();
  near.finish(near.begin("a"), { hit: true, value: "v", nearTTL: 30 });
  assert.equal(near.lookup("a").value, "v");
  await new Promise((resolve) => setTimeout(resolve, 40));
  assert.equal(near.lookup("a"), undefined);
});

test("process.hrtime.bigint() is CLOCK_MONOTONIC (the proof page's clock)", () => {
  const before = monotonicNs();
  const python = BigInt(execFileSync("python3", ["-c", "import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC))"], { encoding: "utf8" }).trim());
  const after = monotonicNs();
  assert.ok(before <= python && python <= after, `${before} <= ${python} <= ${after}`);
});

test("proof page: fresh instant serves, an old, zero or future one does not", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cached-proof-"));
  const file = path.join(dir, "page");
  const write = (instant) => {
    const page = Buffer.alloc(4096);
    page.write("CACHEDPF", 0, "latin1");
    page.writeUInt32LE(1, 8);
    page.writeBigUInt64LE(instant, 16);
    page.writeBigUInt64LE(500000000n, 24);
    fs.writeFileSync(file, page);
  };
  try {
    write(monotonicNs());
    const near = new NearCache(10);
    near.setProof({ proof: { path: file, maxStaleness: 0.5 } });
    assert.ok(near.proof instanceof ProofPage);
    assert.equal(near.proven(), true);
    write(monotonicNs() - 600000000n); // rewritten in place: the open descriptor sees it
    assert.equal(near.proven(), false);
    write(0n);
    assert.equal(near.proven(), false);
    write(monotonicNs() + 10000000000n); // torn: from the future
    assert.equal(near.proven(), false);
    near.detach();
    const missing = new NearCache(10);
    missing.setProof({ proof: { path: path.join(dir, "nope"), maxStaleness: 0.5 } });
    assert.equal(missing.proven(), false, "a page that cannot be read: no near hit at all");
    const none = new NearCache(10);
    none.setProof({ tracking: true });
    assert.equal(none.proven(), true, "no bound: notifications alone");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** A local socket server for the connection's own behaviour: `onLine(socket, line)`. */
async function server(onLine) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cached-unit-"));
  const socketPath = path.join(dir, "s.sock");
  const sockets = new Set();
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    let buffered = "";
    socket.on("data", (data) => {
      buffered += data;
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        onLine(socket, JSON.parse(line));
      }
    });
    socket.on("error", () => {});
  });
  await new Promise((resolve) => srv.listen(socketPath, resolve));
  return {
    socketPath,
    connections: () => sockets.size,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => srv.close(resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("every request carries its timeout; a silent peer trips the local backstop (-32009, local)", async () => {
  const seen = [];
  const srv = await server((socket, request) => seen.push(request)); // never answers
  const client = new CachedClient({ socket: srv.socketPath, timeout: 150 });
  try {
    const started = Date.now();
    const error = await client.get("Student", 1).then(() => null, (e) => e);
    assert.ok(error instanceof CachedError);
    assert.equal(error.code, DEADLINE_EXCEEDED);
    assert.equal(error.data.local, true);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 150 && elapsed < 3000, "backstop after " + elapsed + " ms");
    assert.equal(seen[0].params.timeout, 0.15);
    assert.equal(seen[0].params.lease, false);
    await client.get("Student", 1, { timeout: 50 }).catch(() => {});
    assert.equal(seen[1].params.timeout, 0.05);
  } finally {
    client.close();
    await srv.close();
  }
});

test("a connection closed with requests in flight fails them (never hangs), and the next call reconnects", async () => {
  let count = 0;
  const srv = await server((socket, request) => {
    count++;
    if (count <= 3) {
      if (count === 3) socket.destroy(); // closes with two requests unanswered
      return;
    }
    socket.write(JSON.stringify({ jsonrpc: "2.0", id: request.id, result: "pong" }) + "\n");
  });
  const client = new CachedClient({ socket: srv.socketPath });
  try {
    const results = await Promise.allSettled([client.ping(), client.ping(), client.ping()]);
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof CachedConnectionError, String(r.reason));
      assert.equal(r.reason.code, CONNECTION_ERROR);
      assert.match(r.reason.message, /closed/);
    }
    assert.equal(await client.ping(), "pong");
  } finally {
    client.close();
    await srv.close();
  }
});

test("answers are matched by id, in any order; an error answer is a CachedError with code and data", async () => {
  const held = [];
  const srv = await server((socket, request) => {
    held.push(request);
    if (held.length < 3) return;
    for (const r of held.reverse()) {
      const answer = r.method === "boom" ? { jsonrpc: "2.0", id: r.id, error: { code: -32003, message: "WRONGTYPE x", data: { redis: "WRONGTYPE" } } } : { jsonrpc: "2.0", id: r.id, result: r.params.n };
      socket.write(JSON.stringify(answer) + "\n");
    }
  });
  const client = new CachedClient({ socket: srv.socketPath });
  try {
    const [one, two, boom] = await Promise.allSettled([client.call("echo", { n: 1 }), client.call("echo", { n: 2 }), client.call("boom")]);
    assert.equal(one.value, 1);
    assert.equal(two.value, 2);
    assert.equal(boom.reason.code, codes.STORE_ERROR);
    assert.deepEqual(boom.reason.data, { redis: "WRONGTYPE" });
  } finally {
    client.close();
    await srv.close();
  }
});

test("no daemon: a CachedConnectionError naming the socket", async () => {
  const client = new CachedClient({ socket: path.join(os.tmpdir(), "no-such-cached.sock") });
  const error = await client.ping().then(() => null, (e) => e);
  assert.ok(error instanceof CachedConnectionError);
  assert.match(error.message, /cannot connect to cached at .*no-such-cached\.sock/);
  client.close();
  await assert.rejects(client.ping(), CachedConnectionError);
});

test("default socket: $CACHED_SOCKET, else /run/cached/cached.sock", () => {
  const saved = process.env.CACHED_SOCKET;
  try {
    delete process.env.CACHED_SOCKET;
    assert.equal(new CachedClient().socketPath, "/run/cached/cached.sock");
    process.env.CACHED_SOCKET = "/tmp/x.sock";
    assert.equal(new CachedClient().socketPath, "/tmp/x.sock");
  } finally {
    if (saved === undefined) delete process.env.CACHED_SOCKET;
    else process.env.CACHED_SOCKET = saved;
  }
});
