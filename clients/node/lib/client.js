"use strict";

const fs = require("node:fs");
const net = require("node:net");
const { codes, CachedError, CachedConnectionError } = require("./errors");
const { addressOf, encodeRequest, entryParams, putValue, timeoutSeconds, valueOf } = require("./codec");
const { NearCache } = require("./near");

const DEFAULT_SOCKET = "/run/cached/cached.sock";
const DEFAULT_TIMEOUT_MS = 30000;
/** How much longer than a request's `timeout` the client waits for the answer before giving up by itself:
 * the daemon answers -32009 at the deadline, so the local timer only fires for a stalled daemon. */
const BACKSTOP_GRACE_MS = 1000;

function defaultSocketPath() {
  return process.env.CACHED_SOCKET || DEFAULT_SOCKET;
}

function errorOf(error) {
  if (!error || typeof error !== "object") return new CachedError(codes.INTERNAL_ERROR, "cached answered a malformed error: " + JSON.stringify(error));
  const code = typeof error.code === "number" ? error.code : codes.INTERNAL_ERROR;
  return new CachedError(code, String(error.message ?? "error " + code), error.data);
}

function getResult(result) {
  return { hit: result.hit === true, value: valueOf(result), stale: result.stale === true };
}

/** One connection to the daemon (and, with a near cache, its notification connection). */
class Link {
  constructor(client) {
    this.client = client;
    this.pending = new Map();
    this.parts = [];
    this.dead = false;
    this.corked = false;
    this.notifications = null;
    this.nullError = null;
    this.socket = net.createConnection({ path: client.socketPath });
    this.connected = new Promise((resolve, reject) => {
      this.socket.once("connect", () => {
        resolve();
      });
      this.socket.once("error", (error) => reject(new CachedConnectionError("cannot connect to cached at " + client.socketPath + ": " + error.message, { cause: error })));
    });
    this.connected.catch(() => {});
    this.socket.on("data", (chunk) => this.onData(chunk));
    const destroy = this.socket._destroy;
    this.socket._destroy = (error, callback) => {
      if (error && !this.dead) this.salvage();
      return destroy.call(this.socket, error, callback);
    };
    this.socket.on("error", (error) => this.kill("connection to cached at " + client.socketPath + " failed: " + error.message, error));
    this.socket.on("end", () => this.kill("connection to cached at " + client.socketPath + " closed by the daemon"));
    this.socket.on("close", () => this.kill("connection to cached at " + client.socketPath + " closed"));
    this.socket.unref();
  }

  onData(chunk) {
    let start = 0;
    for (;;) {
      const end = chunk.indexOf(10, start);
      if (end < 0) break;
      let line;
      if (this.parts.length) {
        this.parts.push(chunk.subarray(start, end));
        line = Buffer.concat(this.parts);
        this.parts = [];
      } else {
        line = chunk.subarray(start, end);
      }
      start = end + 1;
      this.onLine(line);
      if (this.dead) return;
    }
    if (start < chunk.length) this.parts.push(start ? chunk.subarray(start) : chunk);
  }

  onLine(line) {
    let answer;
    try {
      answer = JSON.parse(line.toString("utf8"));
    } catch (error) {
      this.kill("garbled answer from cached: " + error.message);
      this.socket.destroy();
      return;
    }
    if (answer === null || typeof answer !== "object" || Array.isArray(answer)) return;
    if (answer.id === undefined) return; // a notification (they come on the notification connection)
    let request = typeof answer.id === "number" ? this.pending.get(answer.id) : undefined;
    if (request === undefined && answer.id === null && answer.error) {
      if (answer.error.code === codes.LIMIT_EXCEEDED) this.retire(); // the daemon closes the connection after it
      request = this.ownerOfNullError(answer.error);
      if (request === undefined) {
        this.nullError = answer.error; // told to every request in flight if the daemon closes now (-32001)
        return;
      }
    }
    if (request === undefined) return; // one that timed out locally
    this.finish(request);
    if (answer.error !== undefined) request.reject(errorOf(answer.error));
    else request.resolve(answer.result);
  }

