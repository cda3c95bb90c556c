"use strict";
// cached-client: the Node.js client of cached (docs/protocol.md). CommonJS entry point.

const { CachedClient, DEFAULT_SOCKET, DEFAULT_TIMEOUT_MS, defaultSocketPath } = require("./lib/client");
const { codes, CachedError, CachedConnectionError } = require("./lib/errors");

module.exports = {
  CachedClient,
  CachedError,
  CachedConnectionError,
  codes,
  ...codes,
  DEFAULT_SOCKET,
  DEFAULT_TIMEOUT_MS,
  defaultSocketPath,
};
