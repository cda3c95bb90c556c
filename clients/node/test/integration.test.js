"use strict";
// Integration tests against a real daemon (started by clients/conformance/harness.py): pipelining,
// reconnecting, the lease flow, timeouts, the near cache's coherence, the entry points.

const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawn, spawnSync, execFileSync } = require("node:child_process");
const { Harness, NODE_ROOT, sleep } = require("./helpers");
const { CachedClient, CachedError, CachedConnectionError, DEADLINE_EXCEEDED } = require("..");

const INTEROP = path.join(__dirname, "interop-cli.js");
/** The interop program's environment: not that of a test file (see interop-cli.js). */
const INTEROP_ENV = { ...process.env, NODE_TEST_CONTEXT: "" };

/** One write through another process (the interop program), run synchronously: this process's event loop
 * is blocked meanwhile, so any notification it causes is still unread in our sockets when it returns. */
function setElsewhereSync(socket, key, identity, value) {
  const request = JSON.stringify({ op: "set", socket, key, identity, value: Buffer.from(value).toString("base64") });
  const out = spawnSync(process.execPath, [INTEROP], { input: request + "\n", encoding: "utf8", timeout: 10000, env: INTEROP_ENV });
  assert.equal(out.status, 0, out.stderr);
  assert.deepEqual(JSON.parse(out.stdout), { ok: true });
}

/** The daemon the harness started (its child, running the cached binary). */
function daemonPid(harness) {
  const fs = require("node:fs");
  for (const task of fs.readdirSync(`/proc/${harness.proc.pid}/task`)) {
    for (const child of fs.readFileSync(`/proc/${harness.proc.pid}/task/${task}/children`, "utf8").trim().split(/\s+/).filter(Boolean)) {
      const cmdline = fs.readFileSync(`/proc/${child}/cmdline`, "utf8");
      if (cmdline.includes("--socket") && cmdline.includes(harness.socket)) return Number(child);
    }
  }
  throw new Error("the daemon's pid was not found");
}

