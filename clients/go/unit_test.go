package cached

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendStringRoundTrips(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\x00\x01\x1f\n\r\t", "é ☃ \u2028\u2029 😀", "</script>&"} {
		var back string
		if err := json.Unmarshal(appendString(nil, s), &back); err != nil || back != s {
			t.Errorf("%q: %q %v", s, back, err)
		}
	}
}

func TestAppendValue(t *testing.T) {
	t.Parallel()
	for _, v := range [][]byte{{}, []byte("text é"), {0xff, 0, 1}, []byte("a\xc3")} {
		line := append([]byte("{"), appendValue(nil, v)[1:]...)
		line = append(line, '}')
		var m struct {
			Value    string `json:"value"`
			Encoding string `json:"encoding"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%q: %s %v", v, line, err)
		}
		g := getAnswer{Hit: true, Value: &m.Value, Encoding: m.Encoding}
		r, err := g.result()
		if err != nil || string(r.Value) != string(v) || r.Value == nil {
			t.Errorf("%q round trip: %q %v", v, r.Value, err)
		}
	}
}

func TestIdentities(t *testing.T) {
	t.Parallel()
	n, _ := new(big.Int).SetString("-123456789012345678901234567890", 10)
	ok := map[string]any{
		"12": 12, "-5": int8(-5), "18446744073709551615": uint64(math.MaxUint64), "-9223372036854775808": int64(math.MinInt64),
		"-123456789012345678901234567890": n, `"alice"`: "alice", `"\"q\""`: `"q"`, "7": json.Number("7"), "42": *big.NewInt(42),
		"65535": uint16(65535), "3": uintptr(3),
	}
	for want, id := range ok {
		got, err := appendIdentity(nil, "identity", id)
		if err != nil || string(got) != want {
			t.Errorf("%#v: %s %v", id, got, err)
		}
	}
	for _, id := range []any{1.5, float32(2), nil, true, []byte("x"), (*big.Int)(nil), json.Number("1e3"), "\xff", struct{}{}} {
		_, err := appendIdentity(nil, "identity", id)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalidParams || !errors.Is(err, ErrInvalidParams) {
			t.Errorf("%#v accepted: %v", id, err)
		}
	}
	// Near-cache addresses: a notification's identity (JSON text) names the same entry.
	pairs := map[string]any{"12": int32(12), `"x/ü"`: "x/ü", `"\u00fc"`: "ü", "-0": 0, "123456789012345678901234567890": n.Neg(n)}
	for raw, id := range pairs {
		if rawIdentityKey(json.RawMessage(raw)) != identityKey(id) {
			t.Errorf("%s vs %#v: %q %q", raw, id, rawIdentityKey(json.RawMessage(raw)), identityKey(id))
		}
	}
	if address("Student", "n1", "", "") != address("STUDENT", "n1", "", "") || address("S1", "n1", "", "") == address("S1", "s1", "", "") {
		t.Error("addresses")
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	e := &Error{Code: CodeStoreUnavailable, Message: "redis down"}
	var err error = e
	if !errors.Is(err, ErrStoreUnavailable) || errors.Is(err, ErrStoreTimeout) || errors.Is(err, context.DeadlineExceeded) {
		t.Error("Is by code")
	}
	if !errors.Is(&Error{Code: CodeDeadlineExceeded}, context.DeadlineExceeded) || !errors.Is(&Error{Code: CodeDeadlineExceeded}, ErrDeadlineExceeded) {
		t.Error("deadline")
	}
	if !strings.Contains(e.Error(), "redis down") || !strings.Contains(e.Error(), "-32000") {
		t.Error(e.Error())
	}
	u := unavailable(errors.New("boom"), "lost")
	if !errors.Is(u, ErrUnavailable) || errors.Is(u, ErrStoreUnavailable) || !strings.Contains(u.Error(), "boom") {
		t.Error(u)
	}
}

func TestTimeouts(t *testing.T) {
	t.Parallel()
	if got := string(appendSeconds(nil, timeoutSeconds(1500*time.Millisecond))); got != "1.5" {
		t.Error(got)
	}
	if got := string(appendSeconds(nil, timeoutSeconds(time.Nanosecond))); got != "0.001" {
		t.Error(got)
	}
	if got := string(appendSeconds(nil, timeoutSeconds(48*time.Hour))); got != "86400" {
		t.Error(got)
	}
}

// fakeDaemon answers with a function of each request line, from its own goroutine per line.
func fakeDaemon(t *testing.T, answer func(req map[string]any, w func(string))) string {
	path := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var mu sync.Mutex
				w := func(s string) { mu.Lock(); c.Write([]byte(s + "\n")); mu.Unlock() }
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req map[string]any
					d := json.NewDecoder(strings.NewReader(string(line)))
					d.UseNumber()
					_ = d.Decode(&req)
					go answer(req, w)
				}
			}()
		}
	}()
	return path
}

func TestOutOfOrderAnswersAndStall(t *testing.T) {
	t.Parallel()
	path := fakeDaemon(t, func(req map[string]any, w func(string)) {
		id := req["id"].(json.Number)
		params, _ := req["params"].(map[string]any)
		switch req["method"] {
		case "get":
			ident := params["identity"].(json.Number)
			n, _ := ident.Int64()
			time.Sleep(time.Duration(50-n) * time.Millisecond) // later requests answered first
			w(`{"jsonrpc":"2.0","id":` + string(id) + `,"result":{"hit":true,"value":"v` + string(ident) + `"}}`)
		case "ping":
			// A stalled daemon: never answers.
		}
	})
	c, err := Dial(context.Background(), path, WithPoolSize(1), WithDefaultTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		i := i
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := c.Get(context.Background(), "Student", i)
			if err != nil || string(r.Value) != "v"+strings.TrimSpace(json.Number(itoa(i)).String()) {
				t.Errorf("%d: %+v %v", i, r, err)
			}
		}()
	}
	wg.Wait()
	t0 := time.Now()
	err = c.Ping(context.Background())
	if !errors.Is(err, ErrUnavailable) || time.Since(t0) < 600*time.Millisecond || time.Since(t0) > 2*time.Second {
		t.Fatalf("stalled daemon: %v after %v", err, time.Since(t0))
	}
	// The connection still works for the others.
	if r, err := c.Get(context.Background(), "Student", 49); err != nil || string(r.Value) != "v49" {
		t.Fatal(r, err)
	}
}

func itoa(i int) string { b, _ := appendIdentity(nil, "", i); return string(b) }

func TestTimeoutSent(t *testing.T) {
	t.Parallel()
	got := make(chan string, 4)
	path := fakeDaemon(t, func(req map[string]any, w func(string)) {
		params, _ := req["params"].(map[string]any)
		got <- string(params["timeout"].(json.Number)) + " " + asString(params["lease"])
		w(`{"jsonrpc":"2.0","id":` + string(req["id"].(json.Number)) + `,"result":{"hit":false,"value":null}}`)
	})
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Get(context.Background(), "Student", 1)
	if s := <-got; s != "30 false" {
		t.Errorf("default timeout and lease: %q", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	c.Get(ctx, "Student", 1)
	s := <-got
	var secs float64
	json.Unmarshal([]byte(strings.Fields(s)[0]), &secs)
	if secs <= 2.4 || secs > 2.5 {
		t.Errorf("ctx deadline as timeout: %q", s)
	}
	c.Close()
	if _, err := c.Get(context.Background(), "Student", 1); err != ErrClosed {
		t.Errorf("after Close: %v", err)
	}
	if _, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("dial of nothing: %v", err)
	}
}

func asString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
