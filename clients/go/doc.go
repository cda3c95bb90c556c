// Package cached is a client of the cached daemon, a local read-through cache for Redis, over its
// Unix socket (newline-delimited JSON-RPC 2.0, docs/protocol.md of the cached repository).
//
// A Client is safe for concurrent use: requests are pipelined on a small pool of connections,
// answers matched by id, and connections that end are replaced by themselves.
//
//	c, err := cached.Dial(ctx, "") // $CACHED_SOCKET, else /run/cached/cached.sock
//	err = c.Set(ctx, "Student", 12, []byte(`{"name":"Ada"}`), time.Minute)
//	r, err := c.Get(ctx, "Student", 12) // r.Hit, r.Value, r.Stale
//	v, err := c.Fetch(ctx, "Student", 13, func(ctx context.Context) ([]byte, error) { return load(13) })
//
// Every call takes a context first: its deadline is sent as the request's timeout (the daemon
// answers ErrDeadlineExceeded at it), and its cancellation returns ctx.Err() at once. Errors the
// daemon answers are *Error values, matched by code with errors.Is against ErrInvalidParams,
// ErrStoreUnavailable, ErrDeadlineExceeded and the other sentinels; transport failures match
// ErrUnavailable.
//
// WithNearCache keeps answers in the process, coherent through the daemon's invalidation
// notifications and within its staleness bound (the proof page); README.md describes the design.
package cached
