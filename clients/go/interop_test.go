package cached

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestInteropProgram builds cmd/cached-interop and checks that what it writes the client reads and
// the other way round (binary values, big integers, strings, hash entries), and its error lines.
func TestInteropProgram(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "cached-interop")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "./cmd/cached-interop")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	d := startDaemon(t, "redis", "")
	c := d.dial(t)
	ctx := ctxT(t, 20*time.Second)
	cmd := exec.Command(bin)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	out := bufio.NewReader(stdout)
	ask := func(line string) map[string]any {
		t.Helper()
		if _, err := fmt.Fprintln(stdin, line); err != nil {
			t.Fatal(err)
		}
		answer, err := out.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(answer), &m); err != nil {
			t.Fatalf("answer %q", answer)
		}
		return m
	}
	sock := fmt.Sprintf("%q", d.socket)
	bin1 := []byte{0, 0xff, 'a', '\n'}
	b64 := base64.StdEncoding.EncodeToString(bin1)
	if m := ask(`{"op":"set","socket":` + sock + `,"key":"Student","identity":123456789012345678901234567890,"value":"` + b64 + `"}`); m["ok"] != true {
		t.Fatalf("set: %v", m)
	}
	n, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	if r, err := c.Get(ctx, "Student", n); err != nil || string(r.Value) != string(bin1) {
		t.Fatalf("client reads the interop value: %+v %v", r, err)
	}
	if v, _ := d.redis.do("GET", "000STUDENT#123456789012345678901234567890"); string(v.([]byte)) != string(bin1) {
		t.Fatalf("layout: %q", v)
	}
	c.Set(ctx, "Student", "ü/x", []byte("from go"), 0, InHash("Class", -3))
	m := ask(`{"op":"get","socket":` + sock + `,"key":"Student","identity":"ü/x","hashKey":"Class","hashId":-3}`)
	if m["hit"] != true || m["value"] != base64.StdEncoding.EncodeToString([]byte("from go")) {
		t.Fatalf("interop reads the client's value: %v", m)
	}
	if m := ask(`{"op":"get","socket":` + sock + `,"key":"Student","identity":99}`); m["hit"] != false || m["value"] != nil {
		t.Fatalf("miss: %v", m)
	}
	m = ask(`{"op":"get","socket":` + sock + `,"key":"Student","identity":1.5}`)
	e, _ := m["error"].(map[string]any)
	if e == nil || e["code"] != float64(CodeInvalidParams) || !strings.Contains(e["message"].(string), "integer") {
		t.Fatalf("error line: %v", m)
	}
	m = ask(`{"op":"get","socket":"/nonexistent/cached.sock","key":"Student","identity":1}`)
	if m["error"] == nil {
		t.Fatalf("unreachable daemon: %v", m)
	}
}
