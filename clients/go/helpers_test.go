package cached

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemonBinary is the cached binary the integration tests run: $CACHED_BIN, else the repository's
// debug build.
func daemonBinary(t testing.TB) string {
	if bin := os.Getenv("CACHED_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs("../../.build/debug/cached")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no cached binary: set CACHED_BIN (tried %s)", bin)
	}
	return bin
}

// proc is a child process of a test, stopped by its pid.
type proc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

func startProc(t testing.TB, dir string, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	var log bytes.Buffer
	cmd.Stdout = &lockedWriter{b: &log}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", argv[0], err)
	}
	p := &proc{cmd: cmd, log: &log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends sig to the process (and its group: the daemon's workers), then SIGKILL after 10 s.
func (p *proc) stop(sig syscall.Signal) {
	if !p.alive() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func rawPing(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"ping"}` + "\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.Contains(line, `"pong"`)
}

// testRedis is a private redis-server on a Unix socket.
type testRedis struct {
	dir, socket string
	p           *proc
}

func startRedis(t testing.TB, dir string) *testRedis {
	t.Helper()
	r := &testRedis{dir: dir, socket: filepath.Join(dir, "redis.sock")}
	r.start(t)
	return r
}

func (r *testRedis) start(t testing.TB) {
	t.Helper()
	exe, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed (Debian: redis-server): %v", err)
	}
	r.p = startProc(t, r.dir, exe, "--port", "0", "--unixsocket", r.socket, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", r.dir)
	waitFor(t, "redis-server", 10*time.Second, func() bool {
		if !r.p.alive() {
			t.Fatalf("redis-server exited: %s", r.p.log.String())
		}
		reply, err := r.do("PING")
		return err == nil && reply == "PONG"
	})
}

// do runs one Redis command (a minimal RESP client): strings, integers, nil, arrays.
func (r *testRedis) do(args ...string) (any, error) {
	c, err := net.DialTimeout("unix", r.socket, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		return nil, err
	}
	return readRESP(bufio.NewReader(c))
}

func readRESP(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return buf[:n], nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readRESP(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP line %q", line)
}

// testDaemon is a real cached on a private socket, with the embedded store or a private Redis.
type testDaemon struct {
	t      testing.TB
	dir    string
	socket string
	config string
	redis  *testRedis
	p      *proc
}

// startDaemon starts cached with testdata/cached.toml plus extra configuration; store is
// "embedded" or "redis".
func startDaemon(t testing.TB, store string, extra string) *testDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "cached-go-")
	if err != nil {
		t.Fatal(err)
	}
	worker, _ := filepath.Abs("testdata/worker.py")
	base, err := os.ReadFile("testdata/cached.toml")
	if err != nil {
		t.Fatal(err)
	}
	config := strings.ReplaceAll(string(base), `"worker.py"`, strconv.Quote(worker))
	config = extra + "\n" + config
	if store == "redis" {
		config += "\n[keys.Fresh]\nttl = 0.3\nstale_ttl = 30\nhandler = [\"python3\", " + strconv.Quote(worker) + "]\nworkers = 1\n"
	}
	d := &testDaemon{t: t, dir: dir, socket: filepath.Join(dir, "cached.sock"), config: filepath.Join(dir, "cached.toml")}
	if err := os.WriteFile(d.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if store == "redis" {
		d.redis = startRedis(t, dir)
	}
	d.start()
	t.Cleanup(func() {
		d.stop()
		if d.redis != nil {
			d.redis.p.stop(syscall.SIGTERM)
		}
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("daemon dir kept: %s", dir)
		}
	})
	return d
}

func (d *testDaemon) start() {
	d.t.Helper()
	argv := []string{daemonBinary(d.t), "--socket", d.socket, "--config", d.config}
	if d.redis != nil {
		argv = append(argv, "--redis", "unix://"+d.redis.socket+"?db=0")
	}
	d.p = startProc(d.t, d.dir, argv...)
	waitFor(d.t, "cached", 20*time.Second, func() bool {
		if !d.p.alive() {
			d.t.Fatalf("cached exited: %s", d.p.log.String())
		}
		return rawPing(d.socket)
	})
}

func (d *testDaemon) stop() { d.p.stop(syscall.SIGTERM) }

func (d *testDaemon) restart() {
	d.t.Helper()
	d.stop()
	d.start()
}

func (d *testDaemon) dial(t testing.TB, opts ...DialOption) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, d.socket, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
