package cached

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var stores = []string{"embedded", "redis"}

func forStores(t *testing.T, f func(t *testing.T, store string)) {
	for _, store := range stores {
		store := store
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			f(t, store)
		})
	}
}

func TestBasics(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		c := d.dial(t)
		ctx := ctxT(t, 10*time.Second)
		r, err := c.Get(ctx, "Student", 12)
		if err != nil || r.Hit || r.Value != nil {
			t.Fatalf("cold get: %+v %v", r, err)
		}
		if err := c.Set(ctx, "Student", 12, []byte(`{"name":"Ada"}`), 0); err != nil {
			t.Fatal(err)
		}
		r, err = c.Get(ctx, "Student", 12)
		if err != nil || !r.Hit || string(r.Value) != `{"name":"Ada"}` {
			t.Fatalf("get: %+v %v", r, err)
		}
		// Binary values, empty values, big and string identities, non-ASCII text.
		bin := []byte{0, 0xff, 0xfe, '\n', '"', 0x80}
		big1, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
		cases := []struct {
			identity any
			value    []byte
		}{
			{int64(-5), bin}, {big1, []byte("big")}, {"alice", []byte("é ☃ \u2028 \x00 \\ \"")}, {uint8(7), []byte{}},
			{"ключ/ü", []byte(strings.Repeat("x", 1<<20))},
		}
		for _, cs := range cases {
			if err := c.Set(ctx, "Student", cs.identity, cs.value, time.Minute); err != nil {
				t.Fatalf("set %v: %v", cs.identity, err)
			}
			r, err := c.Get(ctx, "student", cs.identity)
			if err != nil || !r.Hit || !bytes.Equal(r.Value, cs.value) || r.Value == nil {
				t.Fatalf("get %v: %+v %v", cs.identity, r.Hit, err)
			}
		}
		if d.redis != nil {
			v, err := d.redis.do("GET", "000STUDENT#-000000005")
			if err != nil || !bytes.Equal(v.([]byte), bin) {
				t.Fatalf("redis layout: %q %v", v, err)
			}
			v, _ = d.redis.do("GET", "000STUDENT#"+big1.String())
			if string(v.([]byte)) != "big" {
				t.Fatalf("big identity layout: %q", v)
			}
		}
		ok, err := c.Delete(ctx, "Student", 12)
		if err != nil || !ok {
			t.Fatalf("delete: %v %v", ok, err)
		}
		ok, err = c.Delete(ctx, "Student", 12)
		if err != nil || ok {
			t.Fatalf("delete again: %v %v", ok, err)
		}
		// Hash entries.
		if err := c.Set(ctx, "Student", 1, []byte("in class 3"), 0, InHash("Class", 3)); err != nil {
			t.Fatal(err)
		}
		if err := c.SetHash(ctx, "Class", 3, "Student", 2, []byte("two")); err != nil {
			t.Fatal(err)
		}
		r, err = c.GetHash(ctx, "Class", 3, "Student", 1)
		if err != nil || string(r.Value) != "in class 3" {
			t.Fatalf("hash get: %+v %v", r, err)
		}
		if r, _ := c.Get(ctx, "Student", 1); r.Hit {
			t.Fatal("a hash entry is not the plain entry")
		}
		if d.redis != nil {
			v, err := d.redis.do("HGET", "00000CLASS#0000000003", "000STUDENT#0000000002")
			if err != nil || string(v.([]byte)) != "two" {
				t.Fatalf("hash layout: %q %v", v, err)
			}
		}
		ok, err = c.DeleteHash(ctx, "Class", 3)
		if err != nil || !ok {
			t.Fatalf("deleteHash: %v %v", ok, err)
		}
		if r, _ := c.Get(ctx, "Student", 2, InHash("Class", 3)); r.Hit {
			t.Fatal("hash entry survived deleteHash")
		}
		// A handler key: the daemon fills it.
		r, err = c.Get(ctx, "Handled", 5)
		if err != nil || r.Hit || string(r.Value) != "handled:5" {
			t.Fatalf("handled get: %+v %v", r, err)
		}
		r, err = c.Get(ctx, "Handled", 5)
		if err != nil || !r.Hit || string(r.Value) != "handled:5" {
			t.Fatalf("handled get again: %+v %v", r, err)
		}
		if r, err := c.Get(ctx, "Handled", 0); err != nil || r.Value != nil {
			t.Fatalf("handler's no entry: %+v %v", r, err)
		}
		_, err = c.Get(ctx, "Handled", -1)
		if !errors.Is(err, ErrHandlerError) {
			t.Fatalf("handler error: %v", err)
		}
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeHandlerError || !strings.Contains(e.Message, "identity -1 fails") {
			t.Fatalf("handler error detail: %#v", err)
		}
		// Admin calls.
		raw, err := c.Call(ctx, "ping", nil)
		if err != nil || string(raw) != `"pong"` {
			t.Fatalf("ping: %s %v", raw, err)
		}
		raw, err = c.Call(ctx, "stats", map[string]any{})
		if err != nil || !bytes.Contains(raw, []byte(`"uptimeSeconds"`)) {
			t.Fatalf("stats: %.100s %v", raw, err)
		}
		if _, err := c.Call(ctx, "nope", nil); !errors.Is(err, ErrMethodNotFound) {
			t.Fatalf("unknown method: %v", err)
		}
	})
}

