"use strict";
// Test helpers: the shared conformance harness (clients/conformance/harness.py) drives a real daemon.

const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");

const NODE_ROOT = path.resolve(__dirname, "..");
const REPO_ROOT = path.resolve(NODE_ROOT, "..", "..");
const HARNESS = path.join(REPO_ROOT, "clients", "conformance", "harness.py");

let binary;
/** The daemon: $CACHED_BIN, else `swift build --show-bin-path`/cached of the repository. */
function cachedBinary() {
  if (binary !== undefined) return binary;
  if (process.env.CACHED_BIN) return (binary = process.env.CACHED_BIN);
  try {
    const dir = execFileSync("swift", ["build", "--show-bin-path"], { cwd: REPO_ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    binary = path.join(dir, "cached");
  } catch {
    binary = path.join(REPO_ROOT, ".build", "debug", "cached");
  }
  return binary;
}

/** A harness process (`--store embedded|redis`): `await h.cmd({cmd: "restart"})`, `h.socket`. */
class Harness {
  static async start(store) {
    const h = new Harness(store);
    await h.ready;
    return h;
  }

  constructor(store) {
    this.store = store;
    this.proc = spawn("python3", [HARNESS, "--store", store, "--bin", cachedBinary()], { stdio: ["pipe", "pipe", "inherit"] });
    this.waiting = [];
    this.exited = false;
    const lines = readline.createInterface({ input: this.proc.stdout });
    this.ready = new Promise((resolve, reject) => {
      this.waiting.push({
        resolve: (answer) => {
          if (!answer.socket) reject(new Error("the harness did not start: " + JSON.stringify(answer)));
          this.socket = answer.socket;
          this.redisSocket = answer.redisSocket;
          resolve(this);
        },
        reject,
      });
    });
    lines.on("line", (line) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter.resolve(JSON.parse(line));
    });
    this.proc.on("exit", (code) => {
      this.exited = true;
      for (const waiter of this.waiting.splice(0)) waiter.reject(new Error("the harness exited (" + code + ")"));
    });
  }

  /** Runs a harness command; rejects when it answers ok: false. */
  cmd(command) {
    return new Promise((resolve, reject) => {
      if (this.exited) return reject(new Error("the harness exited"));
      this.waiting.push({
        resolve: (answer) => (answer.ok ? resolve(answer) : reject(new Error("harness " + command.cmd + ": " + answer.error))),
        reject,
      });
      this.proc.stdin.write(JSON.stringify(command) + "\n");
    });
  }

  async quit() {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.proc.stdin.end(JSON.stringify({ cmd: "quit" }) + "\n");
    await exited;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads (via the harness) what Redis holds under `name`: a Buffer or null. */
async function redisGet(harness, name) {
  const { reply } = await harness.cmd({ cmd: "redis", args: ["GET", name] });
  return reply === null ? null : Buffer.from(reply.base64, "base64");
}

function haveBinary() {
  return fs.existsSync(cachedBinary()) && fs.existsSync(HARNESS);
}

module.exports = { Harness, NODE_ROOT, REPO_ROOT, cachedBinary, haveBinary, redisGet, sleep };
