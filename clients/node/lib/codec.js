"use strict";
// The wire format: one JSON-RPC 2.0 request per line; values as JSON strings (UTF-8) or base64.

const buffer = require("node:buffer");

const isUtf8 =
  typeof buffer.isUtf8 === "function"
    ? buffer.isUtf8
    : (() => {
        const decoder = new TextDecoder("utf-8", { fatal: true });
        return (bytes) => {
          try {
            decoder.decode(bytes);
            return true;
          } catch {
            return false;
          }
        };
      })();

/** JSON text of `value`, with bigints written as JSON integers (exact, any size). */
function toJSON(value) {
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "bigint":
      return value.toString();
    case "number":
      if (!Number.isFinite(value)) throw new TypeError("cannot send a non-finite number: " + value);
      return Object.is(value, -0) ? "0" : JSON.stringify(value);
    case "boolean":
      return value ? "true" : "false";
    case "undefined":
      return "null";
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) return "[" + value.map(toJSON).join(",") + "]";
      if (Buffer.isBuffer(value)) return JSON.stringify(value.toString("base64"));
      if (typeof value.toJSON === "function") return toJSON(value.toJSON());
      let out = "{";
      let first = true;
      for (const name of Object.keys(value)) {
        const member = value[name];
        if (member === undefined || typeof member === "function") continue;
        out += (first ? "" : ",") + JSON.stringify(name) + ":" + toJSON(member);
        first = false;
      }
      return out + "}";
    }
    default:
      throw new TypeError("cannot send a " + typeof value);
  }
}

/** The request line (a string ending in a newline). */
function encodeRequest(id, method, params) {
  let line = '{"jsonrpc":"2.0","id":' + id + ',"method":' + JSON.stringify(method);
  if (params !== undefined && params !== null) line += ',"params":' + toJSON(params);
  return line + "}\n";
}

/** An identity as it goes on the wire: a safe integer, a bigint, or a string. */
function checkIdentity(identity, what) {
  switch (typeof identity) {
    case "string":
    case "bigint":
      return identity;
    case "number":
      if (Number.isSafeInteger(identity)) return identity;
      throw new TypeError(
        what + " must be a safe integer, a bigint or a string (got " + identity + "; use a bigint beyond 2^53)",
      );
    default:
      throw new TypeError(what + " must be a number, a bigint or a string (got " + typeof identity + ")");
  }
}

function checkKey(key, what) {
  if (typeof key !== "string") throw new TypeError(what + " must be a string (got " + typeof key + ")");
  return key;
}

/** {key, identity, hashKey?, hashId?} for a request, checked. */
function entryParams(key, identity, options) {
  const params = { key: checkKey(key, "key"), identity: checkIdentity(identity, "identity") };
  if (options) {
    const { hashKey, hashId } = options;
    if ((hashKey === undefined || hashKey === null) !== (hashId === undefined || hashId === null)) {
      throw new TypeError("hashKey and hashId go together");
    }
    if (hashKey !== undefined && hashKey !== null) {
      params.hashKey = checkKey(hashKey, "hashKey");
      params.hashId = checkIdentity(hashId, "hashId");
    }
  }
  return params;
}

/** Adds `value` (and `encoding` when it is not valid UTF-8) to `params`. */
function putValue(params, value) {
  if (typeof value === "string") {
    // A string with a lone surrogate is not UTF-8: its bytes are what Buffer.from makes of it (U+FFFD).
    params.value = typeof value.isWellFormed !== "function" || value.isWellFormed() ? value : Buffer.from(value).toString();
    return params;
  }
  let bytes;
  if (Buffer.isBuffer(value)) bytes = value;
  else if (value instanceof Uint8Array) bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  else throw new TypeError("a value must be a string, a Buffer or a Uint8Array (got " + typeof value + ")");
  if (isUtf8(bytes)) {
    params.value = bytes.toString("utf8");
  } else {
    params.value = bytes.toString("base64");
    params.encoding = "base64";
  }
  return params;
}

/** The bytes of an answer's value (a Buffer), or null. */
function valueOf(result) {
  const value = result.value;
  if (value === null || value === undefined) return null;
  if (typeof value !== "string") throw new TypeError("the daemon answered a value that is not a string");
  return Buffer.from(value, result.encoding === "base64" ? "base64" : "utf8");
}

function timeoutSeconds(ms) {
  if (typeof ms !== "number" || !(ms > 0) || ms > 86400000) {
    throw new RangeError("timeout must be a number of milliseconds in (0, 86400000] (got " + ms + ")");
  }
  return Math.max(0.001, Math.round(ms) / 1000);
}

// Notifications name integer identities exactly as sent, possibly beyond 2^53: before JSON.parse, each
// integer `identity`/`hashId` becomes a string marked with a NUL (no string identity holds one), so that the
// address is exact. Only an object member name is followed by `":` unescaped, so the pattern never matches
// inside a string.
const INTEGER_MEMBER = /"(identity|hashId)":(-?\d+)/g;

function parseNotification(text) {
  return JSON.parse(text.replace(INTEGER_MEMBER, '"$1":"\\u0000$2"'));
}

/** The near cache's address of an entry: exact, whatever the identities' types. */
function identityPart(identity) {
  if (typeof identity === "string") {
    if (identity.charCodeAt(0) === 0) return "i" + BigInt(identity.slice(1)).toString(); // from a notification
    return "s" + identity;
  }
  return "i" + BigInt(identity).toString(); // number or bigint: -0 is 0, 012 is 12
}

function addressOf(params) {
  let address = params.key + "\u0001" + identityPart(params.identity);
  if (params.hashKey !== undefined && params.hashKey !== null) {
    address += "\u0001" + params.hashKey + "\u0001" + identityPart(params.hashId);
  }
  return address;
}

module.exports = {
  addressOf,
  checkIdentity,
  encodeRequest,
  entryParams,
  isUtf8,
  parseNotification,
  putValue,
  timeoutSeconds,
  toJSON,
  valueOf,
};
