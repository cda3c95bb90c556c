package cached

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The near cache (WithNearCache): get answers kept in the process, coherent through the daemon's
// invalidate notifications (docs/protocol.md, "track"), within the daemon's staleness bound.
//
// Design. Every get of a client with a near cache goes on one connection of the pool, the tracked
// connection (track {separate: true}). Its notifications come on a second socket, claimed with
// notifications {token}, which no goroutine reads in the background with blocking reads: it is a
// raw non-blocking descriptor that every lookup drains synchronously (read(2) until EAGAIN, under
// the near cache's mutex) before it answers from memory. The daemon writes the notifications of a
// write to that socket before it answers the write, so whatever a goroutine learnt of a write
// (its answer, or anything that happened after it) the notification is already in the socket
// when the lookup drains it, and the entry is gone before it could be served.
//
// Order of a lookup: the proof page's instant is read first, then the socket is drained, then the
// entry is served only if now - instant <= maxStaleness (now on CLOCK_MONOTONIC). An answer is kept
// only if it carries nearTTL, for that long counted from when its get was sent, and only if no
// notification about its entry (or about everything) was applied while its get was in flight (a
// notification may overtake the answer it concerns); the socket is drained once more when the
// answer arrives. A ticker drains an idle client every 100 ms, so that the daemon never finds its
// notifications untaken for a second. When either socket ends, everything kept is dropped.
type nearCache struct {
	mu       sync.Mutex
	capacity int
	entries  map[string]*list.Element
	lru      *list.List // front: most recently used
	inFlight map[string]*nearFlight

	gen       uint64 // of the tracked connection whose notifications fd carries; 0: none
	nextGen   uint64
	fd        int
	partial   []byte
	proof     *proofPage
	bound     int64 // ns; 0: no bound (notifications alone)
	noHits    bool  // a bound that cannot be checked: nothing is served
	lastDrain time.Time
	readBuf   []byte

	hits, misses, unproven atomic.Int64
}

type nearEntry struct {
	address  string
	answer   *getAnswer
	deadline time.Time
}

type nearFlight struct {
	count       int
	invalidated bool
}

type nearToken struct {
	gen  uint64
	sent time.Time
}

// NearStats counts what a client's near cache did.
type NearStats struct {
	// Hits: gets answered from the process.
	Hits int64
	// Misses: gets asked of the daemon (not kept, expired, or no fresh proof).
	Misses int64
	// Unproven: lookups of a kept entry refused because the daemon's proof was not fresh.
	Unproven int64
	// Entries kept now.
	Entries int
}

// NearStats reports the near cache's counters (all zero without a near cache).
func (c *Client) NearStats() NearStats {
	n := c.near
	if n == nil {
		return NearStats{}
	}
	n.mu.Lock()
	entries := len(n.entries)
	n.mu.Unlock()
	return NearStats{Hits: n.hits.Load(), Misses: n.misses.Load(), Unproven: n.unproven.Load(), Entries: entries}
}

func newNearCache(capacity int) *nearCache {
	return &nearCache{capacity: capacity, entries: make(map[string]*list.Element), lru: list.New(),
		inFlight: make(map[string]*nearFlight), fd: -1, readBuf: make([]byte, 16384)}
}

// lookup answers from the process when it may.
func (n *nearCache) lookup(addr string) (*getAnswer, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.entries[addr]; !ok {
		n.misses.Add(1)
		return nil, false
	}
	proven := n.proven() // the proof first, then the notifications it vouches for
	n.drain()
	if !proven {
		n.unproven.Add(1)
		n.misses.Add(1)
		return nil, false
	}
	el, ok := n.entries[addr]
	if !ok {
		n.misses.Add(1)
		return nil, false
	}
	e := el.Value.(*nearEntry)
	if !time.Now().Before(e.deadline) {
		n.remove(el)
		n.misses.Add(1)
		return nil, false
	}
	n.lru.MoveToFront(el)
	n.hits.Add(1)
	return e.answer, true
}

func (n *nearCache) proven() bool {
	if n.fd < 0 || n.noHits {
		return false
	}
	if n.proof == nil {
		return true // no bound: notifications alone
	}
	at := n.proof.instant()
	now, ok := monotonicNow()
	if !ok || at == 0 || at > now {
		return false // no proof, or a torn read
	}
	return now-at <= n.bound
}

