"use strict";
// The near cache: `get` answers kept in the process, coherent through the daemon's `invalidate`
// notifications (docs/protocol.md, `track`), with the proof page's staleness bound. See README.md,
// "Near cache", for why the notifications come on a socket of their own that a lookup reads synchronously.

const fs = require("node:fs");
const { StringDecoder } = require("node:string_decoder");
const { addressOf, parseNotification } = require("./codec");

const MAGIC = "CACHEDPF";

/** The daemon's proof page, read with one pread(2) of the 8-byte instant per near hit (Node cannot mmap). */
class ProofPage {
  constructor(path) {
    this.path = path;
    this.fd = fs.openSync(path, fs.constants.O_RDONLY | (fs.constants.O_CLOEXEC || 0));
    this.buf = Buffer.alloc(32);
    try {
      if (fs.readSync(this.fd, this.buf, 0, 32, 0) !== 32 || this.buf.toString("latin1", 0, 8) !== MAGIC || this.buf.readUInt32LE(8) !== 1) {
        throw new Error(path + " is not a cached proof page");
      }
    } catch (error) {
      fs.closeSync(this.fd);
      throw error;
    }
  }

  /** The proof instant, CLOCK_MONOTONIC nanoseconds (0n: none). */
  instant() {
    if (fs.readSync(this.fd, this.buf, 0, 8, 16) !== 8) return 0n;
    return this.buf.readBigUInt64LE(0);
  }

  close() {
    if (this.fd >= 0) {
      try {
        fs.closeSync(this.fd);
      } catch {}
      this.fd = -1;
    }
  }
}

/** process.hrtime.bigint() is libuv's uv_hrtime(): clock_gettime(CLOCK_MONOTONIC) on Linux, the clock of the
 * daemon's proof instant (test/near.test.js checks it against Python's time.monotonic_ns()). */
const monotonicNs = process.hrtime.bigint;

class NearCache {
  constructor(capacity) {
    this.capacity = capacity;
    /** address -> {result, deadline (performance.now() ms)}; Map order is insertion order (LRU: re-inserted on hit). */
    this.entries = new Map();
    /** address -> {count, invalidated} for gets in flight. */
    this.inFlight = new Map();
    /** The notification socket's fd, read synchronously (-1: none; then nothing is served or kept). */
    this.fd = -1;
    this.partial = "";
    this.decoder = new StringDecoder("utf8");
    this.readBuf = Buffer.allocUnsafe(65536);
    /** null: no bound (notifications alone); a ProofPage; or "unprovable" (no near hit at all). */
    this.proof = null;
    this.boundNs = 0n;
    this.generation = 0;
    this.hits = 0;
    this.misses = 0;
    this.unproven = 0;
    this.dropped = 0;
    /** Called when the notification socket turns out closed or broken while draining. */
    this.onBroken = null;
  }

  /** A new notification connection (fd readable synchronously), with the proof the `track` answer named. */
  attach(fd, pending, trackResult) {
    this.detach();
    this.fd = fd;
    this.partial = "";
    this.decoder = new StringDecoder("utf8");
    this.generation++;
    this.setProof(trackResult);
    if (pending && pending.length) this.feedBytes(pending);
  }

  setProof(trackResult) {
    const proof = trackResult && typeof trackResult === "object" ? trackResult.proof : undefined;
    if (!proof || typeof proof !== "object") {
      this.proof = null;
      return;
    }
    const bound = proof.maxStaleness;
    try {
      if (typeof proof.path !== "string" || typeof bound !== "number" || !(bound > 0)) throw new Error("no page");
      this.proof = new ProofPage(proof.path);
      this.boundNs = BigInt(Math.floor(bound * 1e9));
    } catch {
      this.proof = "unprovable"; // a bound we cannot check: no near hit at all
    }
  }

  /** The connection ended: nothing kept can be vouched for. */
  detach() {
    this.fd = -1;
    this.partial = "";
    if (this.proof && this.proof !== "unprovable") this.proof.close();
    this.proof = null;
    this.clear();
    this.generation++;
  }

  get attached() {
    return this.fd >= 0;
  }

  /** Applies bytes read from the notification socket (by libuv's reads or by drain(), in the order read). */
  feedBytes(bytes) {
    this.feed(this.decoder.write(bytes));
  }

