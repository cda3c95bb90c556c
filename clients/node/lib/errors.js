"use strict";

/** JSON-RPC error codes the daemon answers (docs/protocol.md, "Errors"). */
const codes = Object.freeze({
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  STORE_UNAVAILABLE: -32000,
  LIMIT_EXCEEDED: -32001,
  STORE_TIMEOUT: -32002,
  STORE_ERROR: -32003,
  HANDLER_ERROR: -32004,
  HANDLER_TIMEOUT: -32005,
  OVERLOADED: -32006,
  SHUTTING_DOWN: -32007,
  ACCESS_DENIED: -32008,
  DEADLINE_EXCEEDED: -32009,
  ACCESS_REFUSED: -32010,
  /** Not a JSON-RPC code (the daemon never sends it): the client could not reach the daemon, or the
   * connection ended before the answer (CachedConnectionError). */
  CONNECTION_ERROR: -1,
});

/** An error answer of the daemon: `code` is its JSON-RPC code, `data` its `data` member (if any). */
class CachedError extends Error {
  constructor(code, message, data, options) {
    super(message, options);
    this.name = "CachedError";
    this.code = code;
    if (data !== undefined) this.data = data;
  }
}

/** The daemon could not be reached, or the connection ended before the answer came (code -1). Whether a
 * write sent on a lost connection took effect is unknown. */
class CachedConnectionError extends CachedError {
  constructor(message, options) {
    super(codes.CONNECTION_ERROR, message, undefined, options);
    this.name = "CachedConnectionError";
  }
}

module.exports = { codes, CachedError, CachedConnectionError };
