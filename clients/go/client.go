package cached

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultSocket is the daemon's socket when neither Dial's path nor $CACHED_SOCKET names one.
const DefaultSocket = "/run/cached/cached.sock"

// DefaultTimeout is the timeout sent with a request whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// answerGrace is how much longer than a request's timeout the client waits for the daemon's
// answer: the daemon answers -32009 at the deadline itself, so this only guards against a daemon
// that stalled.
const answerGrace = 500 * time.Millisecond

// Client is a connection pool to one cached daemon. It is safe for concurrent use by many
// goroutines: requests are pipelined on a small pool of connections and answers are matched by
// id. A connection that ends (the daemon restarted, or closed it after an oversized line) is
// replaced by a new one on the next request; requests in flight on it fail with an error that
// matches ErrUnavailable.
type Client struct {
	path    string
	timeout time.Duration
	slots   []slot
	rr      atomic.Uint32
	ids     atomic.Uint64
	closed  atomic.Bool
	near    *nearCache

	flightsMu sync.Mutex
	flights   map[string]*flight

	stop chan struct{}
}

type slot struct {
	mu   sync.Mutex
	conn *conn
}

type dialOptions struct {
	pool      int
	near      int
	timeout   time.Duration
	noConnect bool
}

// DialOption configures Dial.
type DialOption func(*dialOptions)

// WithPoolSize sets how many connections the client opens at most (default 2). With a near
// cache, one of them is the tracked connection that carries every get.
func WithPoolSize(n int) DialOption {
	return func(o *dialOptions) {
		if n > 0 {
			o.pool = n
		}
	}
}

// WithNearCache keeps up to n get answers in the process (default 0: none), coherent through the
// daemon's invalidation notifications and within its staleness bound (see the package
// documentation and README.md).
func WithNearCache(n int) DialOption {
	return func(o *dialOptions) {
		if n > 0 {
			o.near = n
		}
	}
}

// WithDefaultTimeout sets the timeout sent with requests whose context has no deadline (default
// DefaultTimeout, 30 s).
func WithDefaultTimeout(d time.Duration) DialOption {
	return func(o *dialOptions) {
		if d > 0 {
			o.timeout = d
		}
	}
}

// WithLazyConnect makes Dial return without connecting: the first request connects.
func WithLazyConnect() DialOption {
	return func(o *dialOptions) { o.noConnect = true }
}

