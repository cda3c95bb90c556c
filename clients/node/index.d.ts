/// <reference types="node" />
// Type declarations of cached-client (the same for the CommonJS and the ESM entry points).

/** An entry's identity: a safe integer, a bigint (any size), or a string (1 to 256 bytes, no control characters). */
export type Identity = number | bigint | string;

/** A value to store: text (its UTF-8 bytes) or bytes (sent base64 when not valid UTF-8). */
export type Value = string | Buffer | Uint8Array;

export interface CachedClientOptions {
  /** The daemon's Unix socket; default `$CACHED_SOCKET`, else `/run/cached/cached.sock`. */
  socket?: string;
  /** Default timeout of every request, in milliseconds (default 30000). Sent to the daemon as `timeout`. */
  timeout?: number;
  /** Entries kept in the process by the near cache (default 0: none). */
  nearCache?: number;
}

export interface CallOptions {
  /** This request's timeout in milliseconds (default: the client's): the daemon answers -32009 at it. */
  timeout?: number;
}

export interface EntryOptions extends CallOptions {
  /** The hash the entry lives in (with `hashId`). */
  hashKey?: string;
  hashId?: Identity;
}

export interface SetOptions extends EntryOptions {
  /** Seconds (fractions allowed); 0: no expiry; absent: the key's configured ttl. */
  ttl?: number;
}

export interface FetchOptions extends SetOptions {
  /** Passed to the key's sync handler, if it has one. */
  args?: unknown[];
  kwargs?: Record<string, unknown>;
}

export interface GetResult {
  /** true: answered from the store; false: a miss (value null), or filled by the key's sync handler. */
  hit: boolean;
  /** The entry's bytes (a new Buffer each call), or null. */
  value: Buffer | null;
  /** A hit past the key's ttl, within its stale window or grace. */
  stale: boolean;
}

export interface NearStats {
  entries: number;
  hits: number;
  misses: number;
  /** Lookups refused because the daemon's proof was not fresh. */
  unproven: number;
  dropped: number;
  /** Whether the current connection's notification connection is up (else nothing is served or kept). */
  attached: boolean;
}

export type Fill = () => Value | null | undefined | Promise<Value | null | undefined>;

export declare class CachedClient {
  constructor(options?: CachedClientOptions);
  readonly socketPath: string;
  readonly timeout: number;
  /** Why the near cache could not be set up on the current connection (null: no problem). */
  readonly nearError: Error | null;
  /** A plain read: sends `lease: false`, so it never takes a lease and never waits for another client's fill. */
  get(key: string, identity: Identity, options?: EntryOptions): Promise<GetResult>;
  /** Stores the value; resolves true when stored. */
  set(key: string, identity: Identity, value: Value, options?: SetOptions): Promise<boolean>;
  /** Resolves whether the entry existed. */
  delete(key: string, identity: Identity, options?: EntryOptions): Promise<boolean>;
  /** Deletes a whole hash; resolves whether it existed. */
  deleteHash(hashKey: string, hashId: Identity, options?: CallOptions): Promise<boolean>;
  /**
   * Read-through with the lease flow: on a miss with a lease, `fill()` runs, its value is stored with the lease
   * and returned; if `fill` throws, the lease is released and the same error rethrown; null/undefined from
   * `fill` releases the lease and resolves null. Concurrent fetches of one entry through one client share one
   * call (one fill). A key with a sync handler is filled by the daemon (`fill` is not called).
   */
  fetch(key: string, identity: Identity, fill: Fill, options?: FetchOptions): Promise<Buffer | null>;
  /** Any method (admin ones: stats, metrics...); resolves its `result`, rejects with CachedError. */
  call(method: string, params?: Record<string, unknown>, options?: CallOptions): Promise<any>;
  ping(options?: CallOptions): Promise<"pong">;
  stats(options?: CallOptions): Promise<Record<string, any>>;
  nearStats(): NearStats | null;
  /** Closes the connection: requests in flight and later calls fail with CachedConnectionError. */
  close(): void;
}

/** An error answer of the daemon (or, as CachedConnectionError, of the connection). */
export declare class CachedError extends Error {
  constructor(code: number, message: string, data?: unknown, options?: { cause?: unknown });
  /** The JSON-RPC code (see `codes`); -1 (CONNECTION_ERROR) for CachedConnectionError. */
  readonly code: number;
  /** The error's `data` member, when the daemon sent one (-32001: {limit, value}; -32009: {timeout}). */
  readonly data?: any;
}

/** The daemon could not be reached, or the connection ended before the answer (code -1). */
export declare class CachedConnectionError extends CachedError {
  constructor(message: string, options?: { cause?: unknown });
  readonly code: -1;
}

export declare const codes: {
  readonly PARSE_ERROR: -32700;
  readonly INVALID_REQUEST: -32600;
  readonly METHOD_NOT_FOUND: -32601;
  readonly INVALID_PARAMS: -32602;
  readonly INTERNAL_ERROR: -32603;
  readonly STORE_UNAVAILABLE: -32000;
  readonly LIMIT_EXCEEDED: -32001;
  readonly STORE_TIMEOUT: -32002;
  readonly STORE_ERROR: -32003;
  readonly HANDLER_ERROR: -32004;
  readonly HANDLER_TIMEOUT: -32005;
  readonly OVERLOADED: -32006;
  readonly SHUTTING_DOWN: -32007;
  readonly ACCESS_DENIED: -32008;
  readonly DEADLINE_EXCEEDED: -32009;
  /** The peer's [[access]] rules do not allow this request ("uid 33 may not write Student"). */
  readonly ACCESS_REFUSED: -32010;
  readonly CONNECTION_ERROR: -1;
};

export declare const PARSE_ERROR: -32700;
export declare const INVALID_REQUEST: -32600;
export declare const METHOD_NOT_FOUND: -32601;
export declare const INVALID_PARAMS: -32602;
export declare const INTERNAL_ERROR: -32603;
export declare const STORE_UNAVAILABLE: -32000;
export declare const LIMIT_EXCEEDED: -32001;
export declare const STORE_TIMEOUT: -32002;
export declare const STORE_ERROR: -32003;
export declare const HANDLER_ERROR: -32004;
export declare const HANDLER_TIMEOUT: -32005;
export declare const OVERLOADED: -32006;
export declare const SHUTTING_DOWN: -32007;
export declare const ACCESS_DENIED: -32008;
export declare const DEADLINE_EXCEEDED: -32009;
export declare const ACCESS_REFUSED: -32010;
export declare const CONNECTION_ERROR: -1;

export declare const DEFAULT_SOCKET: "/run/cached/cached.sock";
export declare const DEFAULT_TIMEOUT_MS: 30000;
/** `$CACHED_SOCKET` if set and not empty, else DEFAULT_SOCKET. */
export declare function defaultSocketPath(): string;
