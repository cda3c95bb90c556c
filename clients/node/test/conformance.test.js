"use strict";
// Runs every case of clients/conformance/cases.json (format: clients/conformance/README.md) against a real
// daemon started by the shared harness, for both stores (side by side), each case its own subtest.

const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { Harness, REPO_ROOT, sleep } = require("./helpers");
const { CachedClient, CachedError } = require("..");

const CASES = path.join(REPO_ROOT, "clients", "conformance", "cases.json");
const suite = JSON.parse(fs.readFileSync(CASES, "utf8"));
assert.equal(suite.version, 1, "cases.json version");

/** Optional features this client has (a case requiring another one is skipped by name). */
const FEATURES = new Set(["nearCache"]);

function valueOf(spec) {
  if (spec === null || spec === undefined) return null;
  if (typeof spec.utf8 === "string") return Buffer.from(spec.utf8, "utf8");
  if (typeof spec.base64 === "string") return Buffer.from(spec.base64, "base64");
  if (typeof spec.repeat === "string") return Buffer.from(spec.repeat.repeat(spec.count), "utf8");
  throw new Error("unknown value " + JSON.stringify(spec));
}

function identityOf(spec) {
  if (spec !== null && typeof spec === "object" && typeof spec.bigint === "string") return BigInt(spec.bigint);
  return spec;
}

function describeBytes(bytes) {
  if (bytes === null) return "null";
  if (bytes.length > 64) return "<" + bytes.length + " bytes>";
  return JSON.stringify(bytes.toString("latin1"));
}

function assertBytes(actual, expected, what) {
  if (expected === null) {
    assert.equal(actual, null, what + ": expected null, got " + (actual && describeBytes(actual)));
    return;
  }
  assert.ok(Buffer.isBuffer(actual), what + ": expected a Buffer, got " + actual);
  assert.ok(actual.equals(expected), what + ": expected " + describeBytes(expected) + ", got " + describeBytes(actual));
}

function matchJSON(actual, expected) {
  if (expected !== null && typeof expected === "object" && !Array.isArray(expected) && expected.any === true && Object.keys(expected).length === 1) return true;
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => matchJSON(actual[i], e));
  }
  if (expected !== null && typeof expected === "object") {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return false;
    const keys = Object.keys(expected);
    if (Object.keys(actual).length !== keys.length) return false;
    return keys.every((k) => matchJSON(actual[k], expected[k]));
  }
  return actual === expected;
}

function options(step) {
  const o = {};
  if (step.hashKey !== undefined) o.hashKey = step.hashKey;
  if (step.hashId !== undefined) o.hashId = identityOf(step.hashId);
  if (step.timeout !== undefined) o.timeout = step.timeout * 1000;
  if (step.ttl !== undefined) o.ttl = step.ttl;
  return o;
}

/** Runs one client step; resolves what it answered, in the expectations' terms. */
async function runOp(step, client) {
  switch (step.op) {
    case "get": {
      const r = await client.get(step.key, identityOf(step.identity), options(step));
      return { hit: r.hit, value: r.value, stale: r.stale };
    }
    case "set":
      await client.set(step.key, identityOf(step.identity), valueOf(step.value), options(step));
      return { ok: true };
    case "delete":
      return { deleted: await client.delete(step.key, identityOf(step.identity), options(step)) };
    case "deleteHash":
      return { deleted: await client.deleteHash(step.hashKey, identityOf(step.hashId), options(step)) };
    case "fetch": {
      const fill = step.fill;
      let fillCalled = false;
      let thrown;
      try {
        const value = await client.fetch(step.key, identityOf(step.identity), async () => {
          fillCalled = true;
          if (fill.delayMs) await sleep(fill.delayMs);
          if (fill.error !== undefined) {
            thrown = new Error(fill.error);
            throw thrown;
          }
          return valueOf(fill.value);
        }, options(step));
        return { value, fillCalled };
      } catch (error) {
        if (thrown !== undefined && error === thrown) return { fillError: error };
        throw error;
      }
    }
    case "call":
      return { result: await client.call(step.method, step.params, step.timeout !== undefined ? { timeout: step.timeout * 1000 } : undefined) };
    default:
      throw new Error("unknown op " + step.op);
  }
}

