package cached

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The conformance suite (clients/conformance/README.md): every case of cases.json, for every store
// it lists, each its own subtest (TestConformance/<store>/<case>), against a real daemon started by
// the shared harness.

const conformanceDir = "../conformance"

type confCase struct {
	Name     string     `json:"name"`
	Doc      string     `json:"doc"`
	Stores   []string   `json:"stores"`
	Requires []string   `json:"requires"`
	Steps    []confStep `json:"steps"`
}

type confStep struct {
	Op       string          `json:"op"`
	Client   string          `json:"client"`
	Async    string          `json:"async"`
	Handle   string          `json:"handle"`
	Expect   json.RawMessage `json:"expect"`
	Key      string          `json:"key"`
	Identity json.RawMessage `json:"identity"`
	HashKey  *string         `json:"hashKey"`
	HashID   json.RawMessage `json:"hashId"`
	Timeout  *float64        `json:"timeout"`
	TTL      *float64        `json:"ttl"`
	Value    json.RawMessage `json:"value"`
	Fill     *struct {
		Value   json.RawMessage `json:"value"`
		Error   *string         `json:"error"`
		DelayMs int             `json:"delayMs"`
	} `json:"fill"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Args   []any           `json:"args"`
	Ms     int             `json:"ms"`
}

// harness is one clients/conformance/harness.py process.
type harness struct {
	cmd    *exec.Cmd
	in     *json.Encoder
	out    *bufio.Reader
	socket string
	mu     sync.Mutex
	stdin  interface{ Close() error }
}

func startHarness(t *testing.T, store string) *harness {
	t.Helper()
	script, _ := filepath.Abs(filepath.Join(conformanceDir, "harness.py"))
	cmd := exec.Command("python3", script, "--store", store, "--bin", daemonBinary(t))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	h := &harness{cmd: cmd, in: json.NewEncoder(stdin), out: bufio.NewReader(stdout), stdin: stdin}
	t.Cleanup(h.quit)
	line, err := h.out.ReadBytes('\n')
	if err != nil {
		t.Fatalf("harness did not start: %v", err)
	}
	var ready struct {
		Socket string `json:"socket"`
	}
	if err := json.Unmarshal(line, &ready); err != nil || ready.Socket == "" {
		t.Fatalf("harness ready line: %s", line)
	}
	h.socket = ready.Socket
	return h
}

func (h *harness) command(cmd map[string]any) (map[string]json.RawMessage, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.in.Encode(cmd); err != nil {
		return nil, err
	}
	line, err := h.out.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("harness: %v", err)
	}
	var answer map[string]json.RawMessage
	if err := json.Unmarshal(line, &answer); err != nil {
		return nil, fmt.Errorf("harness answered %s", line)
	}
	if string(answer["ok"]) != "true" {
		return answer, fmt.Errorf("harness %v: %s", cmd["cmd"], line)
	}
	return answer, nil
}

func (h *harness) quit() {
	_, _ = h.command(map[string]any{"cmd": "quit"})
	h.stdin.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		<-done
	}
}

func loadCases(t *testing.T) []confCase {
	raw, err := os.ReadFile(filepath.Join(conformanceDir, "cases.json"))
	if err != nil {
		t.Fatalf("the conformance cases: %v", err)
	}
	var file struct {
		Version int        `json:"version"`
		Cases   []confCase `json:"cases"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&file); err != nil || file.Version != 1 || len(file.Cases) == 0 {
		t.Fatalf("cases.json: version %d, %d cases, %v", file.Version, len(file.Cases), err)
	}
	return file.Cases
}