func TestInvalidParams(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "embedded", "")
	c := d.dial(t)
	ctx := ctxT(t, 10*time.Second)
	for _, identity := range []any{1.5, nil, []int{1}, struct{}{}, true, (*big.Int)(nil), "bad\xff"} {
		_, err := c.Get(ctx, "Student", identity)
		if !errors.Is(err, ErrInvalidParams) {
			t.Errorf("identity %#v: %v", identity, err)
		}
	}
	// Refused by the daemon: a key too short, a control character in a string identity.
	for _, k := range []struct {
		key      string
		identity any
	}{{"ab", 1}, {"Student", "a\x01b"}, {"Stu dent", 1}} {
		_, err := c.Get(ctx, k.key, k.identity)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalidParams || e.Message == "" {
			t.Errorf("%q %q: %v", k.key, k.identity, err)
		}
	}
	// The connection is still fine.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestParallelGoroutines(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		c := d.dial(t, WithPoolSize(3))
		ctx := ctxT(t, 30*time.Second)
		const workers, rounds = 64, 40
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			w := w
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < rounds; i++ {
					id := fmt.Sprintf("w%d-%d", w, i%5)
					value := []byte(fmt.Sprintf("value %d %d", w, i))
					if i%7 == 3 {
						value = append(value, 0xff) // binary now and then
					}
					if err := c.Set(ctx, "Session", id, value, time.Minute); err != nil {
						errs <- err
						return
					}
					r, err := c.Get(ctx, "Session", id)
					if err != nil || !r.Hit || !bytes.Equal(r.Value, value) {
						errs <- fmt.Errorf("worker %d round %d: %+v %v", w, i, r, err)
						return
					}
					if i%10 == 9 {
						if _, err := c.Delete(ctx, "Session", id); err != nil {
							errs <- err
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestReconnectAfterRestart(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		c := d.dial(t, WithPoolSize(2))
		ctx := ctxT(t, 20*time.Second)
		if err := c.Set(ctx, "Student", 1, []byte("before"), 0); err != nil {
			t.Fatal(err)
		}
		// A request in flight when the daemon stops: a lease get waiting behind another holder.
		holder := d.dial(t)
		if _, err := holder.get(ctx, nil, mustEntry(t, "Session", 77), true); err != nil {
			t.Fatal(err)
		}
		inflight := make(chan error, 1)
		go func() {
			_, err := c.Fetch(ctx, "Session", 77, func(context.Context) ([]byte, error) { return []byte("x"), nil })
			inflight <- err
		}()
		time.Sleep(100 * time.Millisecond)
		d.restart()
		select {
		case err := <-inflight:
			if err == nil {
				t.Log("the in-flight fetch was answered before the daemon stopped")
			} else if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrShuttingDown) {
				t.Fatalf("in-flight request: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an in-flight request hangs across a restart")
		}
		// Every connection of the pool reconnects by itself.
		for i := 0; i < 10; i++ {
			r, err := c.Get(ctx, "Student", 1)
			if err != nil {
				t.Fatalf("get %d after restart: %v", i, err)
			}
			if store == "redis" && string(r.Value) != "before" {
				t.Fatalf("redis keeps the data: %+v", r)
			}
		}
		// And after a connection closed by the daemon for an oversized line (-32001).
		huge := bytes.Repeat([]byte("a"), 5<<20)
		err := c.Set(ctx, "Student", 2, huge, 0)
		if !errors.Is(err, ErrLimitExceeded) {
			t.Fatalf("oversized line: %v", err)
		}
		if err := c.Set(ctx, "Student", 2, []byte("small"), 0); err != nil {
			t.Fatalf("after the oversized line: %v", err)
		}
	})
}

func mustEntry(t testing.TB, key string, identity any, opts ...Option) entry {
	o := collect(opts)
	e, err := makeEntry(key, identity, &o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestFetchLeaseFlow(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		ctx := ctxT(t, 20*time.Second)
		// 100 concurrent Fetches of one cold entry through one client, and 3 other clients: one fill.
		clients := []*Client{d.dial(t), d.dial(t), d.dial(t), d.dial(t)}
		var fills atomic.Int32
		fill := func(ctx context.Context) ([]byte, error) {
			fills.Add(1)
			time.Sleep(100 * time.Millisecond)
			return []byte("filled \xff"), nil
		}
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := 0; i < 100; i++ {
			c := clients[0]
			if i%10 == 0 {
				c = clients[1+i%3]
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Fetch(ctx, "Session", "stampede", fill)
				if err != nil || string(v) != "filled \xff" {
					errs <- fmt.Errorf("fetch: %q %v", v, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := fills.Load(); n != 1 {
			t.Fatalf("fill called %d times", n)
		}
		// Now a hit: no fill.
		v, err := clients[2].Fetch(ctx, "Session", "stampede", func(context.Context) ([]byte, error) {
			t.Error("fill called on a hit")
			return nil, nil
		})
		if err != nil || string(v) != "filled \xff" {
			t.Fatalf("hit: %q %v", v, err)
		}
		// A handler key is filled by the daemon.
		v, err = clients[0].Fetch(ctx, "Handled", 9, func(context.Context) ([]byte, error) {
			t.Error("fill called for a handler key")
			return nil, nil
		})
		if err != nil || string(v) != "handled:9" {
			t.Fatalf("handler key: %q %v", v, err)
		}
		// The handler's "no such entry", and its error: no client fill either.
		noFill := func(context.Context) ([]byte, error) { t.Error("fill called for a handler key"); return nil, nil }
		if v, err := clients[0].Fetch(ctx, "Handled", 0, noFill); err != nil || v != nil {
			t.Fatalf("handler's no entry: %q %v", v, err)
		}
		if _, err := clients[0].Fetch(ctx, "Handled", -1, noFill); !errors.Is(err, ErrHandlerError) {
			t.Fatalf("handler error through Fetch: %v", err)
		}
		// Hash entries with a TTL option.
		v, err = clients[0].Fetch(ctx, "Session", 1, func(context.Context) ([]byte, error) { return []byte("h"), nil },
			InHash("Class", 4))
		if err != nil || string(v) != "h" {
			t.Fatalf("hash fetch: %q %v", v, err)
		}
		if r, _ := clients[1].Get(ctx, "Session", 1, InHash("Class", 4)); !r.Hit || string(r.Value) != "h" {
			t.Fatalf("hash fetch stored: %+v", r)
		}
		v, err = clients[0].Fetch(ctx, "Session", "ttl", func(context.Context) ([]byte, error) { return []byte("t"), nil },
			WithTTL(300*time.Millisecond))
		if err != nil || string(v) != "t" {
			t.Fatal(err)
		}
		time.Sleep(600 * time.Millisecond)
		if r, _ := clients[1].Get(ctx, "Session", "ttl"); r.Hit {
			t.Fatal("WithTTL was not applied")
		}
		// nil from fill: no entry, nothing stored, the lease released.
		v, err = clients[0].Fetch(ctx, "Session", "none", func(context.Context) ([]byte, error) { return nil, nil })
		if err != nil || v != nil {
			t.Fatalf("no entry: %q %v", v, err)
		}
		start := time.Now()
		v, err = clients[1].Fetch(ctx, "Session", "none", func(context.Context) ([]byte, error) { return []byte("later"), nil })
		if err != nil || string(v) != "later" || time.Since(start) > 2*time.Second {
			t.Fatalf("after a nil fill: %q %v %v", v, err, time.Since(start))
		}
	})
}

type fillError struct{ msg string }

func (e *fillError) Error() string { return e.msg }

func TestFetchReleaseOnFillError(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		ctx := ctxT(t, 20*time.Second)
		a, b := d.dial(t), d.dial(t)
		boom := &fillError{"origin down"}
		started := make(chan struct{})
		resultA := make(chan error, 1)
		go func() {
			_, err := a.Fetch(ctx, "Session", 5, func(context.Context) ([]byte, error) {
				close(started)
				time.Sleep(200 * time.Millisecond)
				return nil, boom
			})
			resultA <- err
		}()
		<-started
		// b waits behind a's lease, then gets it at once when a releases (not after lease_timeout, 5 s).
		t0 := time.Now()
		var bFilled atomic.Bool
		v, err := b.Fetch(ctx, "Session", 5, func(context.Context) ([]byte, error) {
			bFilled.Store(true)
			return []byte("from b"), nil
		})
		if err != nil || string(v) != "from b" || !bFilled.Load() {
			t.Fatalf("b: %q %v filled=%v", v, err, bFilled.Load())
		}
		if el := time.Since(t0); el > 2*time.Second {
			t.Fatalf("b waited %v: the lease was not released", el)
		}
		errA := <-resultA
		if errA != boom {
			t.Fatalf("a's error is not the fill's own: %#v", errA)
		}
		var fe *fillError
		if !errors.As(errA, &fe) {
			t.Fatal("errors.As")
		}
		// In one client: the leader's fill error goes to the leader; a waiter of the same client
		// then fills itself.
		var calls atomic.Int32
		var wg sync.WaitGroup
		results := make([]error, 5)
		for i := range results {
			i := i
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, results[i] = a.Fetch(ctx, "Session", 6, func(context.Context) ([]byte, error) {
					if calls.Add(1) == 1 {
						time.Sleep(100 * time.Millisecond)
						return nil, boom
					}
					return []byte("second"), nil
				})
			}()
		}
		wg.Wait()
		failed := 0
		for _, err := range results {
			if err == boom {
				failed++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if failed != 1 || calls.Load() != 2 {
			t.Fatalf("failed=%d calls=%d", failed, calls.Load())
		}
	})
}

func TestDeadlineAndCancel(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "embedded", "")
	ctx := ctxT(t, 20*time.Second)
	holder, c := d.dial(t), d.dial(t)
	// holder takes the lease of an entry; c's lease get waits behind it.
	if g, err := holder.get(ctx, nil, mustEntry(t, "Session", 1), true); err != nil || g.Lease == "" {
		t.Fatalf("lease: %+v %v", g, err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Fetch(short, "Session", 1, func(context.Context) ([]byte, error) { return []byte("x"), nil })
	el := time.Since(t0)
	if !errors.Is(err, ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(string(e.Data), "timeout") {
		t.Fatalf("the daemon's -32009 carries data.timeout: %#v", err)
	}
	if el < 250*time.Millisecond || el > 900*time.Millisecond {
		t.Fatalf("answered after %v", el)
	}
	// Cancellation returns at once, and the connection keeps working.
	cctx, ccancel := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); ccancel() }()
	t0 = time.Now()
	_, err = c.Fetch(cctx, "Session", 1, func(context.Context) ([]byte, error) { return []byte("x"), nil })
	if err != context.Canceled || time.Since(t0) > 300*time.Millisecond {
		t.Fatalf("cancel: %v after %v", err, time.Since(t0))
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(cctx, "Session", 2); err != context.Canceled {
		t.Fatalf("a cancelled context: %v", err)
	}
	// The daemon's deadline on a slow handler.
	hctx, hcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer hcancel()
	if _, err := c.Get(hctx, "Handled", -2); !errors.Is(err, ErrDeadlineExceeded) {
		t.Fatalf("slow handler: %v", err)
	}
	// A lease handed to a caller that gave up is released by the client: holder abandons its
	// fill (its connection closes), c's abandoned get would receive the lease.
	cctx2, ccancel2 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(cctx2, "Session", 1, func(context.Context) ([]byte, error) { return []byte("never"), nil })
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	ccancel2()
	<-done
	holder.Close() // the lease passes on: to c's abandoned get, which gives it back at once
	time.Sleep(200 * time.Millisecond)
	third := d.dial(t)
	t0 = time.Now()
	v, err := third.Fetch(ctx, "Session", 1, func(context.Context) ([]byte, error) { return []byte("third"), nil })
	if err != nil || string(v) != "third" || time.Since(t0) > 2*time.Second {
		t.Fatalf("after an abandoned lease: %q %v %v", v, err, time.Since(t0))
	}
}

func TestStaleHits(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "redis", "")
	c := d.dial(t)
	ctx := ctxT(t, 10*time.Second)
	if r, err := c.Get(ctx, "Fresh", 3); err != nil || string(r.Value) != "handled:3" {
		t.Fatalf("fill: %+v %v", r, err)
	}
	time.Sleep(500 * time.Millisecond)
	r, err := c.Get(ctx, "Fresh", 3)
	if err != nil || !r.Hit || !r.Stale || string(r.Value) != "handled:3" {
		t.Fatalf("stale: %+v %v", r, err)
	}
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "redis", "")
	c := d.dial(t)
	ctx := ctxT(t, 10*time.Second)
	d.redis.p.stop(syscall.SIGTERM)
	waitFor(t, "store down", 5*time.Second, func() bool {
		_, err := c.Get(ctx, "Student", 1)
		return errors.Is(err, ErrStoreUnavailable)
	})
	d.redis.start(t)
	waitFor(t, "store back", 10*time.Second, func() bool {
		_, err := c.Get(ctx, "Student", 1)
		return err == nil
	})
}
