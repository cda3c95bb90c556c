#!/usr/bin/env node
// Per-call cost of a get hit from Node.js, in one process (the "clients" section of scripts/bench/run.py).
//
//   node scripts/bench/node_client.js SOCKET CALLS ROUNDS KEY [ENTRIES]
//
// Variants, each run for CALLS gets per round, rounds interleaved (floor, plain, near, floor, ...):
//   floor  net.createConnection to the Unix socket; per call one get line written, one answer line awaited
//          (the bare round trip: no client library)
//   plain  CachedClient.get(KEY, i % ENTRIES)
//   near   the same through a CachedClient with nearCache: ENTRIES (every entry read until kept first, so the
//          measured gets are near hits; the hits are counted and reported)
// The entries KEY/0..ENTRIES-1 must be stored already (run.py sets them). Prints one JSON object: µs per call,
// the median round per variant, the best round, and every round.
"use strict";

const net = require("net");
const path = require("path");
const { CachedClient } = require(path.join(__dirname, "..", "..", "clients", "node"));

const [socketPath, callsArg, roundsArg, key, entriesArg] = process.argv.slice(2);
if (!socketPath || !key) {
  console.error("usage: node_client.js SOCKET CALLS ROUNDS KEY [ENTRIES]");
  process.exit(2);
}
const calls = Number(callsArg) || 20000;
const rounds = Number(roundsArg) || 5;
const entries = Number(entriesArg) || 64;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The floor: one raw connection, one line out, one line back, nothing parsed beyond finding the newline. */
class Floor {
  async open() {
    this.sock = net.createConnection(socketPath);
    await new Promise((resolve, reject) => {
      this.sock.once("connect", resolve);
      this.sock.once("error", reject);
    });
    this.sock.setNoDelay && this.sock.setNoDelay(true);
    this.buf = "";
    this.waiting = null;
    this.sock.setEncoding("utf8");
    this.sock.on("data", (chunk) => {
      this.buf += chunk;
      const nl = this.buf.indexOf("\n");
      if (nl >= 0 && this.waiting) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiting;
        this.waiting = null;
        w(line);
      }
    });
    this.keyJson = JSON.stringify(key);
  }

  get(i) {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.sock.write('{"jsonrpc":"2.0","id":' + i + ',"method":"get","params":{"key":' + this.keyJson +
        ',"identity":' + (i % entries) + "}}\n");
    });
  }

  close() {
    this.sock.destroy();
  }
}

async function main() {
  const floor = new Floor();
  await floor.open();
  const plain = new CachedClient({ socket: socketPath });
  const near = new CachedClient({ socket: socketPath, nearCache: entries });

  // Check the answers once (every entry a hit, the same bytes through the floor and both clients).
  for (let i = 0; i < entries; i++) {
    const line = JSON.parse(await floor.get(i));
    const a = await plain.get(key, i);
    if (!line.result || line.result.hit !== true || !a.hit || a.value.toString() !== line.result.value) {
      throw new Error("entry " + i + " is not a hit with the same value: floor " + JSON.stringify(line).slice(0, 200) +
        " plain " + JSON.stringify({ hit: a.hit, value: a.value && a.value.toString() }));
    }
  }
  // The near cache keeps answers only once its notification connection is up: read until every entry is kept.
  const deadline = Date.now() + 10000;
  for (;;) {
    for (let i = 0; i < entries; i++) {
      const r = await near.get(key, i);
      if (!r.hit) throw new Error("near get of " + i + " missed");
    }
    const st = near.nearStats();
    if (st.attached && st.entries >= entries) break;
    if (Date.now() > deadline) throw new Error("the near cache kept only " + JSON.stringify(st) + " (nearError " + near.nearError + ")");
    await new Promise((r) => setTimeout(r, 20));
  }

  const variants = {
    floor: async (n) => {
      for (let i = 0; i < n; i++) await floor.get(i);
    },
    plain: async (n) => {
      for (let i = 0; i < n; i++) await plain.get(key, i % entries);
    },
    near: async (n) => {
      for (let i = 0; i < n; i++) await near.get(key, i % entries);
    },
  };
  // A short warm-up of each variant (JIT), not measured.
  for (const run of Object.values(variants)) await run(Math.min(2000, calls));

  const results = { floor: [], plain: [], near: [] };
  const nearBefore = near.nearStats();
  for (let r = 0; r < rounds; r++) {
    for (const [name, run] of Object.entries(variants)) {
      const t0 = process.hrtime.bigint();
      await run(calls);
      results[name].push(Number(process.hrtime.bigint() - t0) / calls / 1000);
    }
  }
  const nearAfter = near.nearStats();
  floor.close();
  plain.close();
  near.close();

  const out = { language: "node", runtime: process.version, callsPerRound: calls, rounds, entries };
  for (const [name, xs] of Object.entries(results)) {
    out[name] = { usPerCall: +median(xs).toFixed(2), usPerCallBest: +Math.min(...xs).toFixed(2), rounds: xs.map((x) => +x.toFixed(2)) };
  }
  out.near.hits = nearAfter.hits - nearBefore.hits;
  out.near.misses = nearAfter.misses - nearBefore.misses;
  out.near.calls = calls * rounds;
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.log(JSON.stringify({ language: "node", error: String(error && error.stack || error).slice(0, 800) }));
  process.exit(1);
});
