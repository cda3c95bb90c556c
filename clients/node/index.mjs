// cached-client: the ESM entry point (the same objects as the CommonJS one).
import cjs from "./index.js";

export const {
  CachedClient,
  CachedError,
  CachedConnectionError,
  codes,
  PARSE_ERROR,
  INVALID_REQUEST,
  METHOD_NOT_FOUND,
  INVALID_PARAMS,
  INTERNAL_ERROR,
  STORE_UNAVAILABLE,
  LIMIT_EXCEEDED,
  STORE_TIMEOUT,
  STORE_ERROR,
  HANDLER_ERROR,
  HANDLER_TIMEOUT,
  OVERLOADED,
  SHUTTING_DOWN,
  ACCESS_DENIED,
  DEADLINE_EXCEEDED,
  ACCESS_REFUSED,
  CONNECTION_ERROR,
  DEFAULT_SOCKET,
  DEFAULT_TIMEOUT_MS,
  defaultSocketPath,
} = cjs;
export default cjs;
