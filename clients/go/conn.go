package cached

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// answer is what a request ends with: the raw result, or an error (*Error or a transport error).
type answer struct {
	result json.RawMessage
	err    error
}

// call is one request waiting for its answer on a conn.
type call struct {
	ch      chan answer // buffered: the reader never blocks on it
	lineLen int
	// late, when set, gets the answer instead of ch: the caller gave up on it (its context ended),
	// and the answer may hold a lease that must be given back.
	late func(answer)
}

// conn is one connection to the daemon: pipelined requests, answers matched by id by one reader
// goroutine.
type conn struct {
	c   *net.UnixConn
	wmu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]*call
	dead    bool // takes no new requests
	done    chan struct{}

	// near-cache bookkeeping: the generation the near cache gave this connection (0: untracked).
	gen atomic.Uint64
	// onClose runs once the reader has ended.
	onClose func()
}

// errNotSent: the request was never written; it may be sent again on another connection.
var errNotSent = errors.New("not sent")

func dialConn(ctx context.Context, path string) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailable(err, "cannot connect to %s", path)
	}
	c := &conn{c: nc.(*net.UnixConn), pending: make(map[uint64]*call), done: make(chan struct{})}
	return c, nil
}

func (c *conn) start() { go c.readLoop() }

func (c *conn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// send registers cl under id and writes line. errNotSent when nothing was written (the connection
// is dead, or the write failed before its first byte).
func (c *conn) send(id uint64, line []byte, cl *call) error {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return errNotSent
	}
	c.pending[id] = cl
	c.mu.Unlock()
	c.wmu.Lock()
	n, err := c.c.Write(line)
	c.wmu.Unlock()
	if err == nil {
		return nil
	}
	// The connection is unusable for writing. The reader may still deliver what the daemon answers
	// (an oversized line is answered -32001 before the daemon closes), so it is left to end by
	// itself, with a backstop.
	c.mu.Lock()
	c.dead = true
	if n == 0 {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	time.AfterFunc(2*time.Second, func() { c.c.Close() })
	if n == 0 {
		return errNotSent
	}
	return nil
}

// abandon is called when the caller of id stops waiting. With late set, a still-pending answer is
// handed to late when it arrives; an answer already delivered is handed to late at once.
func (c *conn) abandon(id uint64, cl *call, late func(answer)) {
	c.mu.Lock()
	if _, ok := c.pending[id]; ok {
		if late != nil {
			cl.late = late
		} else {
			delete(c.pending, id)
		}
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if late != nil {
		select {
		case a := <-cl.ch:
			late(a)
		default:
		}
	}
}

// close ends the connection: every pending request fails.
func (c *conn) close() {
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
	c.c.Close()
}

type envelope struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *wireError      `json:"error"`
	Method string          `json:"method"`
}

type wireError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

func (w *wireError) toError() *Error {
	e := &Error{Code: w.Code, Message: w.Message}
	if len(w.Data) > 0 && !bytes.Equal(w.Data, []byte("null")) {
		e.Data = w.Data
	}
	return e
}

func (c *conn) deliver(id uint64, a answer) {
	c.mu.Lock()
	cl, ok := c.pending[id]
	if ok {
		delete(c.pending, id)
	}
	var late func(answer)
	if ok {
		late = cl.late
	}
	c.mu.Unlock()
	if !ok {
		return // an answer nobody waits for any longer
	}
	if late != nil {
		go late(a)
		return
	}
	cl.ch <- a
}

func (c *conn) readLoop() {
	r := bufio.NewReaderSize(c.c, 64<<10)
	var reason error
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if err == io.EOF {
				reason = unavailable(nil, "connection closed by the daemon")
			} else {
				reason = unavailable(err, "connection lost")
			}
			break
		}
		var env envelope
		if jerr := json.Unmarshal(line, &env); jerr != nil {
			reason = unavailable(jerr, "garbled answer from the daemon")
			break
		}
		if env.Method != "" {
			continue // a notification: none is expected on this connection (they come separately)
		}
		var a answer
		if env.Error != nil {
			a.err = env.Error.toError()
		} else {
			a.result = env.Result
		}
		if bytes.Equal(env.ID, []byte("null")) || len(env.ID) == 0 {
			c.nullID(a)
			continue
		}
		id, perr := strconv.ParseUint(string(env.ID), 10, 64)
		if perr != nil {
			continue // not an id of ours
		}
		c.deliver(id, a)
	}
	c.mu.Lock()
	c.dead = true
	pending := c.pending
	c.pending = make(map[uint64]*call)
	c.mu.Unlock()
	c.c.Close()
	for _, cl := range pending {
		if cl.late != nil {
			continue // its lease, if any, ended with the connection
		}
		cl.ch <- answer{err: reason}
	}
	close(c.done)
	if c.onClose != nil {
		c.onClose()
	}
}

// nullID handles an error answered with id null: the daemon could not read the line's id. With
// one request in flight it is that one's; an oversized line (-32001, data.value the limit) is the
// answer of the requests whose lines are longer than the limit. Anything else is left: the
// connection closes after such errors, and the requests fail then.
func (c *conn) nullID(a answer) {
	if a.err == nil {
		return
	}
	limit := -1
	var e *Error
	if errors.As(a.err, &e) && e.Code == CodeLimitExceeded && e.Data != nil {
		var d struct {
			Limit string `json:"limit"`
			Value int    `json:"value"`
		}
		if json.Unmarshal(e.Data, &d) == nil && d.Limit == "max_line_bytes" {
			limit = d.Value
		}
	}
	c.mu.Lock()
	var ids []uint64
	for id, cl := range c.pending {
		if limit >= 0 && cl.lineLen-1 > limit || limit < 0 && len(c.pending) == 1 {
			ids = append(ids, id)
		}
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.deliver(id, a)
	}
}
