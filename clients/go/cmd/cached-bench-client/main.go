// Command cached-bench-client measures the per-call cost of a get hit from Go, in one process (the
// "clients" section of scripts/bench/run.py):
//
//	go run ./cmd/cached-bench-client SOCKET CALLS ROUNDS KEY [ENTRIES]
//
// Variants, each run for CALLS sequential gets per round, rounds interleaved (floor, plain, near,
// floor, ...):
//
//	floor  net.Dial("unix", SOCKET); per call one get line written, one answer line read (the bare
//	       round trip: no client library)
//	plain  Client.Get(KEY, i % ENTRIES)
//	near   the same through a client dialled WithNearCache(ENTRIES) (every entry read until kept
//	       first, so the measured gets are near hits; the hits are counted and reported)
//
// The entries KEY/0..ENTRIES-1 must be stored already. Prints one JSON object: µs per call, the
// median round per variant, the best round, and every round.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"time"

	cached "github.com/cached-dev/cached/clients/go"
)

type variant struct {
	UsPerCall     float64   `json:"usPerCall"`
	UsPerCallBest float64   `json:"usPerCallBest"`
	Rounds        []float64 `json:"rounds"`
	Hits          *int64    `json:"hits,omitempty"`
	Misses        *int64    `json:"misses,omitempty"`
	Calls         *int64    `json:"calls,omitempty"`
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }

func summarize(xs []float64) variant {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	v := variant{UsPerCall: round2(m), UsPerCallBest: round2(s[0])}
	for _, x := range xs {
		v.Rounds = append(v.Rounds, round2(x))
	}
	return v
}

// floor is one raw connection: one line out, one line back, nothing parsed beyond the newline.
type floor struct {
	c   net.Conn
	r   *bufio.Reader
	key []byte
	buf []byte
}

func (f *floor) get(i, entries int) ([]byte, error) {
	b := append(f.buf[:0], `{"jsonrpc":"2.0","id":`...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `,"method":"get","params":{"key":`...)
	b = append(b, f.key...)
	b = append(b, `,"identity":`...)
	b = strconv.AppendInt(b, int64(i%entries), 10)
	b = append(b, "}}\n"...)
	f.buf = b
	if _, err := f.c.Write(b); err != nil {
		return nil, err
	}
	return f.r.ReadSlice('\n')
}

func fail(err error) {
	b, _ := json.Marshal(map[string]string{"language": "go", "error": err.Error()})
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: cached-bench-client SOCKET CALLS ROUNDS KEY [ENTRIES]")
		os.Exit(2)
	}
	socket, key := os.Args[1], os.Args[4]
	calls, _ := strconv.Atoi(os.Args[2])
	rounds, _ := strconv.Atoi(os.Args[3])
	entries := 64
	if len(os.Args) > 5 {
		entries, _ = strconv.Atoi(os.Args[5])
	}
	if calls <= 0 {
		calls = 20000
	}
	if rounds <= 0 {
		rounds = 5
	}
	ctx := context.Background()

	raw, err := net.Dial("unix", socket)
	if err != nil {
		fail(err)
	}
	keyJSON, _ := json.Marshal(key)
	fl := &floor{c: raw, r: bufio.NewReaderSize(raw, 65536), key: keyJSON}
	plain, err := cached.Dial(ctx, socket)
	if err != nil {
		fail(err)
	}
	near, err := cached.Dial(ctx, socket, cached.WithNearCache(entries))
	if err != nil {
		fail(err)
	}

	// Check the answers once: every entry a hit, the same bytes through the floor and the client.
	for i := 0; i < entries; i++ {
		line, err := fl.get(i, entries)
		if err != nil {
			fail(err)
		}
		var a struct {
			Result *struct {
				Hit   bool   `json:"hit"`
				Value string `json:"value"`
			} `json:"result"`
		}
		if err := json.Unmarshal(line, &a); err != nil || a.Result == nil || !a.Result.Hit {
			fail(fmt.Errorf("floor get of %d is not a hit: %.200s", i, line))
		}
		r, err := plain.Get(ctx, key, i)
		if err != nil {
			fail(err)
		}
		if !r.Hit || string(r.Value) != a.Result.Value {
			fail(fmt.Errorf("plain get of %d: hit %v value %.100q, floor %.100q", i, r.Hit, r.Value, a.Result.Value))
		}
	}
	// The near cache keeps answers once its notification connection is up: read until every entry is kept.
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i := 0; i < entries; i++ {
			r, err := near.Get(ctx, key, i)
			if err != nil {
				fail(err)
			}
			if !r.Hit {
				fail(fmt.Errorf("near get of %d missed", i))
			}
		}
		if st := near.NearStats(); st.Entries >= entries {
			break
		}
		if time.Now().After(deadline) {
			fail(fmt.Errorf("the near cache kept only %+v", near.NearStats()))
		}
		time.Sleep(20 * time.Millisecond)
	}

	var runErr error
	run := map[string]func(n int){
		"floor": func(n int) {
			for i := 0; i < n; i++ {
				if _, err := fl.get(i, entries); err != nil {
					runErr = err
					return
				}
			}
		},
		"plain": func(n int) {
			for i := 0; i < n; i++ {
				if _, err := plain.Get(ctx, key, i%entries); err != nil {
					runErr = err
					return
				}
			}
		},
		"near": func(n int) {
			for i := 0; i < n; i++ {
				if _, err := near.Get(ctx, key, i%entries); err != nil {
					runErr = err
					return
				}
			}
		},
	}
	order := []string{"floor", "plain", "near"}
	warm := calls
	if warm > 2000 {
		warm = 2000
	}
	for _, name := range order {
		run[name](warm)
	}
	results := map[string][]float64{}
	before := near.NearStats()
	for r := 0; r < rounds; r++ {
		for _, name := range order {
			t0 := time.Now()
			run[name](calls)
			results[name] = append(results[name], float64(time.Since(t0).Nanoseconds())/float64(calls)/1000)
		}
	}
	after := near.NearStats()
	if runErr == nil && (after.Hits-before.Hits) == 0 {
		runErr = errors.New("no near hit during the measured rounds")
	}
	if runErr != nil {
		fail(runErr)
	}
	raw.Close()
	plain.Close()
	near.Close()

	out := map[string]any{"language": "go", "runtime": runtime.Version(), "callsPerRound": calls, "rounds": rounds,
		"entries": entries, "gomaxprocs": runtime.GOMAXPROCS(0)}
	for _, name := range order {
		v := summarize(results[name])
		if name == "near" {
			hits, misses, total := after.Hits-before.Hits, after.Misses-before.Misses, int64(calls*rounds)
			v.Hits, v.Misses, v.Calls = &hits, &misses, &total
		}
		out[name] = v
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
