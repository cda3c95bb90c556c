package cached

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestNearCacheHitsAndCoherence(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		near := d.dial(t, WithNearCache(100))
		other := d.dial(t)
		ctx := ctxT(t, 30*time.Second)
		bigID, _ := new(big.Int).SetString("-98765432109876543210987654321", 10)
		ids := []any{1, "naïve/ключ", bigID, uint64(1 << 63)}
		for _, id := range ids {
			if err := other.Set(ctx, "Student", id, []byte("v1"), 0); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				r, err := near.Get(ctx, "Student", id)
				if err != nil || !r.Hit || string(r.Value) != "v1" {
					t.Fatalf("%v: %+v %v", id, r, err)
				}
			}
		}
		s := near.NearStats()
		if s.Hits < int64(len(ids)) || s.Entries != len(ids) {
			t.Fatalf("no near hits: %+v", s)
		}
		// A write by another client: once its answer is back, the near cache never serves the old value.
		for _, id := range ids {
			if err := other.Set(ctx, "Student", id, []byte("v2"), 0); err != nil {
				t.Fatal(err)
			}
			if r, err := near.Get(ctx, "Student", id); err != nil || string(r.Value) != "v2" {
				t.Fatalf("%v after another client's write: %+v %v", id, r, err)
			}
		}
		// Its own write, and deletes, hash entries and deleteHash.
		if err := near.Set(ctx, "Student", 1, []byte("v3"), 0); err != nil {
			t.Fatal(err)
		}
		if r, _ := near.Get(ctx, "Student", 1); string(r.Value) != "v3" {
			t.Fatalf("own write: %+v", r)
		}
		near.Get(ctx, "Student", 1)
		if _, err := other.Delete(ctx, "student", 1); err != nil {
			t.Fatal(err)
		}
		if r, _ := near.Get(ctx, "Student", 1); r.Hit {
			t.Fatalf("after a delete: %+v", r)
		}
		other.Set(ctx, "Student", 7, []byte("h"), 0, InHash("Class", 3))
		near.Get(ctx, "Student", 7, InHash("Class", 3))
		near.Get(ctx, "Student", 7, InHash("Class", 3))
		other.DeleteHash(ctx, "CLASS", 3)
		if r, _ := near.Get(ctx, "Student", 7, InHash("Class", 3)); r.Hit {
			t.Fatalf("after deleteHash: %+v", r)
		}
		if d.redis != nil {
			// A write straight to Redis reaches the near cache through the daemon's invalidations.
			near.Get(ctx, "Student", 1)
			other.Set(ctx, "Student", 1, []byte("v4"), 0)
			near.Get(ctx, "Student", 1)
			near.Get(ctx, "Student", 1)
			if _, err := d.redis.do("SET", "000STUDENT#0000000001", "direct"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the direct write", 2*time.Second, func() bool {
				r, _ := near.Get(ctx, "Student", 1)
				return string(r.Value) == "direct"
			})
		}
	})
}

// TestNearCacheLinearizable: a writer bumps a counter through one client, readers through a near
// cache client check that no read started after a write's answer returns an older value.
func TestNearCacheLinearizable(t *testing.T) {
	t.Parallel()
	forStores(t, func(t *testing.T, store string) {
		d := startDaemon(t, store, "")
		writer := d.dial(t)
		near := d.dial(t, WithNearCache(1000))
		ctx := ctxT(t, 30*time.Second)
		const keys = 4
		var acked [keys]atomic.Int64
		for k := 0; k < keys; k++ {
			if err := writer.Set(ctx, "Session", k, []byte("0"), 0); err != nil {
				t.Fatal(err)
			}
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var reads, bad atomic.Int64
		for r := 0; r < 8; r++ {
			r := r
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := (r + i) % keys
					floor := acked[k].Load()
					res, err := near.Get(ctx, "Session", k)
					if err != nil {
						t.Error(err)
						return
					}
					var got int64
					fmt.Sscan(string(res.Value), &got)
					reads.Add(1)
					if got < floor {
						bad.Add(1)
						t.Errorf("key %d: read %d after write %d was answered", k, got, floor)
						return
					}
				}
			}()
		}
		deadline := time.Now().Add(2 * time.Second)
		for v := int64(1); time.Now().Before(deadline); v++ {
			k := int(v % keys)
			if err := writer.Set(ctx, "Session", k, []byte(fmt.Sprint(v)), 0); err != nil {
				t.Fatal(err)
			}
			acked[k].Store(v)
			time.Sleep(200 * time.Microsecond)
		}
		close(stop)
		wg.Wait()
		s := near.NearStats()
		t.Logf("%d reads, near %+v", reads.Load(), s)
		if s.Hits == 0 {
			t.Fatal("the near cache served nothing")
		}
	})
}

func TestNearCacheProofLapse(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "embedded", "")
	near := d.dial(t, WithNearCache(10))
	ctx := ctxT(t, 30*time.Second)
	near.Set(ctx, "Student", 1, []byte("x"), 0)
	near.Get(ctx, "Student", 1)
	if r, err := near.Get(ctx, "Student", 1); err != nil || string(r.Value) != "x" || near.NearStats().Hits != 1 {
		t.Fatalf("no near hit: %+v %v %+v", r, err, near.NearStats())
	}
	// A stalled daemon stops its proof instant: within max_staleness (0.5 s) the near hits stop.
	if err := syscall.Kill(d.p.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(d.p.cmd.Process.Pid, syscall.SIGCONT)
	time.Sleep(700 * time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := near.Get(short, "Student", 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("served from the near cache without proof: %v", err)
	}
	if near.NearStats().Unproven == 0 {
		t.Fatalf("stats: %+v", near.NearStats())
	}
	syscall.Kill(d.p.cmd.Process.Pid, syscall.SIGCONT)
	if r, err := near.Get(ctx, "Student", 1); err != nil || string(r.Value) != "x" {
		t.Fatalf("after SIGCONT: %+v %v", r, err)
	}
}

func TestNearCacheRestartAndFetch(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "redis", "")
	near := d.dial(t, WithNearCache(10))
	other := d.dial(t)
	ctx := ctxT(t, 30*time.Second)
	v, err := near.Fetch(ctx, "Session", 1, func(context.Context) ([]byte, error) { return []byte("a"), nil })
	if err != nil || string(v) != "a" {
		t.Fatal(v, err)
	}
	near.Get(ctx, "Session", 1)
	near.Get(ctx, "Session", 1)
	v, err = near.Fetch(ctx, "Session", 1, func(context.Context) ([]byte, error) { t.Error("fill on a hit"); return nil, nil })
	if err != nil || string(v) != "a" || near.NearStats().Hits < 1 {
		t.Fatalf("fetch near hit: %q %v %+v", v, err, near.NearStats())
	}
	d.restart()
	// Written while the near client's connections were down: it must not serve "a".
	if err := other.Set(ctx, "Session", 1, []byte("b"), 0); err != nil {
		t.Fatal(err)
	}
	if r, err := near.Get(ctx, "Session", 1); err != nil || string(r.Value) != "b" {
		t.Fatalf("after restart: %+v %v", r, err)
	}
}