  /** The request an error with a null id (the daemon could not read the line's id) belongs to. */
  ownerOfNullError(error) {
    if (this.pending.size === 1) return this.pending.values().next().value;
    if (error && error.code === codes.LIMIT_EXCEEDED) {
      // A line over max_line_bytes: the longest line in flight.
      let longest;
      for (const request of this.pending.values()) if (!longest || request.bytes > longest.bytes) longest = request;
      return longest;
    }
    return undefined;
  }

  send(method, params, timeoutMs, internal) {
    return new Promise((resolve, reject) => {
      if (this.dead || this.retired) {
        reject(new CachedConnectionError("connection to cached at " + this.client.socketPath + " closed"));
        return;
      }
      const id = this.client.nextId++;
      let line;
      try {
        line = encodeRequest(id, method, params);
      } catch (error) {
        reject(error);
        return;
      }
      const request = { id, method, bytes: line.length, resolve, reject, timer: null };
      const backstop = timeoutMs + BACKSTOP_GRACE_MS;
      request.timer = setTimeout(() => {
        if (this.pending.get(id) !== request) return;
        this.finish(request);
        reject(
          new CachedError(codes.DEADLINE_EXCEEDED, "cached did not answer " + method + " within " + backstop + " ms (the client's own timer: the daemon may be stalled)", {
            timeout: timeoutMs / 1000,
            local: true,
          }),
        );
      }, backstop);
      if (internal) request.timer.unref();
      this.pending.set(id, request);
      if (this.pending.size === 1) this.socket.ref();
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      this.socket.write(line);
    });
  }

  finish(request) {
    clearTimeout(request.timer);
    this.pending.delete(request.id);
    if (this.pending.size === 0 && !this.dead) this.socket.unref();
  }

  /** No new request goes out on this connection (the daemon is about to close it): the next call connects anew. */
  retire() {
    if (this.client.link === this) this.client.link = null;
    this.retired = true;
  }

  /** Before the socket's descriptor closes after a write error (EPIPE: the daemon closed it, e.g. after
   * -32001), reads what the daemon answered before closing, so that those answers still reach their callers. */
  salvage() {
    const fd = this.socket._handle && this.socket._handle.fd;
    if (typeof fd !== "number" || fd < 0) return;
    const buf = Buffer.allocUnsafe(65536);
    for (let i = 0; i < 4096 && !this.dead; i++) {
      let n;
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch {
        return; // EAGAIN (nothing more), or the socket is gone
      }
      if (n <= 0) return;
      this.onData(Buffer.from(buf.subarray(0, n)));
    }
  }

  /** The connection is over: every request in flight fails (never hangs); the next call connects anew. */
  kill(message, cause) {
    if (this.dead) return;
    this.dead = true;
    if (this.client.link === this) this.client.link = null;
    if (this.nullError) message += " after answering " + this.nullError.code + " (" + this.nullError.message + ")";
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const request of pending) {
      clearTimeout(request.timer);
      if (this.nullError && pending.length === 1) request.reject(errorOf(this.nullError));
      else request.reject(new CachedConnectionError(message + "; the outcome of " + request.method + " is unknown", cause ? { cause } : undefined));
    }
    const near = this.client.near;
    if (near && near.link === this) {
      near.link = null;
      near.detach(); // nothing tells it of changes any longer
    }
    if (this.notifications) this.notifications.destroy();
    this.socket.destroy();
  }

  /** track {separate: true} on this connection, then the notification connection; errors leave the near cache off. */
  async startNear(near) {
    const result = await this.send("track", { maxEntries: near.capacity, separate: true, timeout: 10 }, 10000, true);
    if (this.dead) return;
    if (!result || typeof result.token !== "string") throw new Error("the daemon answered track without a token");
    await new Promise((resolve, reject) => {
      let handshake = Buffer.alloc(0);
      let claimed = false;
      const socket = net.createConnection({
        path: this.client.socketPath,
        onread: {
          buffer: Buffer.allocUnsafe(65536),
          callback: (n, buf) => {
            if (claimed) {
              if (near.link === this) near.feedBytes(buf.subarray(0, n));
              return;
            }
            handshake = Buffer.concat([handshake, buf.subarray(0, n)]);
            const end = handshake.indexOf(10);
            if (end < 0) return;
            let answer;
            try {
              answer = JSON.parse(handshake.subarray(0, end).toString("utf8"));
            } catch {}
            if (!answer || !answer.result || answer.result.notifications !== true) {
              reject(new Error("the daemon refused the notification connection: " + handshake.subarray(0, end).toString()));
              socket.destroy();
              return;
            }
            const fd = socket._handle && socket._handle.fd;
            if (typeof fd !== "number" || fd < 0 || this.dead) {
              reject(new Error("no file descriptor for the notification connection"));
              socket.destroy();
              return;
            }
            claimed = true;
            near.link = this;
            near.onBroken = () => this.kill("the notification connection to cached at " + this.client.socketPath + " ended");
            near.attach(fd, handshake.subarray(end + 1), result);
            resolve();
          },
        },
      });
      this.notifications = socket;
      // Before libuv closes the descriptor (and the number can be reused), the near cache stops reading it.
      const destroy = socket._destroy;
      socket._destroy = (error, callback) => {
        if (near.link === this) {
          near.link = null;
          near.detach();
        }
        return destroy.call(socket, error, callback);
      };
      socket.unref();
      socket.on("connect", () => {
        socket.write(encodeRequest(1, "notifications", { token: result.token }));
      });
      socket.on("error", (error) => {
        if (!claimed) reject(error);
        this.kill("the notification connection to cached at " + this.client.socketPath + " failed: " + error.message, error);
      });
      socket.on("close", () => {
        if (!claimed) reject(new Error("the notification connection closed"));
        this.kill("the notification connection to cached at " + this.client.socketPath + " closed");
      });
    });
  }
}