  feed(text) {
    let data = this.partial + text;
    let start = 0;
    for (;;) {
      const end = data.indexOf("\n", start);
      if (end < 0) break;
      const line = data.slice(start, end);
      start = end + 1;
      if (line.trim() === "") continue;
      let message;
      try {
        message = parseNotification(line);
      } catch {
        this.clear();
        continue;
      }
      if (message && message.method === "invalidate" && message.id === undefined) this.invalidate(message.params);
    }
    this.partial = data.slice(start);
  }

  /** Reads whatever the notification socket holds, without blocking. False if it is closed or broken. */
  drain() {
    const fd = this.fd;
    if (fd < 0) return false;
    const buf = this.readBuf;
    for (;;) {
      let n;
      const limit = Error.stackTraceLimit;
      Error.stackTraceLimit = 0; // EAGAIN is the usual outcome: no stack trace to build for it
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch (error) {
        Error.stackTraceLimit = limit;
        if (error.code === "EAGAIN" || error.code === "EWOULDBLOCK") return true;
        if (error.code === "EINTR") continue;
        this.broken();
        return false;
      }
      Error.stackTraceLimit = limit;
      if (n === 0) {
        this.broken();
        return false;
      }
      this.feedBytes(buf.subarray(0, n));
      // A short read took everything the socket held when it ran: any later byte was written after this
      // lookup began, so it need not be waited for.
      if (n < buf.length) return true;
    }
  }

  broken() {
    const onBroken = this.onBroken;
    this.detach();
    if (onBroken) onBroken();
  }

  /** Whether the proof is fresh: read *before* draining. */
  proven() {
    const proof = this.proof;
    if (proof === null) return true;
    if (proof === "unprovable") return false;
    let at;
    try {
      at = proof.instant();
    } catch {
      return false;
    }
    const age = monotonicNs() - at;
    if (at !== 0n && age >= 0n && age <= this.boundNs) return true;
    this.unproven++;
    return false;
  }

  /** The kept result for `address` (after the proof and the drain), or undefined: ask the daemon. */
  lookup(address) {
    if (this.fd < 0 || !this.entries.has(address)) {
      this.misses++;
      return undefined;
    }
    const proven = this.proven(); // the proof first, then the notifications it vouches for
    if (!this.drain() || !proven) {
      this.misses++;
      return undefined;
    }
    const kept = this.entries.get(address);
    if (kept === undefined) {
      this.misses++;
      return undefined;
    }
    if (performance.now() >= kept.deadline) {
      this.entries.delete(address);
      this.misses++;
      return undefined;
    }
    this.entries.delete(address);
    this.entries.set(address, kept);
    this.hits++;
    return kept.result;
  }

  /** A get of `address` is about to be sent: a token for finish(), or null when nothing may be kept. */
  begin(address) {
    if (this.fd < 0) return null;
    const flight = this.inFlight.get(address);
    if (flight === undefined) this.inFlight.set(address, { count: 1, invalidated: false });
    else flight.count++;
    return { address, sentAt: performance.now(), generation: this.generation };
  }

  /** The get ended (`result` undefined: it failed); keeps its answer when allowed. */
  finish(token, result) {
    if (token === null) return;
    if (this.fd >= 0) this.drain(); // a notification about it may have come meanwhile
    const flight = this.inFlight.get(token.address);
    if (flight === undefined) return;
    if (--flight.count <= 0) this.inFlight.delete(token.address);
    if (flight.invalidated || token.generation !== this.generation || this.fd < 0 || result === undefined) return;
    const nearTTL = result.nearTTL;
    if (typeof nearTTL !== "number" || !(nearTTL > 0) || result.value === null || result.value === undefined || !result.hit) return;
    this.entries.delete(token.address);
    this.entries.set(token.address, { result, deadline: token.sentAt + nearTTL });
    while (this.entries.size > this.capacity) {
      this.entries.delete(this.entries.keys().next().value);
    }
  }

  invalidate(params) {
    if (!params || typeof params !== "object" || params.all === true) {
      this.clear();
      return;
    }
    const entries = params.entries;
    if (!Array.isArray(entries)) return;
    for (const entry of entries) {
      if (!entry || typeof entry !== "object") continue;
      let address;
      try {
        address = addressOf(entry);
      } catch {
        this.clear();
        return;
      }
      if (this.entries.delete(address)) this.dropped++;
      const flight = this.inFlight.get(address);
      if (flight !== undefined) flight.invalidated = true;
    }
  }

  clear() {
    this.dropped += this.entries.size;
    this.entries.clear();
    for (const flight of this.inFlight.values()) flight.invalidated = true;
  }
}

module.exports = { NearCache, ProofPage, monotonicNs };