func (n *nearCache) begin(addr string, cn *conn) nearToken {
	now := time.Now()
	n.mu.Lock()
	f := n.inFlight[addr]
	if f == nil {
		f = &nearFlight{}
		n.inFlight[addr] = f
	}
	f.count++
	n.mu.Unlock()
	return nearToken{gen: cn.gen.Load(), sent: now}
}

// finish ends a get begun with begin; g is its answer (nil: it failed). The answer is kept when the
// daemon allows it and nothing about the entry was applied while the get was in flight.
func (n *nearCache) finish(addr string, t nearToken, g *getAnswer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drain() // a notification about it may have come meanwhile
	f := n.inFlight[addr]
	if f == nil {
		return
	}
	f.count--
	if f.count <= 0 {
		delete(n.inFlight, addr)
	}
	if f.invalidated || g == nil || t.gen == 0 || t.gen != n.gen || n.fd < 0 || !g.Hit || g.Value == nil || g.Stale ||
		g.Lease != "" || g.NearTTL == nil || *g.NearTTL <= 0 {
		return
	}
	e := &nearEntry{address: addr, answer: g, deadline: t.sent.Add(time.Duration(*g.NearTTL) * time.Millisecond)}
	if el, ok := n.entries[addr]; ok {
		el.Value = e
		n.lru.MoveToFront(el)
	} else {
		n.entries[addr] = n.lru.PushFront(e)
	}
	for len(n.entries) > n.capacity {
		n.remove(n.lru.Back())
	}
}

func (n *nearCache) remove(el *list.Element) {
	delete(n.entries, el.Value.(*nearEntry).address)
	n.lru.Remove(el)
}

func (n *nearCache) dropAll() {
	n.entries = make(map[string]*list.Element)
	n.lru.Init()
	for _, f := range n.inFlight {
		f.invalidated = true
	}
}

// drain reads and applies every notification waiting in the socket, without blocking. A closed
// socket, or anything unexpected on it, ends the near cache until the next tracked connection.
func (n *nearCache) drain() {
	if n.fd < 0 {
		return
	}
	n.lastDrain = time.Now()
	for {
		k, err := syscall.Read(n.fd, n.readBuf)
		if k > 0 {
			n.partial = append(n.partial, n.readBuf[:k]...)
			continue
		}
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN || err == syscall.EWOULDBLOCK {
			break
		}
		n.detach() // end of file, or broken
		return
	}
	for {
		end := bytes.IndexByte(n.partial, '\n')
		if end < 0 {
			break
		}
		line := n.partial[:end]
		if !n.apply(line) {
			n.detach()
			return
		}
		n.partial = n.partial[end+1:]
	}
	if len(n.partial) == 0 {
		n.partial = n.partial[:0:0]
	}
}

type notification struct {
	Method string `json:"method"`
	Params struct {
		All     bool `json:"all"`
		Entries []struct {
			Key      string          `json:"key"`
			Identity json.RawMessage `json:"identity"`
			HashKey  string          `json:"hashKey"`
			HashID   json.RawMessage `json:"hashId"`
		} `json:"entries"`
	} `json:"params"`
}

func (n *nearCache) apply(line []byte) bool {
	var m notification
	if err := json.Unmarshal(line, &m); err != nil || m.Method != "invalidate" {
		return false
	}
	if m.Params.All || m.Params.Entries == nil {
		n.dropAll()
		return true
	}
	for _, e := range m.Params.Entries {
		hashID := ""
		if len(e.HashID) > 0 {
			hashID = rawIdentityKey(e.HashID)
		}
		addr := address(e.Key, rawIdentityKey(e.Identity), e.HashKey, hashID)
		if el, ok := n.entries[addr]; ok {
			n.remove(el)
		}
		if f := n.inFlight[addr]; f != nil {
			f.invalidated = true
		}
	}
	return true
}

func (n *nearCache) detach() {
	if n.fd >= 0 {
		syscall.Close(n.fd)
	}
	n.fd = -1
	n.gen = 0
	n.partial = nil
	if n.proof != nil {
		n.proof.close()
		n.proof = nil
	}
	n.dropAll()
}

// attach makes fd (non-blocking, pending bytes already read from it) the notification socket of a
// new tracked connection; returns the connection's generation.
func (n *nearCache) attach(fd int, pending []byte, proof *proofPage, bound int64, noHits bool) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.detach()
	n.nextGen++
	n.gen = n.nextGen
	n.fd = fd
	n.partial = append([]byte(nil), pending...)
	n.proof, n.bound, n.noHits = proof, bound, noHits
	return n.gen
}