// Dial returns a client of the daemon at socketPath (empty: $CACHED_SOCKET, else DefaultSocket).
// It connects once before returning (bounded by ctx), so that a missing daemon is reported here;
// later connections are opened as needed.
func Dial(ctx context.Context, socketPath string, opts ...DialOption) (*Client, error) {
	if socketPath == "" {
		socketPath = os.Getenv("CACHED_SOCKET")
	}
	if socketPath == "" {
		socketPath = DefaultSocket
	}
	o := dialOptions{pool: 2, timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{path: socketPath, timeout: o.timeout, slots: make([]slot, o.pool), flights: make(map[string]*flight),
		stop: make(chan struct{})}
	if o.near > 0 {
		c.near = newNearCache(o.near)
		go c.near.background(c.stop)
	}
	if !o.noConnect {
		if _, err := c.connAt(ctx, 0); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// SocketPath is the daemon's socket this client connects to.
func (c *Client) SocketPath() string { return c.path }

// Close closes every connection. Requests in flight fail; later calls return ErrClosed.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	close(c.stop)
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		if s.conn != nil {
			s.conn.close()
		}
		s.mu.Unlock()
	}
	if c.near != nil {
		c.near.shutdown()
	}
	return nil
}

// connAt returns the live connection of slot i, connecting it when needed.
func (c *Client) connAt(ctx context.Context, i int) (*conn, error) {
	s := &c.slots[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if s.conn != nil && !s.conn.isDead() {
		return s.conn, nil
	}
	cn, err := dialConn(ctx, c.path)
	if err != nil {
		return nil, err
	}
	if c.near != nil && i == 0 {
		cn.onClose = func() { c.near.connectionEnded(cn.gen.Load()) }
		cn.start()
		if err := c.track(ctx, cn); err != nil {
			cn.close()
			return nil, err
		}
	} else {
		cn.start()
	}
	s.conn = cn
	return cn, nil
}

// pick returns a connection for a request: the tracked one for gets when there is a near cache,
// else the pool in turn.
func (c *Client) pick(ctx context.Context, get bool) (*conn, error) {
	n := len(c.slots)
	if c.near != nil {
		if get || n == 1 {
			return c.connAt(ctx, 0)
		}
		return c.connAt(ctx, 1+int(c.rr.Add(1)%uint32(n-1)))
	}
	return c.connAt(ctx, int(c.rr.Add(1)%uint32(n)))
}

// request is one request being built: the line starts with the envelope and the params' opening
// brace; the method appends its params after it, without the closing braces.
type request struct {
	id   uint64
	buf  []byte
	wait time.Duration // timeout + grace, when ctx has no deadline
}

func (c *Client) newRequest(ctx context.Context, method string, extra int) (*request, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &request{id: c.ids.Add(1), buf: make([]byte, 0, 128+extra)}
	r.buf = append(r.buf, `{"jsonrpc":"2.0","id":`...)
	r.buf = appendUint(r.buf, r.id)
	r.buf = append(r.buf, `,"method":`...)
	r.buf = appendString(r.buf, method)
	r.buf = append(r.buf, `,"params":{"timeout":`...)
	timeout := c.timeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	} else {
		r.wait = timeoutSeconds(timeout) + answerGrace
	}
	r.buf = appendSeconds(r.buf, timeoutSeconds(timeout))
	return r, nil
}

func appendUint(buf []byte, v uint64) []byte {
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(buf, tmp[i:]...)
}

// roundTrip sends r on cn (or, when cn is nil or dead, on a connection of the pool) and waits for
// its answer. late, when set, receives the answer if the caller stops waiting first (ctx).
func (c *Client) roundTrip(ctx context.Context, cn *conn, get bool, r *request, late func(answer)) (json.RawMessage, error) {
	r.buf = append(r.buf, "}}\n"...)
	cl := &call{ch: make(chan answer, 1), lineLen: len(r.buf)}
	for attempt := 0; ; attempt++ {
		if cn == nil || attempt > 0 {
			var err error
			if cn, err = c.pick(ctx, get); err != nil {
				return nil, err
			}
		}
		err := cn.send(r.id, r.buf, cl)
		if err == nil {
			break
		}
		if attempt >= 2 {
			return nil, unavailable(nil, "cannot send to %s: the connection keeps closing", c.path)
		}
	}
	return c.wait(ctx, cn, r, cl, late)
}

func (c *Client) wait(ctx context.Context, cn *conn, r *request, cl *call, late func(answer)) (json.RawMessage, error) {
	var timer <-chan time.Time
	if r.wait > 0 {
		t := time.NewTimer(r.wait)
		defer t.Stop()
		timer = t.C
	}
	select {
	case a := <-cl.ch:
		return a.result, a.err
	case <-ctx.Done():
		if ctx.Err() == context.DeadlineExceeded {
			// The daemon answers -32009 at the same deadline: wait a moment for its answer.
			t := time.NewTimer(answerGrace)
			defer t.Stop()
			select {
			case a := <-cl.ch:
				return a.result, a.err
			case <-t.C:
			}
		}
		cn.abandon(r.id, cl, late)
		return nil, ctx.Err()
	case <-timer:
		cn.abandon(r.id, cl, late)
		return nil, unavailable(nil, "no answer from %s within %v", c.path, r.wait)
	}
}

// Call sends one request of any method (admin methods such as "stats", "ping", "metrics") with
// params (anything encoding/json turns into an object, or nil) and returns its raw result. The
// context's deadline becomes the request's timeout, unless params names its own "timeout".
func (c *Client) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	var raw []byte
	if params != nil {
		var err error
		if raw, err = json.Marshal(params); err != nil {
			return nil, invalidParams("params cannot be encoded: %v", err)
		}
	}
	r, err := c.newRequest(ctx, method, len(raw))
	if err != nil {
		return nil, err
	}
	if len(raw) > 0 && string(raw) != "null" {
		var members map[string]json.RawMessage
		if json.Unmarshal(raw, &members) != nil {
			return nil, invalidParams("params must encode as a JSON object")
		}
		if _, own := members["timeout"]; own {
			// The caller's own timeout: start the params again without ours.
			r.buf = r.buf[:0]
			r.buf = append(r.buf, `{"jsonrpc":"2.0","id":`...)
			r.buf = appendUint(r.buf, r.id)
			r.buf = append(r.buf, `,"method":`...)
			r.buf = appendString(r.buf, method)
			r.buf = append(r.buf, `,"params":`...)
			r.buf = append(r.buf, raw[:len(raw)-1]...)
			var seconds float64
			if json.Unmarshal(members["timeout"], &seconds) == nil && seconds > 0 && r.wait > 0 {
				r.wait = time.Duration(seconds*float64(time.Second)) + answerGrace
			}
		} else if len(members) > 0 {
			r.buf = append(r.buf, ',')
			r.buf = append(r.buf, raw[1:len(raw)-1]...)
		}
	}
	return c.roundTrip(ctx, nil, method == "get", r, nil)
}