class CachedClient {
  /**
   * @param {object} [options]
   * @param {string} [options.socket] the daemon's socket (default `$CACHED_SOCKET`, else /run/cached/cached.sock)
   * @param {number} [options.timeout] default timeout of every request, milliseconds (30000)
   * @param {number} [options.nearCache] entries kept in the process (0: no near cache)
   */
  constructor(options = {}) {
    this.socketPath = options.socket || defaultSocketPath();
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    timeoutSeconds(this.timeout);
    this.nextId = 1;
    this.link = null;
    this.flights = new Map();
    this.closed = false;
    const capacity = Math.max(0, Math.floor(Number(options.nearCache) || 0));
    this.near = capacity > 0 ? new NearCache(capacity) : null;
    if (this.near) this.near.link = null;
    /** The last reason the near cache could not be set up on a connection (null: none). */
    this.nearError = null;
  }

  async _link() {
    if (this.closed) throw new CachedConnectionError("the client is closed");
    let link = this.link;
    if (link === null || link.dead) {
      link = this.link = new Link(this);
      if (this.near) {
        const near = this.near;
        link.connected
          .then(() => link.startNear(near))
          .then(
            () => (this.nearError = null),
            (error) => {
              if (!link.dead) this.nearError = error;
            },
          );
      }
    }
    await link.connected;
    return link;
  }

  async _send(method, params, timeoutMs) {
    const link = await this._link();
    return link.send(method, params, timeoutMs, false);
  }

  _timeoutOf(options) {
    return options && options.timeout !== undefined && options.timeout !== null ? options.timeout : this.timeout;
  }

  /** A request with its `timeout` (seconds on the wire) and its result. */
  _request(method, params, options) {
    const timeoutMs = this._timeoutOf(options);
    try {
      params.timeout = timeoutSeconds(timeoutMs);
    } catch (error) {
      return Promise.reject(error);
    }
    return this._send(method, params, timeoutMs);
  }

  async _get(params, options) {
    const near = this.near;
    if (near === null) return this._request("get", params, options);
    const address = addressOf(params);
    const kept = near.lookup(address);
    if (kept !== undefined) return kept;
    const token = near.begin(address);
    let result;
    try {
      result = await this._request("get", params, options);
    } finally {
      near.finish(token, result);
    }
    return result;
  }

  /** A plain read: never takes a lease, never waits for another client's fill. */
  async get(key, identity, options) {
    const params = entryParams(key, identity, options);
    params.lease = false;
    return getResult(await this._get(params, options));
  }

  /** Stores `value` (string, Buffer or Uint8Array); resolves `true` when stored. `ttl` in seconds. */
  async set(key, identity, value, options) {
    const params = putValue(entryParams(key, identity, options), value);
    if (options && options.ttl !== undefined && options.ttl !== null) params.ttl = options.ttl;
    const result = await this._request("set", params, options);
    return result.stored === true;
  }