describe("against a real daemon (embedded store)", { concurrency: false }, () => {
  let harness;
  const clients = [];
  const client = (options = {}) => {
    const c = new CachedClient({ socket: harness.socket, ...options });
    clients.push(c);
    return c;
  };
  before(async () => {
    harness = await Harness.start("embedded");
  });
  after(async () => {
    for (const c of clients) c.close();
    if (harness) await harness.quit();
  });

  test("pipelining: 2000 concurrent requests on one connection, each answered by its own id", async () => {
    const c = client();
    const before = (await c.stats()).connections.total;
    const writes = [];
    for (let i = 0; i < 1000; i++) writes.push(c.set("Student", 10000 + i, "value " + i));
    assert.deepEqual(new Set(await Promise.all(writes)), new Set([true]));
    const reads = [];
    for (let i = 0; i < 1000; i++) reads.push(c.get("Student", 10000 + i));
    const results = await Promise.all(reads);
    results.forEach((r, i) => {
      assert.equal(r.hit, true);
      assert.equal(r.value.toString(), "value " + i);
    });
    assert.equal((await c.stats()).connections.total, before, "no second connection was opened");
  });

  test("reconnects after a daemon restart; a request in flight fails clearly instead of hanging", async () => {
    const a = client();
    const b = client();
    assert.equal(await a.set("Student", 1, "before"), true);
    let release;
    const holding = new Promise((resolve) => (release = resolve));
    // a holds a lease (its fill waits for us); b's fetch waits behind it when the daemon goes away.
    const aFetch = a.fetch("Session", 50, async () => {
      await holding;
      return "a filled";
    });
    await sleep(100);
    const bFetch = b.fetch("Session", 50, () => "b filled", { timeout: 20000 }).then(
      (value) => ({ value }),
      (error) => ({ error }),
    );
    await sleep(100);
    const started = Date.now();
    await harness.cmd({ cmd: "restart" });
    const outcome = await bFetch;
    assert.ok(Date.now() - started < 15000, "b's fetch ended with the daemon, not at its own timeout");
    if (outcome.error) {
      assert.ok(outcome.error instanceof CachedError, String(outcome.error));
      assert.ok([-1, -32007].includes(outcome.error.code), "code " + outcome.error.code + ": " + outcome.error.message);
    } else {
      // b's waiting get was answered with a new lease when a's connection ended, and b filled.
      assert.equal(outcome.value.toString(), "b filled");
    }
    release();
    assert.equal((await aFetch).toString(), "a filled", "a's fill is still returned (its lease died with the daemon)");
    // Same client objects, new connections.
    assert.deepEqual(await a.get("Student", 1), { hit: false, value: null, stale: false }); // the embedded store starts empty
    assert.equal(await a.set("Student", 1, "after"), true);
    assert.equal((await b.get("Student", 1)).value.toString(), "after");
  });

  test("fetch: 100 concurrent fetches of one cold entry through one client call fill once", async () => {
    const c = client();
    let fills = 0;
    const values = await Promise.all(
      Array.from({ length: 100 }, () =>
        c.fetch("Student", 77, async () => {
          fills++;
          await sleep(100);
          return "filled once";
        }),
      ),
    );
    assert.equal(fills, 1);
    for (const v of values) assert.equal(v.toString(), "filled once");
    values[0][0] = 0; // every caller has its own Buffer
    assert.equal(values[1].toString(), "filled once");
  });

  test("fetch: 100 concurrent fetches across 5 clients (lease holder and waiters) call fill once", async () => {
    const many = Array.from({ length: 5 }, () => client());
    let fills = 0;
    const values = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        many[i % 5].fetch("Student", 78, async () => {
          fills++;
          await sleep(200);
          return Buffer.from([0, 0xff, 7]);
        }),
      ),
    );
    assert.equal(fills, 1);
    for (const v of values) assert.deepEqual([...v], [0, 0xff, 7]);
    assert.deepEqual([...(await many[4].get("Student", 78)).value], [0, 0xff, 7]);
  });

  test("fetch: a fill that throws releases the lease (a waiter fills at once) and rethrows the same error", async () => {
    const a = client();
    const b = client();
    const stats = () => a.stats().then((s) => s.fills.leasesReleased);
    const releasedBefore = await stats();
    const boom = new Error("origin down");
    const aFetch = a.fetch("Session", 60, async () => {
      await sleep(300);
      throw boom;
    }).then(
      () => assert.fail("resolved"),
      (error) => error,
    );
    await sleep(100);
    const started = Date.now();
    // b's timeout (2 s) is well below lease_timeout (5 s): only a release lets it fill in time.
    const bValue = await b.fetch("Session", 60, () => "b filled", { timeout: 2000 });
    assert.equal(bValue.toString(), "b filled");
    assert.ok(Date.now() - started < 1500);
    assert.equal(await aFetch, boom, "the very error object the fill threw");
    assert.equal(await stats(), releasedBefore + 1);
    assert.equal((await a.get("Session", 60)).value.toString(), "b filled");
  });

  test("fetch of a key with a sync handler: the daemon fills, fill is not called", async () => {
    const c = client();
    const value = await c.fetch("Handled", 5, () => assert.fail("fill called"));
    assert.equal(value.toString(), "handled:5");
  });

  test("timeout: the daemon answers -32009 at the request's deadline", async () => {
    const c = client();
    const started = Date.now();
    const error = await c.get("Handled", -2, { timeout: 200 }).then(() => null, (e) => e);
    const elapsed = Date.now() - started;
    assert.ok(error instanceof CachedError, String(error));
    assert.equal(error.code, DEADLINE_EXCEEDED);
    assert.equal(error.data.timeout, 0.2);
    assert.notEqual(error.data.local, true, "the daemon's answer, not the local backstop");
    assert.ok(elapsed >= 150 && elapsed < 1000, "answered after " + elapsed + " ms");
    assert.equal(await c.ping(), "pong", "the connection stays usable");
  });

  test("near cache: a write by another client is seen on the next get, however soon", async () => {
    const writer = client();
    const near = client({ nearCache: 100 });
    await writer.set("Student", 500, "v0");
    await near.get("Student", 500);
    await sleep(100); // the notification connection is up
    for (let i = 1; i <= 300; i++) {
      assert.equal(await writer.set("Student", 500, "v" + i), true);
      assert.equal((await near.get("Student", 500)).value.toString(), "v" + i, "after write " + i);
      assert.equal((await near.get("Student", 500)).value.toString(), "v" + i, "near hit after write " + i);
    }
    const stats = near.nearStats();
    assert.ok(stats.attached);
    assert.ok(stats.hits >= 250, "near hits: " + JSON.stringify(stats));
    assert.equal(await writer.delete("Student", 500), true);
    assert.equal((await near.get("Student", 500)).hit, false);
  });

  test("near cache: a write by another process while this event loop is blocked is seen by the very next get", async () => {
    const near = client({ nearCache: 100 });
    await near.set("Student", 600, "mine");
    for (let i = 0; i < 3; i++) await near.get("Student", 600);
    await sleep(100);
    await near.get("Student", 600);
    const hitsBefore = near.nearStats().hits;
    assert.equal((await near.get("Student", 600)).value.toString(), "mine");
    assert.equal(near.nearStats().hits, hitsBefore + 1, "served from the near cache");
    for (let i = 0; i < 3; i++) {
      // No await between the other process's answer and the lookup: the invalidation is still unread in the
      // notification socket, and only the lookup's synchronous drain can apply it.
      setElsewhereSync(harness.socket, "Student", 600, "theirs " + i);
      const result = await near.get("Student", 600);
      assert.equal(result.value.toString(), "theirs " + i);
      await near.get("Student", 600); // kept again
    }
  });

  test("near cache: hash entries dropped by deleteHash; the cache starts over after a reconnect", async () => {
    const writer = client();
    const near = client({ nearCache: 100 });
    await writer.set("Student", 1, "h", { hashKey: "Class", hashId: 9n });
    await near.get("Student", 1, { hashKey: "Class", hashId: 9 });
    await sleep(100);
    await near.get("Student", 1, { hashKey: "Class", hashId: 9 });
    const { hits } = near.nearStats();
    assert.equal((await near.get("Student", 1, { hashKey: "Class", hashId: 9n })).value.toString(), "h");
    assert.equal(near.nearStats().hits, hits + 1);
    assert.equal(await writer.deleteHash("Class", 9), true);
    assert.equal((await near.get("Student", 1, { hashKey: "Class", hashId: 9 })).hit, false);
    await harness.cmd({ cmd: "restart" });
    await sleep(50);
    assert.equal(near.nearStats().entries, 0, "dropped with the connection");
    assert.deepEqual(await near.get("Student", 1, { hashKey: "Class", hashId: 9 }), { hit: false, value: null, stale: false });
  });

  test("near cache: a stalled daemon's near hits lapse within maxStaleness (the proof page)", async () => {
    const near = client({ nearCache: 100 });
    await near.set("Student", 800, "kept");
    await near.get("Student", 800);
    await sleep(100);
    await near.get("Student", 800);
    const { hits } = near.nearStats();
    assert.equal((await near.get("Student", 800)).value.toString(), "kept");
    assert.equal(near.nearStats().hits, hits + 1);
    const pid = daemonPid(harness);
    process.kill(pid, "SIGSTOP");
    try {
      await sleep(700); // past max_staleness (0.5 s): the daemon stopped rewriting the instant
      const error = await near.get("Student", 800, { timeout: 200 }).then(() => null, (e) => e);
      assert.ok(error instanceof CachedError, "no near hit without fresh proof: the stalled daemon was asked");
      assert.equal(error.code, DEADLINE_EXCEEDED);
      assert.equal(error.data.local, true);
      assert.ok(near.nearStats().unproven >= 1);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    assert.equal((await near.get("Student", 800)).value.toString(), "kept");
  });

  test("interop program: set and get lines", async () => {
    const child = spawn(process.execPath, [INTEROP], { stdio: ["pipe", "pipe", "inherit"], env: INTEROP_ENV });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    const s = harness.socket;
    const lines = [
      { op: "set", socket: s, key: "Student", identity: 700, value: Buffer.from([0, 1, 0xff]).toString("base64") },
      { op: "get", socket: s, key: "Student", identity: 700 },
      { op: "get", socket: s, key: "Student", identity: { bigint: "123456789012345678901234567890" } },
      { op: "get", socket: s, key: "ab", identity: 1 },
    ];
    child.stdin.end(lines.map((l) => JSON.stringify(l) + "\n").join(""));
    await new Promise((resolve) => child.on("exit", resolve));
    const answers = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(answers.slice(0, 3), [{ ok: true }, { hit: true, value: "AAH/" }, { hit: false, value: null }]);
    assert.equal(answers[3].error.code, -32602);
  });

  test("the README's quick start runs as written", () => {
    const readme = require("node:fs").readFileSync(path.join(NODE_ROOT, "README.md"), "utf8");
    const block = /## Quick start\s+```js\n([\s\S]*?)```/.exec(readme);
    assert.ok(block, "a js block under Quick start");
    // From inside the package, so that require("cached-client") resolves to it (package self-reference).
    const out = execFileSync(process.execPath, ["-e", block[1]], { cwd: NODE_ROOT, encoding: "utf8", env: { ...process.env, CACHED_SOCKET: harness.socket }, timeout: 20000 });
    assert.equal(out, "true { name: 'Ada' }\ncomputed once\n");
  });

  test("close(): requests in flight and later calls fail with CachedConnectionError", async () => {
    const c = client();
    await c.ping();
    const inFlight = c.get("Handled", -2, { timeout: 5000 });
    c.close();
    await assert.rejects(inFlight, CachedConnectionError);
    await assert.rejects(c.ping(), CachedConnectionError);
  });
});

