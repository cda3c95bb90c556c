#!/usr/bin/env node
"use strict";
// The interop program (issue 25): one JSON request per stdin line, one answer line each on stdout.
//   {"op":"set","socket":S,"key":K,"identity":I,"value":B64}  -> {"ok":true}
//   {"op":"get","socket":S,"key":K,"identity":I}              -> {"hit":true,"value":B64} | {"hit":false,"value":null}
//   errors                                                     -> {"error":{"code":C,"message":M}}
// An identity may also be {"bigint":"123..."}. Lines are answered in order.

// `node --test clients/node/test/` runs every .js file of the directory: as a test file this does nothing.
if (process.env.NODE_TEST_CONTEXT) process.exit(0);

const readline = require("node:readline");
const { CachedClient, CachedError } = require("..");

const clients = new Map();
function clientFor(socket) {
  let client = clients.get(socket);
  if (!client) clients.set(socket, (client = new CachedClient({ socket })));
  return client;
}

function identityOf(identity) {
  return identity !== null && typeof identity === "object" && typeof identity.bigint === "string" ? BigInt(identity.bigint) : identity;
}

async function answer(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    return { error: { code: -32700, message: "not JSON: " + error.message } };
  }
  try {
    const client = clientFor(request.socket || undefined);
    const identity = identityOf(request.identity);
    switch (request.op) {
      case "set":
        await client.set(request.key, identity, Buffer.from(request.value, "base64"));
        return { ok: true };
      case "get": {
        const result = await client.get(request.key, identity);
        return result.value === null ? { hit: result.hit, value: null } : { hit: result.hit, value: result.value.toString("base64") };
      }
      default:
        return { error: { code: -32601, message: "unknown op " + JSON.stringify(request.op) } };
    }
  } catch (error) {
    return { error: { code: error instanceof CachedError ? error.code : -32603, message: String(error && error.message) } };
  }
}

const lines = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
lines.on("line", (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => process.stdout.write(JSON.stringify(await answer(line)) + "\n"));
});
lines.on("close", () => chain.then(() => clients.forEach((client) => client.close())));
