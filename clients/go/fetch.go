package cached

import (
	"context"
	"errors"
	"time"
)

// flight is one Fetch of an entry in progress in this client; concurrent Fetches of the same
// entry wait for it instead of asking the daemon themselves (the daemon identifies a lease holder
// by its connection, so two askers on one connection would take the lease from each other).
type flight struct {
	done  chan struct{}
	value []byte
	err   error
	// shared: the outcome holds for the waiters too. When false (the leader's fill failed, or its
	// own context ended), each waiter tries again itself, as the daemon passes a released lease on.
	shared bool
}

// Fetch reads an entry through, filling it locally on a miss, with one fill per entry across
// every client of the daemon:
//
//   - a hit returns the stored value;
//   - a miss that hands this caller the entry's lease runs fill, stores its value with the lease
//     (set with "lease"; a refused lease is not an error: the value is still returned) and returns it;
//   - a miss of a key with a sync handler returns the value the daemon filled (nil for the
//     handler's "no such entry"); a miss behind another client's lease returns that client's value
//     once it is stored;
//   - a miss the daemon answers without a lease (it could not trust its miss: writes of the entry
//     kept overtaking its reads) runs fill and returns its value without storing it.
//
// If fill returns an error, the lease is released at once (so the next asker fills without waiting
// for lease_timeout) and that same error is returned unchanged (errors.Is and == work on it). If fill
// returns a nil slice (no such entry), the lease is released and Fetch returns (nil, nil). Concurrent
// Fetches of one entry in one Client share one request and one fill. Options: InHash, WithTTL,
// WithArgs, WithKwargs.
func (c *Client) Fetch(ctx context.Context, key string, identity any, fill func(context.Context) ([]byte, error), opts ...Option) ([]byte, error) {
	o := collect(opts)
	e, err := makeEntry(key, identity, &o)
	if err != nil {
		return nil, err
	}
	if fill == nil {
		return nil, invalidParams("Fetch needs a fill function")
	}
	if c.near != nil {
		if kept, ok := c.near.lookup(e.address); ok {
			r, err := kept.result()
			return r.Value, err
		}
	}
	for {
		c.flightsMu.Lock()
		f, waiting := c.flights[e.address]
		if !waiting {
			f = &flight{done: make(chan struct{})}
			c.flights[e.address] = f
		}
		c.flightsMu.Unlock()
		if waiting {
			select {
			case <-f.done:
				if f.shared {
					if f.value == nil {
						return nil, f.err
					}
					return append([]byte{}, f.value...), f.err
				}
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				continue // the leader's failure was its own: lead a new attempt
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		value, shared, err := c.fetchOnce(ctx, e, &o, fill)
		f.value, f.err, f.shared = value, err, shared
		c.flightsMu.Lock()
		delete(c.flights, e.address)
		c.flightsMu.Unlock()
		close(f.done)
		return value, err
	}
}

func (c *Client) fetchOnce(ctx context.Context, e entry, o *callOptions, fill func(context.Context) ([]byte, error)) ([]byte, bool, error) {
	cn, err := c.pick(ctx, true)
	if err != nil {
		return nil, false, err
	}
	g, err := c.get(ctx, cn, e, true)
	if err != nil {
		return nil, !ownFailure(ctx, err), err
	}
	if g.Hit || g.Value != nil || g.Lease == "" && g.Cached != nil && !*g.Cached {
		// A hit, a value filled by the key's handler or by another client's lease, or the handler's
		// "no such entry" (value null, "cached": false).
		r, err := g.result()
		return r.Value, true, err
	}
	if g.Lease == "" {
		// A miss without a lease: the daemon did not trust its miss enough to make anyone fill (writes
		// of the entry kept overtaking its reads). The value is computed here but not stored: a plain
		// set could overwrite the newer value of one of those writes.
		value, ferr := fill(ctx)
		return value, false, ferr
	}
	value, ferr := fill(ctx)
	if ferr != nil || value == nil {
		bg, cancel := detached()
		_, _ = c.release(bg, cn, e, g.Lease)
		cancel()
		if ferr != nil {
			return nil, false, ferr
		}
		return nil, true, nil
	}
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if ctx.Err() != nil {
		// The caller gave up while filling: its value is still worth storing, for the waiters.
		sctx, cancel = detached()
	}
	_, err = c.set(sctx, cn, e, value, o.ttl, g.Lease)
	cancel()
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			bg, cancel := detached()
			_, _ = c.release(bg, cn, e, g.Lease)
			cancel()
		}
		return nil, false, err
	}
	return value, true, nil
}

// ownFailure: the error belongs to this caller (its context, or its deadline at the daemon), not to
// the entry.
func ownFailure(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, ErrDeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}

// detached is a short context for giving a lease back after the caller's context ended.
func detached() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}