func TestConformance(t *testing.T) {
	t.Parallel()
	cases := loadCases(t)
	for _, store := range stores {
		store := store
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			h := startHarness(t, store)
			for _, cs := range cases {
				cs := cs
				if !contains(cs.Stores, store) {
					continue
				}
				t.Run(cs.Name, func(t *testing.T) {
					for _, r := range cs.Requires {
						if r != "nearCache" {
							t.Skipf("case %s needs %q, which the Go client lacks", cs.Name, r)
						}
					}
					if _, err := h.command(map[string]any{"cmd": "reset"}); err != nil {
						t.Fatal(err)
					}
					runCase(t, h, cs)
				})
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type caseRun struct {
	t       *testing.T
	h       *harness
	clients map[string]*Client
	async   map[string]chan string
	mu      sync.Mutex
}

func runCase(t *testing.T, h *harness, cs confCase) {
	r := &caseRun{t: t, h: h, clients: map[string]*Client{}, async: map[string]chan string{}}
	defer func() {
		for _, c := range r.clients {
			c.Close()
		}
	}()
	for i, step := range cs.Steps {
		step := step
		where := fmt.Sprintf("step %d (%s)", i, step.Op)
		switch step.Op {
		case "await":
			ch, ok := r.async[step.Handle]
			if !ok {
				t.Fatalf("%s: no async step %q", where, step.Handle)
			}
			if msg := <-ch; msg != "" {
				t.Fatalf("%s: async %q: %s", where, step.Handle, msg)
			}
			continue
		case "sleep":
			time.Sleep(time.Duration(step.Ms) * time.Millisecond)
			continue
		}
		if step.Async != "" {
			ch := make(chan string, 1)
			r.async[step.Async] = ch
			c := r.client(step.Client) // made now, so that the steps after this one find it
			go func() { ch <- r.step(c, step) }()
			continue
		}
		if msg := r.step(r.client(step.Client), step); msg != "" {
			t.Fatalf("%s: %s", where, msg)
		}
	}
}

func (r *caseRun) client(name string) *Client {
	if name == "" {
		name = "a"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[name]; c != nil {
		return c
	}
	var opts []DialOption
	if strings.HasPrefix(name, "near") {
		opts = append(opts, WithNearCache(1000))
	}
	c, err := Dial(context.Background(), r.h.socket, append(opts, WithLazyConnect())...)
	if err != nil {
		r.t.Fatalf("dial %s: %v", name, err)
	}
	r.clients[name] = c
	return c
}

// step runs one step and checks its expect; "" when it passed, else what went wrong.
func (r *caseRun) step(c *Client, s confStep) string {
	ctx := context.Background()
	if s.Timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*s.Timeout*float64(time.Second)))
		defer cancel()
	}
	var opts []Option
	if s.HashKey != nil {
		opts = append(opts, InHash(*s.HashKey, caseIdentity(s.HashID)))
	}
	var expect map[string]json.RawMessage
	if len(s.Expect) > 0 {
		if err := json.Unmarshal(s.Expect, &expect); err != nil {
			return "bad expect: " + string(s.Expect)
		}
	}
	var got map[string]any
	var err error
	var fillErr error
	switch s.Op {
	case "get":
		var res Result
		res, err = c.Get(ctx, s.Key, caseIdentity(s.Identity), opts...)
		got = map[string]any{"hit": res.Hit, "value": res.Value, "stale": res.Stale}
	case "set":
		ttl := time.Duration(0)
		if s.TTL != nil {
			ttl = time.Duration(*s.TTL * float64(time.Second))
			if ttl == 0 {
				ttl = NoExpiry
			}
		}
		err = c.Set(ctx, s.Key, caseIdentity(s.Identity), caseValue(s.Value), ttl, opts...)
		got = map[string]any{"ok": true}
	case "delete":
		var ok bool
		ok, err = c.Delete(ctx, s.Key, caseIdentity(s.Identity), opts...)
		got = map[string]any{"deleted": ok}
	case "deleteHash":
		var ok bool
		ok, err = c.DeleteHash(ctx, *s.HashKey, caseIdentity(s.HashID))
		got = map[string]any{"deleted": ok}
	case "fetch":
		called := false
		fill := func(ctx context.Context) ([]byte, error) {
			called = true
			time.Sleep(time.Duration(s.Fill.DelayMs) * time.Millisecond)
			if s.Fill.Error != nil {
				fillErr = errors.New(*s.Fill.Error)
				return nil, fillErr
			}
			return caseValue(s.Fill.Value), nil
		}
		var v []byte
		v, err = c.Fetch(ctx, s.Key, caseIdentity(s.Identity), fill, opts...)
		got = map[string]any{"value": v, "fillCalled": called}
	case "call":
		var params any
		if len(s.Params) > 0 {
			params = s.Params
		}
		var raw json.RawMessage
		raw, err = c.Call(ctx, s.Method, params)
		got = map[string]any{"result": raw}
	case "restart", "stopRedis", "startRedis", "redis":
		cmd := map[string]any{"cmd": s.Op}
		if s.Op == "redis" {
			cmd["args"] = s.Args
		}
		answer, herr := r.h.command(cmd)
		if herr != nil {
			return herr.Error()
		}
		if want, ok := expect["reply"]; ok && !jsonMatch(want, answer["reply"]) {
			return fmt.Sprintf("redis reply %s, want %s", answer["reply"], want)
		}
		return ""
	default:
		return "unknown op " + s.Op
	}
	if want, ok := expect["error"]; ok {
		return checkError(want, err, fillErr)
	}
	if err != nil {
		return fmt.Sprintf("failed: %v", err)
	}
	for name, want := range expect {
		have, ok := got[name]
		if !ok {
			return fmt.Sprintf("expect member %q not understood", name)
		}
		if msg := compare(name, want, have); msg != "" {
			return msg
		}
	}
	return ""
}

func checkError(want json.RawMessage, err, fillErr error) string {
	var w struct {
		Code            *int    `json:"code"`
		Fill            *string `json:"fill"`
		MessageContains string  `json:"messageContains"`
	}
	if json.Unmarshal(want, &w) != nil {
		return "bad expected error " + string(want)
	}
	if err == nil {
		return "succeeded, expected error " + string(want)
	}
	if w.Fill != nil {
		if fillErr == nil || err != fillErr || err.Error() != *w.Fill {
			return fmt.Sprintf("error %v is not the fill's own error %q", err, *w.Fill)
		}
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		return fmt.Sprintf("error %v is not an *Error", err)
	}
	if w.Code != nil && e.Code != *w.Code {
		return fmt.Sprintf("error code %d (%v), want %d", e.Code, err, *w.Code)
	}
	if w.MessageContains != "" && !strings.Contains(e.Message, w.MessageContains) {
		return fmt.Sprintf("error message %q lacks %q", e.Message, w.MessageContains)
	}
	if w.Code != nil && !errors.Is(err, &Error{Code: *w.Code}) {
		return "errors.Is does not match the code"
	}
	return ""
}

func compare(name string, want json.RawMessage, have any) string {
	switch name {
	case "value":
		v, _ := have.([]byte)
		w := caseValue(want)
		if (w == nil) != (v == nil) || !bytes.Equal(w, v) {
			return fmt.Sprintf("value %s, want %s", describe(v), describe(w))
		}
	case "result":
		if !jsonMatch(want, have.(json.RawMessage)) {
			return fmt.Sprintf("result %s, want %s", have, want)
		}
	default:
		var w any
		_ = json.Unmarshal(want, &w)
		if !reflect.DeepEqual(w, have) {
			return fmt.Sprintf("%s %v, want %v", name, have, w)
		}
	}
	return ""
}

func describe(v []byte) string {
	if v == nil {
		return "null"
	}
	if len(v) > 64 {
		return fmt.Sprintf("%d bytes %q...", len(v), v[:64])
	}
	return fmt.Sprintf("%q", v)
}

// jsonMatch compares JSON texts as values; {"any": true} in want matches anything.
func jsonMatch(want, have json.RawMessage) bool {
	var w, h any
	dw := json.NewDecoder(bytes.NewReader(want))
	dw.UseNumber()
	dh := json.NewDecoder(bytes.NewReader(have))
	dh.UseNumber()
	if dw.Decode(&w) != nil || dh.Decode(&h) != nil {
		return false
	}
	return matchValue(w, h)
}

func matchValue(w, h any) bool {
	switch wv := w.(type) {
	case map[string]any:
		if len(wv) == 1 && wv["any"] == true {
			return true
		}
		hv, ok := h.(map[string]any)
		if !ok || len(hv) != len(wv) {
			return false
		}
		for k, x := range wv {
			y, ok := hv[k]
			if !ok || !matchValue(x, y) {
				return false
			}
		}
		return true
	case []any:
		hv, ok := h.([]any)
		if !ok || len(hv) != len(wv) {
			return false
		}
		for i := range wv {
			if !matchValue(wv[i], hv[i]) {
				return false
			}
		}
		return true
	case json.Number:
		hv, ok := h.(json.Number)
		if !ok {
			return false
		}
		a, okA := new(big.Float).SetString(string(wv))
		b, okB := new(big.Float).SetString(string(hv))
		return okA && okB && a.Cmp(b) == 0
	default:
		return reflect.DeepEqual(w, h)
	}
}

// caseIdentity turns a case's identity into what the Go API takes: int64 (or *big.Int beyond it),
// string, or *big.Int for {"bigint": "..."}.
func caseIdentity(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil
	}
	switch x := v.(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		n, _ := new(big.Int).SetString(string(x), 10)
		return n
	case string:
		return x
	case map[string]any:
		if s, ok := x["bigint"].(string); ok {
			n, _ := new(big.Int).SetString(s, 10)
			return n
		}
	}
	return v
}

// caseValue turns a case's value into bytes (nil for null).
func caseValue(raw json.RawMessage) []byte {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var v struct {
		UTF8   *string `json:"utf8"`
		Base64 *string `json:"base64"`
		Repeat *string `json:"repeat"`
		Count  int     `json:"count"`
	}
	if json.Unmarshal(raw, &v) != nil {
		panic("bad case value " + string(raw))
	}
	switch {
	case v.UTF8 != nil:
		return []byte(*v.UTF8)
	case v.Base64 != nil:
		b, err := base64.StdEncoding.DecodeString(*v.Base64)
		if err != nil {
			panic("bad base64 in case value " + string(raw))
		}
		return b
	case v.Repeat != nil:
		return bytes.Repeat([]byte(*v.Repeat), v.Count)
	}
	panic("bad case value " + string(raw))
}