// connectionEnded: the tracked connection of generation gen closed; nothing kept can be vouched for.
func (n *nearCache) connectionEnded(gen uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if gen != 0 && gen == n.gen {
		n.detach()
	}
}

func (n *nearCache) shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.detach()
}

// background drains the notifications of an idle client (no lookup for 100 ms).
func (n *nearCache) background(stop chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			n.mu.Lock()
			if now.Sub(n.lastDrain) >= 100*time.Millisecond {
				n.drain()
			}
			n.mu.Unlock()
		}
	}
}

type trackAnswer struct {
	Tracking bool   `json:"tracking"`
	Token    string `json:"token"`
	Proof    *struct {
		Path         *string  `json:"path"`
		MaxStaleness *float64 `json:"maxStaleness"`
	} `json:"proof"`
}

// track asks the daemon to track cn, and connects its notification socket.
func (c *Client) track(ctx context.Context, cn *conn) error {
	r, err := c.newRequest(ctx, "track", 64)
	if err != nil {
		return err
	}
	r.buf = append(r.buf, `,"maxEntries":`...)
	r.buf = appendUint(r.buf, uint64(c.near.capacity))
	r.buf = append(r.buf, `,"separate":true`...)
	raw, err := c.roundTrip(ctx, cn, false, r, nil)
	if err != nil {
		return err
	}
	var t trackAnswer
	if err := json.Unmarshal(raw, &t); err != nil || t.Token == "" {
		return unavailable(err, "track answered without a token: %s", raw)
	}
	fd, pending, err := openNotifications(ctx, c.path, t.Token)
	if err != nil {
		return err
	}
	var page *proofPage
	var bound int64
	noHits := false
	if t.Proof != nil {
		if t.Proof.Path == nil || t.Proof.MaxStaleness == nil || *t.Proof.MaxStaleness <= 0 {
			noHits = true
		} else if page, err = mapProofPage(*t.Proof.Path); err != nil {
			page, noHits = nil, true
		} else {
			bound = int64(*t.Proof.MaxStaleness * 1e9)
		}
	}
	gen := c.near.attach(fd, pending, page, bound, noHits)
	cn.gen.Store(gen)
	if cn.isDead() {
		c.near.connectionEnded(gen)
	}
	return nil
}

// openNotifications connects path and claims the notifications of the connection given token.
// The exchange is blocking (one short round trip, 5 s at most); the socket is non-blocking after it.
func openNotifications(ctx context.Context, path, token string) (int, []byte, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, unavailable(err, "socket for the notification connection")
	}
	ok := false
	defer func() {
		if !ok {
			syscall.Close(fd)
		}
	}()
	limit := 5 * time.Second
	if d, has := ctx.Deadline(); has && time.Until(d) < limit {
		limit = time.Until(d)
		if limit <= 0 {
			return -1, nil, context.DeadlineExceeded
		}
	}
	tv := syscall.NsecToTimeval(limit.Nanoseconds())
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	for {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return -1, nil, unavailable(err, "cannot open the notification connection to %s", path)
	}
	line := appendString([]byte(`{"jsonrpc":"2.0","id":1,"method":"notifications","params":{"token":`), token)
	line = append(line, "}}\n"...)
	for len(line) > 0 {
		k, err := syscall.Write(fd, line)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, nil, unavailable(err, "cannot write to the notification connection")
		}
		line = line[k:]
	}
	var got []byte
	buf := make([]byte, 4096)
	for bytes.IndexByte(got, '\n') < 0 {
		k, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, nil, unavailable(err, "the daemon did not answer notifications")
		}
		if k == 0 {
			return -1, nil, unavailable(nil, "the notification connection closed")
		}
		got = append(got, buf[:k]...)
	}
	end := bytes.IndexByte(got, '\n')
	var env envelope
	var res struct {
		Notifications bool `json:"notifications"`
	}
	if json.Unmarshal(got[:end], &env) != nil || env.Error != nil || json.Unmarshal(env.Result, &res) != nil || !res.Notifications {
		if env.Error != nil {
			return -1, nil, env.Error.toError()
		}
		return -1, nil, unavailable(nil, "the daemon refused the notification connection: %s", got[:end])
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		return -1, nil, unavailable(err, "notification connection")
	}
	ok = true
	return fd, got[end+1:], nil
}
