package cached

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestReadmeQuickStart runs README.md's quick start program against a real daemon.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "```go\n")
	if start < 0 {
		t.Fatal("README.md has no Go code block")
	}
	code := text[start+len("```go\n"):]
	code = code[:strings.Index(code, "```")]
	here, _ := filepath.Abs(".")
	dir := t.TempDir()
	gomod := "module quickstart\n\ngo 1.19\n\nrequire github.com/cached-dev/cached/clients/go v0.0.0\n\n" +
		"replace github.com/cached-dev/cached/clients/go => " + here + "\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "embedded", "")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "run", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CACHED_SOCKET="+d.socket, "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run: %v\n%s", err, out)
	}
	want := "hit=true value={\"name\":\"Ada\"}\nfetched {\"name\":\"Alan\"}\ninvalid params: true\n"
	if string(out) != want {
		t.Fatalf("quick start printed:\n%s\nwant:\n%s", out, want)
	}
}