function check(step, outcome, where) {
  const expect = step.expect;
  if (outcome.error !== undefined) {
    const error = outcome.error;
    if (expect && expect.error && expect.error.code !== undefined) {
      assert.ok(error instanceof CachedError, where + ": expected a CachedError, got " + error);
      assert.equal(error.code, expect.error.code, where + ": code (" + error.message + ")");
      if (expect.error.messageContains !== undefined) {
        assert.ok(error.message.includes(expect.error.messageContains), where + ": message " + JSON.stringify(error.message) + " lacks " + JSON.stringify(expect.error.messageContains));
      }
      return;
    }
    throw new assert.AssertionError({ message: where + ": unexpected error: " + (error && error.stack) });
  }
  const answer = outcome.answer;
  if (expect === undefined) return;
  if (expect.error !== undefined) {
    if (expect.error.fill !== undefined) {
      assert.ok(answer.fillError, where + ": expected the fill's own error, got " + JSON.stringify(answer));
      assert.equal(answer.fillError.message, expect.error.fill, where + ": the fill's error message");
      return;
    }
    assert.fail(where + ": expected error " + JSON.stringify(expect.error) + ", got " + JSON.stringify(answer));
  }
  assert.ok(!answer.fillError, where + ": the fill threw " + (answer.fillError && answer.fillError.message));
  switch (step.op) {
    case "get":
      assert.equal(answer.hit, expect.hit, where + ": hit");
      assertBytes(answer.value, valueOf(expect.value), where + ": value");
      assert.equal(answer.stale, expect.stale ?? false, where + ": stale");
      break;
    case "fetch":
      assertBytes(answer.value, valueOf(expect.value), where + ": value");
      assert.equal(answer.fillCalled, expect.fillCalled, where + ": fillCalled");
      break;
    case "call":
      assert.ok(matchJSON(answer.result, expect.result), where + ": result " + JSON.stringify(answer.result) + " does not match " + JSON.stringify(expect.result));
      break;
    default:
      assert.deepEqual(answer, expect, where);
  }
}

async function outcomeOf(promise) {
  try {
    return { answer: await promise };
  } catch (error) {
    return { error };
  }
}

async function runCase(harness, testCase) {
  const clients = new Map();
  const handles = new Map();
  const clientOf = (name = "a") => {
    let client = clients.get(name);
    if (!client) {
      client = new CachedClient({ socket: harness.socket, nearCache: name.startsWith("near") ? 1000 : 0 });
      clients.set(name, client);
    }
    return client;
  };
  try {
    for (const [index, step] of testCase.steps.entries()) {
      const where = testCase.name + " step " + index + " (" + step.op + ")";
      switch (step.op) {
        case "sleep":
          await sleep(step.ms);
          continue;
        case "await": {
          const pending = handles.get(step.handle);
          assert.ok(pending, where + ": no async step " + step.handle);
          handles.delete(step.handle);
          check(pending.step, await pending.promise, pending.where);
          continue;
        }
        case "restart":
        case "stopRedis":
        case "startRedis":
          await harness.cmd({ cmd: step.op });
          continue;
        case "redis": {
          const { reply } = await harness.cmd({ cmd: "redis", args: step.args });
          if (step.expect !== undefined) assert.deepEqual(reply, step.expect.reply, where + ": reply");
          continue;
        }
      }
      const promise = outcomeOf(runOp(step, clientOf(step.client)));
      if (step.async !== undefined) {
        handles.set(step.async, { step, promise, where });
        continue;
      }
      check(step, await promise, where);
    }
    for (const [handle, pending] of handles) {
      check(pending.step, await pending.promise, pending.where + " (never awaited: " + handle + ")");
    }
  } finally {
    for (const client of clients.values()) client.close();
  }
}

describe("conformance", { concurrency: true }, () => {
  for (const store of ["embedded", "redis"]) {
    describe(store, { concurrency: false }, () => {
      let harness;
      before(async () => {
        harness = await Harness.start(store);
      });
      after(async () => {
        if (harness) await harness.quit();
      });
      for (const testCase of suite.cases) {
        if (!testCase.stores.includes(store)) continue;
        const missing = (testCase.requires || []).filter((feature) => !FEATURES.has(feature));
        test(testCase.name, { skip: missing.length ? "needs " + missing.join(", ") : false }, async () => {
          await harness.cmd({ cmd: "reset" });
          await runCase(harness, testCase);
        });
      }
    });
  }
});