test("entry points: require and import of cached-client give the same classes; types first in exports", () => {
  const pkg = require("../package.json");
  assert.equal(pkg.name, "cached-client");
  assert.deepEqual(Object.keys(pkg.exports["."]), ["types", "import", "require"]);
  const script = `
    import { CachedClient, CachedError, codes, DEADLINE_EXCEEDED } from "cached-client";
    import def from "cached-client";
    import { createRequire } from "node:module";
    const cjs = createRequire(import.meta.url)("cached-client");
    if (CachedClient !== cjs.CachedClient || CachedError !== cjs.CachedError || def.CachedClient !== CachedClient) throw new Error("two copies");
    if (DEADLINE_EXCEEDED !== -32009 || codes.DEADLINE_EXCEEDED !== -32009) throw new Error("codes");
    console.log(typeof new CachedClient({ socket: "/nonexistent" }).get);`;
  // Run from inside the package, so that "cached-client" resolves to it (package self-reference).
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: NODE_ROOT, encoding: "utf8" });
  assert.equal(out.trim(), "function");
  const outAbs = execFileSync(process.execPath, ["--input-type=module", "-e", `import { CachedClient } from ${JSON.stringify(path.join(NODE_ROOT, "index.mjs"))}; console.log(typeof CachedClient)`], { encoding: "utf8" });
  assert.equal(outAbs.trim(), "function");
});