  async delete(key, identity, options) {
    const result = await this._request("delete", entryParams(key, identity, options), options);
    return result.deleted === 1 || result.deleted === true;
  }

  async deleteHash(hashKey, hashId, options) {
    const params = entryParams("unused", 0, { hashKey, hashId });
    const result = await this._request("deleteHash", { hashKey: params.hashKey, hashId: params.hashId }, options);
    return result.deleted === 1 || result.deleted === true;
  }

  /**
   * Read-through with the lease flow: on a miss with a lease, `fill()` computes the value, which is stored
   * with the lease and returned; if `fill` throws, the lease is released and the same error rethrown; a
   * `fill` that returns null/undefined releases the lease and resolves null. Waiters get the holder's value.
   */
  fetch(key, identity, fill, options) {
    if (typeof fill !== "function") return Promise.reject(new TypeError("fill must be a function"));
    let params;
    try {
      params = entryParams(key, identity, options);
    } catch (error) {
      return Promise.reject(error);
    }
    // One connection is one lease holder to the daemon (a holder that asks again is given a new lease):
    // concurrent fetches of one entry through this client share one flight, so one fill.
    const address = addressOf(params);
    const joined = this.flights.get(address);
    if (joined !== undefined) return joined.then((value) => (value === null ? null : Buffer.from(value)));
    const flight = this._fetch(params, key, identity, fill, options);
    this.flights.set(address, flight);
    const done = () => {
      if (this.flights.get(address) === flight) this.flights.delete(address);
    };
    flight.then(done, done);
    return flight.then((value) => (value === null ? null : Buffer.from(value)));
  }

  async _fetch(params, key, identity, fill, options) {
    if (options && options.args !== undefined) params.args = options.args;
    if (options && options.kwargs !== undefined) params.kwargs = options.kwargs;
    const answer = await this._get(params, options);
    if (answer.hit === true || typeof answer.lease !== "string") return valueOf(answer);
    const lease = answer.lease;
    const entry = entryParams(key, identity, options);
    let value;
    try {
      value = await fill();
    } catch (error) {
      await this._request("release", { ...entry, lease }, options).catch(() => {});
      throw error;
    }
    if (value === null || value === undefined) {
      await this._request("release", { ...entry, lease }, options).catch(() => {});
      return null;
    }
    const setParams = putValue({ ...entry, lease }, value);
    if (options && options.ttl !== undefined && options.ttl !== null) setParams.ttl = options.ttl;
    try {
      // {stored: false} (the lease was revoked or the entry written meanwhile) is no error: the caller still
      // gets the value it filled.
      await this._request("set", setParams, options);
    } catch (error) {
      if (error instanceof CachedError && error.code === codes.INVALID_PARAMS) throw error;
      // Store trouble: the value is still the freshest there is (the daemon hands it to the waiters too).
    }
    return valueOf(setParams);
  }

  /** Any method (admin ones: ping, stats, metrics...): resolves its `result`. */
  call(method, params, options) {
    if (typeof method !== "string") return Promise.reject(new TypeError("method must be a string"));
    const all = params === undefined || params === null ? {} : { ...params };
    let timeoutMs = this._timeoutOf(options);
    if (typeof all.timeout === "number" && !(options && options.timeout != null)) timeoutMs = all.timeout * 1000;
    else {
      try {
        all.timeout = timeoutSeconds(timeoutMs);
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this._send(method, all, timeoutMs);
  }

  ping(options) {
    return this.call("ping", {}, options);
  }

  stats(options) {
    return this.call("stats", {}, options);
  }

  /** Counters of the near cache (null without one). */
  nearStats() {
    const near = this.near;
    if (near === null) return null;
    return { entries: near.entries.size, hits: near.hits, misses: near.misses, unproven: near.unproven, dropped: near.dropped, attached: near.attached };
  }

  /** Closes the connection; requests in flight fail with CachedConnectionError; later calls too. */
  close() {
    this.closed = true;
    const link = this.link;
    this.link = null;
    if (link) link.kill("the client was closed");
  }
}

module.exports = { CachedClient, DEFAULT_SOCKET, DEFAULT_TIMEOUT_MS, defaultSocketPath };
