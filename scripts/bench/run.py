"""Orchestrates `make bench`: starts a private redis-server and a release cached, measures them side by
side, prints a markdown table and rewrites docs/benchmarks.md. Called by scripts/bench.sh, which builds
the binaries and prepares the virtual environments first.

Everything runs on loopback TCP or Unix sockets in a temp directory, with bounded request counts.
"""

import argparse
import csv
import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print("[bench] " + msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="cbench-", dir="/tmp")
        self.procs = []
        self.results = {}
        self.notes = []
        self.artefacts = os.path.join(ROOT, ".build-bench-results")
        os.makedirs(self.artefacts, exist_ok=True)

    # ---------------------------------------------------------------- processes

    def spawn(self, argv, name, **kw):
        out = open(os.path.join(self.tmp, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=30):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self):
        for p in reversed(self.procs):
            try:
                self.stop(p, timeout=10)
            except Exception:
                pass
        if not self.a.keep_temp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, argv, timeout=300, check=True, **kw):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise RuntimeError("%s failed (%d):\n%s\n%s" % (" ".join(argv), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
        return r

    # ---------------------------------------------------------------- redis

    @staticmethod
    def free_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def start_redis(self):
        self.redis_port = self.free_port()
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        self.redis = self.spawn([
            self.a.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--unixsocket", self.redis_sock,
            "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.tmp,
            "--logfile", os.path.join(self.tmp, "redis.log"), "--maxclients", "20000"], "redis")
        for _ in range(200):
            r = subprocess.run(["redis-cli", "-s", self.redis_sock, "PING"], capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def populate_redis_benchmark_keys(self, target=None, prefix=b"key:"):
        """SET key:%012d for the keyspace, the names redis-benchmark -r uses. `target`: redis-cli's connection
        arguments (default: the plain redis-server's Unix socket); `prefix`: what comes before the 12 digits
        (in cluster mode redis-benchmark reads key:{TAG}:%012d)."""
        path = os.path.join(self.tmp, "populate.resp")
        value = b"x" * self.a.value_size
        with open(path, "wb") as f:
            for i in range(self.a.keyspace):
                k = prefix + b"%012d" % i
                f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(value), value))
        with open(path, "rb") as f:
            subprocess.run(["redis-cli"] + (target or ["-s", self.redis_sock]) + ["--pipe"], stdin=f, capture_output=True,
                           check=True, timeout=120)

    def redis_benchmark(self, pipeline, requests, unix=False, tls=False, cluster=False):
        if tls:
            target = self.tls_target()
        elif cluster:
            target = self.cluster_benchmark_target()
        else:
            target = ["-s", self.redis_sock] if unix else ["-h", "127.0.0.1", "-p", str(self.redis_port)]
        r = self.run(["redis-benchmark"] + target + [
            "-t", "get", "-c", str(self.a.connections), "-P", str(pipeline), "-n", str(requests),
            "-d", str(self.a.value_size), "-r", str(self.a.keyspace), "--csv"], timeout=300)
        # In cluster mode the CSV comes after a list of the masters: read from its header line on.
        text = r.stdout[r.stdout.find('"test"'):] if '"test"' in r.stdout else r.stdout
        rows = list(csv.DictReader(io.StringIO(text)))
        row = rows[-1]
        return {"rps": float(row["rps"]), "p50Micros": float(row["p50_latency_ms"]) * 1000,
                "p99Micros": float(row["p99_latency_ms"]) * 1000, "maxMicros": float(row["max_latency_ms"]) * 1000}

    # ---------------------------------------------------------------- redis over TLS

    def tls_unavailable(self):
        """Why the TLS row cannot run on this machine, or None."""
        if not shutil.which("openssl"):
            return "openssl is missing (apt-get install openssl)"
        for tool in ("redis-cli", "redis-benchmark"):
            r = subprocess.run([tool, "--help"], capture_output=True, text=True)
            if "--tls" not in r.stdout + r.stderr:
                return "%s has no --tls option (built without TLS)" % tool
        return None

    def make_certificates(self):
        """A CA and a server certificate (DNS:localhost, IP:127.0.0.1) in the temp dir, as the TLS tests make them."""
        d = os.path.join(self.tmp, "tls")
        os.makedirs(d, exist_ok=True)
        self.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cached bench CA",
                  "-keyout", os.path.join(d, "ca.key"), "-out", os.path.join(d, "ca.crt")], timeout=60)
        self.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                  "-keyout", os.path.join(d, "server.key"), "-out", os.path.join(d, "server.csr")], timeout=60)
        with open(os.path.join(d, "server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.run(["openssl", "x509", "-req", "-in", os.path.join(d, "server.csr"), "-CA", os.path.join(d, "ca.crt"),
                  "-CAkey", os.path.join(d, "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", os.path.join(d, "server.ext"),
                  "-out", os.path.join(d, "server.crt")], timeout=60)
        self.tls_ca = os.path.join(d, "ca.crt")
        return d

    def tls_target(self):
        """redis-cli / redis-benchmark arguments for the TLS-only redis-server."""
        return ["--tls", "--cacert", self.tls_ca, "-h", "127.0.0.1", "-p", str(self.redis_tls_port)]

    def start_redis_tls(self):
        """A second redis-server, TLS only (--port 0), no client certificates asked. Returns None, or why it
        cannot run (a redis-server built without TLS refuses the options)."""
        d = self.make_certificates()
        self.redis_tls_port = self.free_port()
        self.redis_tls = self.spawn([
            self.a.redis_server, "--port", "0", "--tls-port", str(self.redis_tls_port), "--bind", "127.0.0.1",
            "--tls-cert-file", os.path.join(d, "server.crt"), "--tls-key-file", os.path.join(d, "server.key"),
            "--tls-ca-cert-file", self.tls_ca, "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.tmp,
            "--logfile", os.path.join(self.tmp, "redis-tls.log"), "--maxclients", "20000"], "redis-tls")
        for _ in range(200):
            if self.redis_tls.poll() is not None:
                lines = [l for l in self.tail("redis-tls").splitlines() if l.strip()]
                return "redis-server refused the TLS options (built without TLS?): %s" % (lines[-1] if lines else "exit %d" % self.redis_tls.returncode)
            r = subprocess.run(["redis-cli"] + self.tls_target() + ["PING"], capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return None
            time.sleep(0.05)
        self.stop(self.redis_tls)
        lines = [l for l in self.tail("redis-tls").splitlines() if l.strip()]
        return "redis-server with --tls-port did not answer PING over TLS: %s" % (lines[-1] if lines else "-")

    # ---------------------------------------------------------------- redis cluster

    CLUSTER_NODES = 3

    def cluster_unavailable(self):
        """Why the cluster row cannot run with these tools, or None."""
        for tool, needle in (("redis-cli", "--cluster"), ("redis-benchmark", "--cluster")):
            r = subprocess.run([tool, "--help"], capture_output=True, text=True)
            if needle not in r.stdout + r.stderr:
                return "%s has no --cluster option (Redis older than 5/6?)" % tool
        return None

    def free_cluster_port(self, taken):
        """A free port P <= 55535 whose cluster bus port P+10000 is free too."""
        for _ in range(500):
            port = self.free_port()
            if port > 55535 or port in taken or port + 10000 in taken:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            finally:
                s.close()
            return port
        raise RuntimeError("no free port <= 55535 with a free cluster bus port (port + 10000)")

    @staticmethod
    def redis_info(port, section):
        """`INFO section` (or `CLUSTER INFO` for "cluster info") of the node on `port` as a dict of strings."""
        command = ["CLUSTER", "INFO"] if section == "cluster info" else ["INFO", section]
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port)] + command, capture_output=True, text=True, timeout=30)
        return dict(line.strip().split(":", 1) for line in r.stdout.splitlines() if ":" in line)

    def cluster_keys(self):
        """Keys in db 0 of each cluster node."""
        out = []
        for port in self.cluster_ports:
            db0 = self.redis_info(port, "keyspace").get("db0", "keys=0")
            out.append(int(db0.split(",")[0].split("=")[1]))
        return out

    def cluster_hits(self):
        """keyspace_hits and keyspace_misses summed over the cluster nodes."""
        hits = misses = 0
        for port in self.cluster_ports:
            st = self.redis_info(port, "stats")
            hits += int(st.get("keyspace_hits", 0))
            misses += int(st.get("keyspace_misses", 0))
        return hits, misses

    def cluster_cpu_seconds(self):
        return sum(self.cpu_seconds(p.pid) for p in self.cluster)

    def cluster_benchmark_target(self):
        """redis-benchmark arguments for the cluster: any node as entry point; one client thread, like the
        single-node runs and cached-bench (in cluster mode redis-benchmark otherwise starts a thread per master)."""
        return ["--cluster", "--threads", "1", "-h", "127.0.0.1", "-p", str(self.cluster_ports[0])]

    def start_cluster(self):
        """Three primaries on self.cluster_ports (no replicas, no persistence), one folder per node under the temp dir, joined by
        `redis-cli --cluster create`, then waited on until every node reports cluster_state:ok with all slots.
        Returns None, or why the cluster cannot run."""
        self.cluster = []
        for port in self.cluster_ports:
            d = os.path.join(self.tmp, "cluster", str(port))
            os.makedirs(d, exist_ok=True)
            name = "redis-cluster-%d" % port
            self.cluster.append(self.spawn([
                self.a.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", d, "--logfile", os.path.join(self.tmp, name + ".log"), "--maxclients", "20000"], name))
        for port, p in zip(self.cluster_ports, self.cluster):
            for _ in range(200):
                if p.poll() is not None:
                    lines = [l for l in self.tail(p.bench_name).splitlines() if l.strip()]
                    return "redis-server refused the cluster options: %s" % (lines[-1] if lines else "exit %d" % p.returncode)
                r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "PING"], capture_output=True, text=True)
                if r.stdout.strip() == "PONG":
                    break
                time.sleep(0.05)
            else:
                return "cluster node %d did not answer PING" % port
        r = self.run(["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % port for port in self.cluster_ports] + [
            "--cluster-replicas", "0", "--cluster-yes"], timeout=120, check=False)
        if r.returncode != 0:
            lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
            return "redis-cli --cluster create failed (%d): %s" % (r.returncode, lines[-1] if lines else "-")
        deadline = time.monotonic() + 30
        while True:
            states = [self.redis_info(port, "cluster info") for port in self.cluster_ports]
            if all(st.get("cluster_state") == "ok" and st.get("cluster_slots_ok") == "16384"
                   and st.get("cluster_known_nodes") == str(self.CLUSTER_NODES) for st in states):
                return None
            if time.monotonic() > deadline:
                return "the cluster did not reach cluster_state:ok within 30 s: %s" % [
                    (st.get("cluster_state"), st.get("cluster_slots_ok"), st.get("cluster_known_nodes")) for st in states]
            time.sleep(0.1)

    def populate_cluster(self):
        """The keyspace for redis-benchmark --cluster. In cluster mode its GET reads key:{TAG}:%012d, where TAG is
        a hash tag of the first slot of the master each client connects to (the same tag for all of that
        client's requests), so every master is read through one tag. The tags are learnt from a short
        `-t set -r 1` run (key:{TAG}:000000000000 lands on each master), then key:{TAG}:0..keyspace-1 is
        written to each master over its own connection (all of a tag's keys live in one slot, on that master).
        Returns the prefixes, one per master."""
        self.run(["redis-benchmark"] + self.cluster_benchmark_target() + [
            "-t", "set", "-c", str(self.CLUSTER_NODES), "-n", "300", "-d", "1", "-r", "1", "--csv"], timeout=120)
        prefixes = []
        for port in self.cluster_ports:
            r = self.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--scan", "--pattern", "key:*"], timeout=60)
            found = [k for k in r.stdout.split() if k.endswith(":000000000000")]
            if len(found) != 1:
                raise RuntimeError("expected one redis-benchmark --cluster key on node %d, found %s" % (port, found[:5]))
            prefix = found[0][:-12].encode()
            self.populate_redis_benchmark_keys(["-h", "127.0.0.1", "-p", str(port)], prefix=prefix)
            prefixes.append(prefix.decode())
        return prefixes

    # ---------------------------------------------------------------- cached

    def write_config(self, path, redis_url, with_handlers=True, tls_ca_file=None, keys=None, metrics_port=None):
        """A daemon's TOML. `keys`: [keys.*] sections (lines from handler_key) instead of the usual Cold and Fill."""
        lines = ['redis = "%s"' % redis_url, 'log_level = "warning"', "", "[limits]",
                 "max_connections = %d" % (self.a.idle_connections + 1000), ""]
        if tls_ca_file:
            lines += ["[redis_options]", 'tls_ca_file = "%s"' % tls_ca_file, ""]
        if metrics_port:
            lines += ["[metrics]", 'listen = "127.0.0.1:%d"' % metrics_port, ""]
        if keys is not None:
            lines += keys
        elif with_handlers:
            for name, func, workers in (("Cold", "cold", 2), ("Fill", "fast", 2)):
                lines += self.handler_key(name, func, workers, self.cold_count_file)
        with open(path, "w") as f:
            f.write("\n".join(lines))

    def timed_section(self, name, measure):
        """Runs a section that reports {"ran": ...}: its failure is reported, never aborts the other figures."""
        t0 = time.monotonic()
        try:
            self.results[name] = measure()
        except Exception as e:  # report, do not abort the other figures
            self.results[name] = {"ran": False, "reason": "error: %s" % str(e)[:500]}
        if not self.results[name].get("ran"):
            log("  %s: did not run: %s" % (name, self.results[name]["reason"]))
        log("  %s: %.0f s" % (name, time.monotonic() - t0))

    @staticmethod
    def access_rules(n):
        """`n` [[access]] rules (#26's cost target): n - 1 for other uids, each with a few patterns, and last the
        one that names the bench's own user, which reads the bench key among other names (the worst case: every
        rule is looked at when the connection's permissions are worked out). None for n = 0 (no rules)."""
        if n <= 0:
            return None
        lines = []
        for i in range(n - 1):
            lines += ["[[access]]", 'name = "team%d"' % i, "users = [%d]" % (60000 + i),
                      'read = ["Team%dStudent", "Team%dClass", "Team%d*"]' % (i, i, i), 'write = ["Team%dSession"]' % i, ""]
        lines += ["[[access]]", 'name = "bench"', "users = [%d]" % os.getuid(),
                  'read = ["Student", "Class", "Report*"]', 'write = ["Session", "Bench"]', ""]
        return lines

    def handler_key(self, name, func, workers, count_file, settings=(), stamp=False):
        """The [keys.NAME] lines of a key filled by bench_handler.FUNC, its calls logged to `count_file`;
        `settings`: more "name = value" lines; `stamp`: the value carries its fill's end stamp (filledAt)."""
        env = '{ PYTHONPATH = "%s:%s", BENCH_COUNT_FILE = "%s", BENCH_HANDLER_SECONDS = "%s"%s }' % (
            os.path.join(ROOT, "clients", "python"), HERE, count_file, self.a.handler_seconds,
            ', BENCH_VALUE_STAMP = "1"' if stamp else "")
        return (["[keys.%s]" % name,
                 'handler = ["%s", "-m", "redis_cache.worker", "bench_handler:%s"]' % (sys.executable, func),
                 "workers = %d" % workers, "timeout = 5.0"] + list(settings) + ["environment = %s" % env, ""])

    def cached_redis_url(self):
        if self.a.cached_redis == "unix":
            return "unix://%s?db=0" % self.redis_sock
        return "redis://127.0.0.1:%d/0" % self.redis_port

    def start_cached(self, name, config, prefix=(), ready_timeout=30):
        sock = os.path.join(self.tmp, name + ".sock")
        p = self.spawn(list(prefix) + [self.a.cached, "--config", config, "--socket", sock], name)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError("cached exited (%s): %s" % (p.returncode, self.tail(name)))
            try:
                if self.rpc(sock, "ping").get("result") == "pong":
                    return p, sock
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("cached did not answer ping: " + self.tail(name))

    def tail(self, name):
        try:
            with open(os.path.join(self.tmp, name + ".log"), "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def rpc(sock, method, params=None, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(sock)
            req = {"jsonrpc": "2.0", "id": 1, "method": method}
            if params is not None:
                req["params"] = params
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return json.loads(buf.split(b"\n", 1)[0])
        finally:
            s.close()

    def cached_bench(self, sock, *extra, timeout=300):
        r = self.run([self.a.cached_bench, "--socket", sock, "--json", "--value-size", str(self.a.value_size),
                      "--keyspace", str(self.a.keyspace)] + [str(x) for x in extra], timeout=timeout, check=False)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError("cached-bench failed (%d): %s %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))

    @staticmethod
    def cpu_seconds(pid):
        """utime + stime of a process (all threads), in seconds."""
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def rss_kb(pid):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    # ---------------------------------------------------------------- scenarios

    def throughput(self, sock, pipeline, requests):
        """redis-benchmark (TCP, unix) vs cached-bench, interleaved, median of the repeats."""
        runs = {"redis_tcp": [], "redis_unix": [], "cached": []}
        cpu = {"redis_alone": [], "cached": [], "redis_behind_cached": []}
        for i in range(self.a.repeat):
            r0 = self.cpu_seconds(self.redis.pid)
            runs["redis_tcp"].append(self.redis_benchmark(pipeline, requests))
            cpu["redis_alone"].append((self.cpu_seconds(self.redis.pid) - r0) / requests * 1e6)
            runs["redis_unix"].append(self.redis_benchmark(pipeline, requests, unix=True))
            r0, c0 = self.cpu_seconds(self.redis.pid), self.cpu_seconds(self.cached.pid)
            c = self.cached_bench(sock, "--mix", "get-hit", "-c", self.a.connections, "-P", pipeline, "-n", requests)
            cpu["cached"].append((self.cpu_seconds(self.cached.pid) - c0) / requests * 1e6)
            cpu["redis_behind_cached"].append((self.cpu_seconds(self.redis.pid) - r0) / requests * 1e6)
            runs["cached"].append(c)
            log("  P=%d run %d: redis tcp %.0f rps p99 %.0f us | redis unix %.0f rps | cached %.0f rps p99 %.0f us (errors %s, misses %s)" % (
                pipeline, i + 1, runs["redis_tcp"][-1]["rps"], runs["redis_tcp"][-1]["p99Micros"], runs["redis_unix"][-1]["rps"],
                c["requestsPerSecond"], c["p99Micros"], c["errors"], c["misses"]))
        out = {name: self.summary(rs, cached=name == "cached") for name, rs in runs.items()}
        out["cpuMicrosPerGet"] = {k: statistics.median(v) for k, v in cpu.items()}
        log("  CPU us per get: %s" % out["cpuMicrosPerGet"])
        return out

    def scrape_overhead(self, sock, requests):
        """cached-bench get-hit runs with and without a scraper fetching /metrics once a second, interleaved;
        medians of the repeats."""
        runs = {"plain": [], "scraped": []}
        scrapes = []
        for i in range(self.a.repeat):
            runs["plain"].append(self.cached_bench(sock, "--mix", "get-hit", "-c", self.a.connections, "-n", requests))
            stop = threading.Event()

            def scraper():
                while not stop.is_set():
                    started = time.monotonic()
                    with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as s:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                        body = b""
                        while True:
                            chunk = s.recv(65536)
                            if not chunk:
                                break
                            body += chunk
                    scrapes.append((time.monotonic() - started, len(body)))
                    stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

            t = threading.Thread(target=scraper)
            t.start()
            runs["scraped"].append(self.cached_bench(sock, "--mix", "get-hit", "-c", self.a.connections, "-n", requests))
            stop.set()
            t.join()
            log("  scrape run %d: plain %.0f rps | scraped once a second %.0f rps" % (
                i + 1, runs["plain"][-1]["requestsPerSecond"], runs["scraped"][-1]["requestsPerSecond"]))
        out = {name: self.summary(rs, cached=True) for name, rs in runs.items()}
        out["scrapes"] = len(scrapes)
        out["scrapeMillis"] = statistics.median(x[0] for x in scrapes) * 1000 if scrapes else None
        out["scrapeBytes"] = statistics.median(x[1] for x in scrapes) if scrapes else None
        return out

    @staticmethod
    def summary(rs, cached):
        """Medians of redis-benchmark (`cached` False) or cached-bench runs."""
        rps_key = "requestsPerSecond" if cached else "rps"
        out = {
            "rps": statistics.median(r[rps_key] for r in rs),
            "p50Micros": statistics.median(r["p50Micros"] for r in rs),
            "p99Micros": statistics.median(r["p99Micros"] for r in rs),
            "maxMicros": max(r["maxMicros"] for r in rs),
            "all": [round(r[rps_key]) for r in rs],
        }
        if cached:
            out["p999Micros"] = statistics.median(r["p999Micros"] for r in rs)
            out["errors"] = sum(r["errors"] + r["unexpected"] + r["wrongValues"] for r in rs)
            out["misses"] = sum(r["misses"] for r in rs)
            out["failures"] = [r["failure"] for r in rs if r["failure"]]
        return out

    def throughput_tls(self, tls_sock, sock, requests):
        """The unpipelined get-hit figure over TLS: redis-benchmark --tls straight to the TLS redis-server vs
        cached-bench through a cached with a rediss:// URL; in the same rounds, the plain redis-benchmark and the
        plain cached, for the TLS / plain ratios. Interleaved, median of the repeats."""
        runs = {"redis_tls": [], "redis_tcp": [], "cached_tls": [], "cached": []}
        cpu = {"redis_alone": [], "cached": [], "redis_behind_cached": []}
        n = self.a.connections
        for i in range(self.a.repeat):
            r0 = self.cpu_seconds(self.redis_tls.pid)
            runs["redis_tls"].append(self.redis_benchmark(1, requests, tls=True))
            cpu["redis_alone"].append((self.cpu_seconds(self.redis_tls.pid) - r0) / requests * 1e6)
            runs["redis_tcp"].append(self.redis_benchmark(1, requests))
            r0, c0 = self.cpu_seconds(self.redis_tls.pid), self.cpu_seconds(self.cached_tls.pid)
            c = self.cached_bench(tls_sock, "--mix", "get-hit", "-c", n, "-P", 1, "-n", requests)
            cpu["cached"].append((self.cpu_seconds(self.cached_tls.pid) - c0) / requests * 1e6)
            cpu["redis_behind_cached"].append((self.cpu_seconds(self.redis_tls.pid) - r0) / requests * 1e6)
            runs["cached_tls"].append(c)
            runs["cached"].append(self.cached_bench(sock, "--mix", "get-hit", "-c", n, "-P", 1, "-n", requests))
            log("  TLS run %d: redis tls %.0f rps p99 %.0f us | redis plain %.0f rps | cached tls %.0f rps p99 %.0f us "
                "(errors %s, misses %s) | cached plain %.0f rps" % (
                    i + 1, runs["redis_tls"][-1]["rps"], runs["redis_tls"][-1]["p99Micros"], runs["redis_tcp"][-1]["rps"],
                    c["requestsPerSecond"], c["p99Micros"], c["errors"], c["misses"], runs["cached"][-1]["requestsPerSecond"]))
        out = {name: self.summary(rs, cached=name.startswith("cached")) for name, rs in runs.items()}
        out["cpuMicrosPerGet"] = {k: statistics.median(v) for k, v in cpu.items()}
        log("  TLS CPU us per get: %s" % out["cpuMicrosPerGet"])
        out["ran"] = True
        return out

    def tls(self, sock):
        """The TLS row: its own redis-server and cached, stopped afterwards. {"ran": False, ...} when skipped."""
        why = self.tls_unavailable() or self.start_redis_tls()
        if why:
            return {"ran": False, "skipped": True, "reason": why}
        try:
            self.populate_redis_benchmark_keys(self.tls_target())
            config = os.path.join(self.tmp, "cached-tls.toml")
            self.write_config(config, "rediss://127.0.0.1:%d/0" % self.redis_tls_port, with_handlers=False, tls_ca_file=self.tls_ca)
            self.cached_tls, tls_sock = self.start_cached("cached-tls", config)
            try:
                warm = self.cached_bench(tls_sock, "--mix", "get-hit", "-c", self.a.connections, "-n", 0, "--warmup")
            except RuntimeError as e:
                return {"ran": False, "skipped": False,
                        "reason": "the warm-up through cached over TLS failed: %s | cached log: %s" % (str(e)[:300], self.tail("cached-tls")[-500:])}
            log("  TLS warm-up: %s s" % warm.get("warmupSeconds"))
            return self.throughput_tls(tls_sock, sock, self.a.requests)
        finally:
            if getattr(self, "cached_tls", None) is not None:
                self.stop(self.cached_tls)
            self.stop(self.redis_tls)

    def cluster_url(self):
        return "redis-cluster://" + ",".join("127.0.0.1:%d" % port for port in self.cluster_ports)

    def throughput_cluster(self, cluster_sock, sock, requests):
        """The unpipelined get-hit figure on a Redis Cluster: redis-benchmark --cluster straight to the masters vs
        cached-bench through a cached with a redis-cluster:// URL; in the same rounds, the plain redis-benchmark
        and the plain cached, for the cluster / single-node ratios. Interleaved, median of the repeats. CPU: the
        daemon plus all the masters; redis-benchmark's hits and misses from the masters' INFO stats."""
        runs = {"redis_cluster": [], "redis_tcp": [], "cached_cluster": [], "cached": []}
        cpu = {"redis_alone": [], "cached": [], "redis_behind_cached": []}
        hits = {"hits": 0, "misses": 0}
        n = self.a.connections
        for i in range(self.a.repeat):
            r0, (h0, m0) = self.cluster_cpu_seconds(), self.cluster_hits()
            runs["redis_cluster"].append(self.redis_benchmark(1, requests, cluster=True))
            cpu["redis_alone"].append((self.cluster_cpu_seconds() - r0) / requests * 1e6)
            h1, m1 = self.cluster_hits()
            hits["hits"] += h1 - h0
            hits["misses"] += m1 - m0
            runs["redis_tcp"].append(self.redis_benchmark(1, requests))
            r0, c0 = self.cluster_cpu_seconds(), self.cpu_seconds(self.cached_cluster.pid)
            c = self.cached_bench(cluster_sock, "--mix", "get-hit", "-c", n, "-P", 1, "-n", requests)
            cpu["cached"].append((self.cpu_seconds(self.cached_cluster.pid) - c0) / requests * 1e6)
            cpu["redis_behind_cached"].append((self.cluster_cpu_seconds() - r0) / requests * 1e6)
            runs["cached_cluster"].append(c)
            runs["cached"].append(self.cached_bench(sock, "--mix", "get-hit", "-c", n, "-P", 1, "-n", requests))
            log("  cluster run %d: redis cluster %.0f rps p99 %.0f us (misses %d) | redis single %.0f rps | cached cluster %.0f rps "
                "p99 %.0f us (errors %s, misses %s) | cached single %.0f rps" % (
                    i + 1, runs["redis_cluster"][-1]["rps"], runs["redis_cluster"][-1]["p99Micros"], m1 - m0,
                    runs["redis_tcp"][-1]["rps"], c["requestsPerSecond"], c["p99Micros"], c["errors"], c["misses"],
                    runs["cached"][-1]["requestsPerSecond"]))
        out = {name: self.summary(rs, cached=name.startswith("cached")) for name, rs in runs.items()}
        out["cpuMicrosPerGet"] = {k: statistics.median(v) for k, v in cpu.items()}
        out["redisBenchmarkKeyspace"] = hits
        log("  cluster CPU us per get: %s" % out["cpuMicrosPerGet"])
        out["ran"] = True
        return out

    def cluster(self, sock):
        """The Redis Cluster row: three masters and a cached of their own, stopped afterwards. {"ran": False, ...}
        when skipped: the tools lack cluster mode, the daemon refuses redis-cluster:// URLs (checked with
        --check-config before any node starts), or redis-server cannot run a cluster."""
        why = self.cluster_unavailable()
        if why:
            return {"ran": False, "skipped": True, "reason": why}
        self.cached_cluster, self.cluster, self.cluster_ports = None, [], []
        for _ in range(self.CLUSTER_NODES):
            self.cluster_ports.append(self.free_cluster_port(self.cluster_ports))
        config = os.path.join(self.tmp, "cached-cluster.toml")
        self.write_config(config, self.cluster_url(), with_handlers=False)
        r = self.run([self.a.cached, "--check-config", "--config", config], timeout=60, check=False)
        if r.returncode != 0:
            lines = [l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip()]
            refused = next((l for l in lines if "invalid Redis URL" in l), None)
            if refused:
                return {"ran": False, "skipped": True, "reason": "the daemon refuses redis-cluster:// URLs (cached --check-config: %s)" % refused}
            return {"ran": False, "skipped": False, "reason": "cached --check-config failed (%d): %s" % (
                r.returncode, lines[0] if lines else "-")}
        try:
            why = self.start_cluster()
            if why:  # a port taken meanwhile is a failure, not a reason to skip
                return {"ran": False, "skipped": "already in use" not in why, "reason": why}
            prefixes = self.populate_cluster()
            before = self.cluster_keys()
            log("  cluster masters %s, redis-benchmark keys %s per master (%s)" % (
                ", ".join(map(str, self.cluster_ports)), before, ", ".join(prefixes)))
            self.cached_cluster, cluster_sock = self.start_cached("cached-cluster", config)
            try:
                warm = self.cached_bench(cluster_sock, "--mix", "get-hit", "-c", self.a.connections, "-n", 0, "--warmup")
            except RuntimeError as e:
                return {"ran": False, "skipped": False,
                        "reason": "the warm-up through cached on the cluster failed: %s | cached log: %s" % (
                            str(e)[:300], self.tail("cached-cluster")[-500:])}
            spread = [a - b for a, b in zip(self.cluster_keys(), before)]
            log("  cluster warm-up: %s s, entries per master %s" % (warm.get("warmupSeconds"), spread))
            out = self.throughput_cluster(cluster_sock, sock, self.a.requests)
            out["masters"] = self.CLUSTER_NODES
            out["cachedEntriesPerMaster"] = spread
            out["redisBenchmarkPrefixes"] = prefixes
            return out
        finally:
            if self.cached_cluster is not None:
                self.stop(self.cached_cluster)
            for p in self.cluster:
                self.stop(p)

    def python_calls(self, sock):
        a = self.a
        common = ["--keyspace", "1000", "--calls", str(a.python_calls), "--rounds", "5"]
        tcp = ["--redis-port", str(self.redis_port)]
        script = os.path.join(HERE, "py_client.py")
        self.run([a.venv_redispy, script, "--mode", "populate"] + tcp + common)
        res = {}
        for name, py, extra in (("shim", a.venv_shim, ["--mode", "shim", "--socket", sock]),
                                ("shim_near", a.venv_shim, ["--mode", "shim-near", "--socket", sock]),
                                ("redispy", a.venv_redispy, ["--mode", "redispy"] + tcp),
                                ("redispy_csc", a.venv_redispy, ["--mode", "redispy-csc"] + tcp),
                                ("redispy_unix", a.venv_redispy, ["--mode", "redispy", "--redis-socket", self.redis_sock]),
                                ("pyredis", a.venv_pyredis, ["--mode", "pyredis"] + tcp)):
            r = self.run([py, script] + extra + common, check=False, timeout=300)
            try:
                res[name] = json.loads(r.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                res[name] = {"error": (r.stdout + r.stderr)[-500:]}
            log("  python %s: %s" % (name, res[name]))
        # The Swift client's get of one stored entry, without and with its near cache.
        r = self.run([a.cached_bench, "--socket", sock, "--client-near", "1000", "-n", "5000", "--json"], check=False, timeout=300)
        try:
            res["swift_client"] = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res["swift_client"] = {"error": (r.stdout + r.stderr)[-500:]}
        log("  swift client: %s" % res["swift_client"])
        return res

    # ---------------------------------------------------------------- client libraries vs their floor

    CLIENTS_KEY = "Bench"
    CLIENTS_ENTRIES = 64

    # The Python shim's side of the clients section, run with the shim's venv (`python -c`): the same
    # variants and output as node_client.js. Falls back to clients/python when the venv has no shim.
    PY_CLIENTS_SCRIPT = r'''
import json, socket, statistics, sys, time
sock_path, calls, rounds, key, entries, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
source = "installed"
try:
    import redis_cache
except ImportError:
    sys.path.insert(0, root + "/clients/python")
    import redis_cache
    source = "clients/python (not installed in this interpreter)"

def never(identity, *a, **k):
    raise AssertionError("sync_func called for %r: the entry should have been a hit" % (identity,))

raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
raw.connect(sock_path)
key_json = json.dumps(key)
buf = bytearray()

def floor(i):
    global buf
    raw.sendall(b'{"jsonrpc":"2.0","id":%d,"method":"get","params":{"key":%s,"identity":%d}}\n' % (i, key_json.encode(), i % entries))
    while True:
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            return line
        chunk = raw.recv(65536)
        if not chunk:
            raise EOFError("the floor connection ended")
        buf += chunk

plain = redis_cache.CacheClient(sock_path, key, never)
near = redis_cache.CacheClient(sock_path, key, never, near_cache=entries)
for i in range(entries):
    a = json.loads(floor(i))
    if (a.get("result") or {}).get("hit") is not True:
        print(json.dumps({"language": "python", "error": "floor get of %d is not a hit: %r" % (i, a)})); sys.exit(1)
    got = plain.get(i)
    if got != a["result"]["value"].encode():
        print(json.dumps({"language": "python", "error": "plain get of %d: %r" % (i, got)})); sys.exit(1)

def near_state():
    return getattr(getattr(near.connection, "_local", None), "state", None)

deadline = time.monotonic() + 10
while True:  # the near cache keeps an entry from its second read
    for i in range(entries):
        near.get(i)
    st = near_state()
    if st is not None and st.near is not None and len(st.near.entries) >= entries:
        break
    if time.monotonic() > deadline:
        print(json.dumps({"language": "python", "error": "the near cache did not keep the entries"})); sys.exit(1)

def run_floor(n):
    for i in range(n):
        floor(i)

def run_plain(n, get=plain.get):
    for i in range(n):
        get(i % entries)

def run_near(n, get=near.get):
    for i in range(n):
        get(i % entries)

variants = (("floor", run_floor), ("plain", run_plain), ("near", run_near))
for _, run in variants:
    run(min(2000, calls))
results = {name: [] for name, _ in variants}
h0 = near_state().near.hits
m0 = near_state().near.misses
for _ in range(rounds):
    for name, run in variants:
        t0 = time.perf_counter_ns()
        run(calls)
        results[name].append((time.perf_counter_ns() - t0) / calls / 1000.0)
out = {"language": "python", "runtime": sys.version.split()[0], "shim": source, "callsPerRound": calls, "rounds": rounds, "entries": entries}
for name, xs in results.items():
    out[name] = {"usPerCall": round(statistics.median(xs), 2), "usPerCallBest": round(min(xs), 2), "rounds": [round(x, 2) for x in xs]}
out["near"].update(hits=near_state().near.hits - h0, misses=near_state().near.misses - m0, calls=calls * rounds)
print(json.dumps(out))
'''

    def clients(self):
        """A get hit's cost per call through each language's client (plain, and with its near cache where it has
        one) beside that language's bare Unix-socket round trip (the floor), all against one daemon of its own,
        every language's variants interleaved in rounds inside one process (median round)."""
        a = self.a
        config = os.path.join(self.tmp, "cached-clients.toml")
        self.write_config(config, self.cached_redis_url(), with_handlers=False)  # no [[access]] rules
        p, sock = self.start_cached("cached-clients", config)
        key, n = self.CLIENTS_KEY, self.CLIENTS_ENTRIES
        out = {"ran": True, "key": key, "entries": n, "callsPerRound": a.clients_calls, "rounds": a.clients_rounds, "languages": {}}
        try:
            for i in range(n):
                value = json.dumps({"id": i, "name": "bench %d" % i, "tags": ["a", "b", "c"], "score": 12.5})
                answer = self.rpc(sock, "set", {"key": key, "identity": i, "value": value, "ttl": 0})
                if (answer.get("result") or {}).get("stored") is not True:
                    return {"ran": False, "reason": "set %s/%d failed: %s" % (key, i, json.dumps(answer)[:300])}
            args = [sock, str(a.clients_calls), str(a.clients_rounds), key, str(n)]
            go_env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off")
            plan = (
                ("node", a.node, [a.node, os.path.join(HERE, "node_client.js")] + args, None, None),
                ("go", a.go, [a.go, "run", "./cmd/cached-bench-client"] + args, os.path.join(ROOT, "clients", "go"), go_env),
                ("php", a.php, [a.php, os.path.join(HERE, "php_client.php")] + args, None, None),
                ("python", a.venv_shim, [a.venv_shim, "-c", self.PY_CLIENTS_SCRIPT] + args + [ROOT], None, None),
            )
            for name, tool, argv, cwd, env in plan:
                if not shutil.which(tool):
                    out["languages"][name] = {"skipped": "%s not found" % tool}
                    log("  clients %s: skipped, %s not found" % (name, tool))
                    continue
                t0 = time.monotonic()
                try:
                    r = self.run(argv, timeout=600, check=False, cwd=cwd, env=env)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                except subprocess.TimeoutExpired:
                    res = {"error": "timed out after 600 s"}
                except (IndexError, ValueError):
                    res = {"error": "exit %d: %s %s" % (r.returncode, r.stdout[-400:], r.stderr[-400:])}
                res["seconds"] = round(time.monotonic() - t0, 1)
                out["languages"][name] = res
                log("  clients %s (%.0f s): %s" % (name, res["seconds"], json.dumps(res)[:600]))
        finally:
            self.stop(p)
        return out

    def cold_once(self, sock, identity, tag):
        """One run of cold_gets.py; the handler's (or the floor's) own stamps come from the count file."""
        try:
            os.unlink(self.cold_count_file)
        except FileNotFoundError:
            pass
        r = self.run([sys.executable, os.path.join(HERE, "cold_gets.py"), "--socket", sock, "--key", "Cold",
                      "--identity", str(identity), "--processes", "50", "--per-process", "20"], timeout=120)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        calls = []
        try:
            with open(self.cold_count_file) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == tag:
                        calls.append((int(parts[1]), int(parts[2])))
        except FileNotFoundError:
            pass
        out["handlerCalls"] = len(calls)
        if calls and out.get("firstReceivedAt") is not None:
            start, end = calls[0]
            out["handlerOwnMs"] = (end - start) / 1e6
            # Where the waiters' time goes: first send -> handler start, the handler itself,
            # handler end -> first answer received, first -> last answer received.
            out["dispatchMs"] = (start - out["firstSentAt"]) / 1e6
            out["returnMs"] = (out["firstReceivedAt"] - end) / 1e6
            out["fanOutMs"] = (out["lastReceivedAt"] - out["firstReceivedAt"]) / 1e6
            out["excessMs"] = out["maxMs"] - out["handlerOwnMs"]
        return out

    @staticmethod
    def median_run(runs):
        """The run with the median excess (max latency over the handler's own duration)."""
        done = sorted((r for r in runs if r.get("excessMs") is not None), key=lambda r: r["excessMs"])
        return done[len(done) // 2] if done else (runs[0] if runs else None)

    def cold(self, sock):
        identity = int(time.time() * 1000)
        # One probe on another identity first: do handler keys work at all?
        probe = self.rpc(sock, "get", {"key": "Cold", "identity": identity - 1}, timeout=15)
        if "error" in probe:
            return {"ran": False, "reason": "handler keys do not work yet: %s" % json.dumps(probe["error"])[:300]}
        floor = None
        floor_sock = os.path.join(self.tmp, "floor.sock")
        if self.a.fanout_floor:
            floor = self.spawn([self.a.fanout_floor, floor_sock, str(self.a.handler_seconds), self.cold_count_file], "floor")
            time.sleep(0.3)
        runs, floor_runs = [], []
        for i in range(self.a.repeat):  # interleaved, like the throughput figures
            runs.append(self.cold_once(sock, identity + i, str(identity + i)))
            if floor is not None and floor.poll() is None:
                floor_runs.append(self.cold_once(floor_sock, identity + i, "floor"))
        if floor is not None:
            self.stop(floor)
        out = dict(self.median_run(runs))
        out["ran"] = True
        out["runs"] = len(runs)
        out["callsPerRun"] = [r["handlerCalls"] for r in runs]
        out["answeredPerRun"] = [r["answered"] for r in runs]
        out["distinctPerRun"] = [r["distinctValues"] for r in runs]
        out["handlerMs"] = float(self.a.handler_seconds) * 1000
        out["floor"] = self.median_run(floor_runs)
        return out

    # ---------------------------------------------------------------- fleet and expiry (issue 15)

    FLEET_DAEMONS = 3

    @staticmethod
    def read_calls(path, tag):
        """The (start, end) stamps (CLOCK_MONOTONIC ns) of the handler calls logged in `path` for identity `tag`."""
        calls = []
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == str(tag):
                        calls.append((int(parts[1]), int(parts[2])))
        except FileNotFoundError:
            pass
        return sorted(calls)

    def fleet_stats(self, sock):
        """The `fleet` counters of a daemon's stats ({} when the daemon has none)."""
        try:
            return self.rpc(sock, "stats", timeout=15).get("result", {}).get("fleet") or {}
        except (OSError, ValueError):
            return {}

    def fleet_round(self, daemons, key, identity):
        """300 concurrent cold gets of KEY/IDENTITY to each daemon, started together (cold_gets.py with one
        --socket per daemon): answers, latency, handler calls per daemon, and the fleet counters' change."""
        before = [self.fleet_stats(d["sock"]) for d in daemons]
        argv = [sys.executable, os.path.join(HERE, "cold_gets.py"), "--key", key, "--identity", str(identity),
                "--processes", str(10 * len(daemons)), "--per-process", str(self.a.fleet_gets // 10)]
        for d in daemons:
            argv += ["--socket", d["sock"]]
        out = json.loads(self.run(argv, timeout=120).stdout.strip().splitlines()[-1])
        time.sleep(0.5)  # a late fill (a loser that stopped waiting and filled itself) would log by now
        after = [self.fleet_stats(d["sock"]) for d in daemons]
        out["fleet"] = {}
        for b, a in zip(before, after):
            for name, v in a.items():
                if isinstance(v, int):
                    out["fleet"][name] = out["fleet"].get(name, 0) + v - b.get(name, 0)
        calls = [self.read_calls(d["count"], identity) for d in daemons]
        out["callsPerDaemon"] = [len(c) for c in calls]
        out["handlerCalls"] = sum(out["callsPerDaemon"])
        every = sorted(c for cs in calls for c in cs)
        if every and out.get("firstReceivedAt") is not None:
            out["handlerOwnMs"] = statistics.median((end - start) / 1e6 for start, end in every)
            out["dispatchMs"] = (every[0][0] - out["firstSentAt"]) / 1e6
            out["excessMs"] = out["maxMs"] - out["handlerOwnMs"]
            out["maxOverHandler"] = out["maxMs"] / out["handlerOwnMs"]
            # The daemon whose handler ran (the lock holder, when one call ran) against the others: how much
            # later the others' first answer came, and their slowest waiter.
            per = out.get("perSocket") or []
            holders = [i for i, c in enumerate(calls) if c]
            if len(holders) == 1 and len(per) == len(daemons) and all(p.get("firstReceivedAt") for p in per):
                h = holders[0]
                out["holder"] = daemons[h]["name"]
                out["holderMaxMs"] = per[h]["maxMs"]
                others = [p for i, p in enumerate(per) if i != h]
                out["othersMaxMs"] = max(p["maxMs"] for p in others)
                out["othersLagMs"] = max(p["firstReceivedAt"] for p in others) / 1e6 - per[h]["firstReceivedAt"] / 1e6
                out["othersHits"] = sum(p["hits"] for p in others)
        return out

    def fleet(self):
        """The cold stampede across a fleet: three daemons sharing the bench's redis-server, each with its own
        socket and handler workers, and two handler keys: `Fleet` (fleet_single_flight on, the default with
        Redis) and `FleetSolo` (fleet_single_flight = false). Each round sends --fleet-gets concurrent gets of
        one never-used entry to every daemon at once; rounds alternate the two keys, each with a new identity."""
        daemons = []
        try:
            for n in range(self.FLEET_DAEMONS):
                name = "fleet-%s" % "abcdefgh"[n]
                count = os.path.join(self.tmp, name + "-calls")
                keys = (self.handler_key("Fleet", "cold", 1, count, ["ttl = 60"], stamp=True) +
                        self.handler_key("FleetSolo", "cold", 1, count, ["ttl = 60", "fleet_single_flight = false"], stamp=True))
                config = os.path.join(self.tmp, name + ".toml")
                self.write_config(config, self.cached_redis_url(), keys=keys)
                p, sock = self.start_cached(name, config)
                daemons.append({"name": name, "proc": p, "sock": sock, "count": count})
            # One get per daemon and key on identities of their own first: the handler keys work, every worker
            # has started and imported its module, and each daemon holds its Redis connections.
            base = int(time.time() * 1000)
            for n, d in enumerate(daemons):
                for key in ("Fleet", "FleetSolo"):
                    probe = self.rpc(d["sock"], "get", {"key": key, "identity": base - 1 - n}, timeout=15)
                    if "error" in probe or (probe.get("result") or {}).get("value") is None:
                        return {"ran": False, "reason": "%s: get %s failed: %s | log: %s" % (
                            d["name"], key, json.dumps(probe)[:300], self.tail(d["name"])[-300:])}
            rounds = {"on": [], "off": []}
            for i in range(self.a.fleet_rounds):
                for mode, key in (("on", "Fleet"), ("off", "FleetSolo")):
                    identity = base + 2 * i + (mode == "off")
                    r = self.fleet_round(daemons, key, identity)
                    rounds[mode].append(r)
                    log("  fleet %s round %d: %d calls %s, %d/%d answered (%d hits), %d values, p50 %.1f p99 %.1f max %.1f ms, "
                        "handler %.1f ms, holder max %s others max %s lag %s ms, counters %s" % (
                            mode, i + 1, r["handlerCalls"], r["callsPerDaemon"], r["answered"], r["requests"], r["hits"],
                            r["distinctValues"], r["p50Ms"] or -1, r["p99Ms"] or -1, r["maxMs"] or -1,
                            r.get("handlerOwnMs") or -1, r.get("holderMaxMs"), r.get("othersMaxMs"),
                            None if r.get("othersLagMs") is None else round(r["othersLagMs"], 1), r["fleet"]))
        finally:
            for d in daemons:
                self.stop(d["proc"])
        out = {"ran": True, "daemons": len(daemons), "getsPerDaemon": self.a.fleet_gets, "rounds": self.a.fleet_rounds,
               "handlerMs": float(self.a.handler_seconds) * 1000}
        for mode, rs in rounds.items():
            m = dict(self.median_run(rs))
            m.pop("perSocket", None)
            m["callsPerRound"] = [r["handlerCalls"] for r in rs]
            m["answeredPerRound"] = [r["answered"] for r in rs]
            m["distinctPerRound"] = [r["distinctValues"] for r in rs]
            m["hitsPerRound"] = [r["hits"] for r in rs]
            m["errors"] = sum(r["errors"] for r in rs)
            m["firstError"] = next((r["firstError"] for r in rs if r["firstError"]), None)
            m["counters"] = {}
            for r in rs:
                for k, v in r["fleet"].items():
                    m["counters"][k] = m["counters"].get(k, 0) + v
            for k in ("othersLagMs", "othersMaxMs", "holderMaxMs"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                m[k + "Median"] = statistics.median(vals) if vals else None
            out[mode] = m
        return out

    def expiry_round(self, sock, key, identity, count_file, stale_ttl):
        """One hot entry: filled by a first get, then --expiry-rate gets/s for --expiry-seconds (expiry_load.py)."""
        warm = self.rpc(sock, "get", {"key": key, "identity": identity}, timeout=15)
        if (warm.get("result") or {}).get("value") is None:
            raise RuntimeError("warm-up get %s/%s failed: %s" % (key, identity, json.dumps(warm)[:300]))
        before = self.fleet_stats(sock)
        handler = float(self.a.handler_seconds)
        r = self.run([sys.executable, os.path.join(HERE, "expiry_load.py"), "--socket", sock, "--key", key,
                      "--identity", str(identity), "--rate", str(self.a.expiry_rate), "--seconds", str(self.a.expiry_seconds),
                      "--connections", str(int(self.a.expiry_rate * handler * 1.5) + 8), "--ttl", str(self.EXPIRY_TTL),
                      "--stale-ttl", str(stale_ttl), "--handler-seconds", str(handler),
                      "--samples", os.path.join(self.tmp, "expiry-%s-%d.jsonl" % (key, identity))], timeout=120)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        time.sleep(handler + 0.3)  # a refresh started near the end logs its call
        after = self.fleet_stats(sock)
        out["fleet"] = {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}
        calls = self.read_calls(count_file, identity)
        out["handlerCalls"] = sum(1 for start, _ in calls if out["startedAt"] <= start <= out["endedAt"])
        out["handlerCallsAfter"] = sum(1 for start, _ in calls if start > out["endedAt"])
        out["handlerOwnMs"] = statistics.median((e - s) / 1e6 for s, e in calls) if calls else None
        return out

    EXPIRY_TTL = 2
    EXPIRY_STALE_TTL = 5

    def expiry(self):
        """Get latency across expiry boundaries for one hot entry: a daemon of its own with two handler keys,
        `ExpiryOff` (ttl 2, stale_ttl 0) and `ExpirySwr` (ttl 2, stale_ttl 5), same handler; rounds alternate them
        (--repeat each), each on a new identity, an open-loop load of --expiry-rate gets/s for --expiry-seconds."""
        name = "cached-expiry"
        counts = {"off": os.path.join(self.tmp, "expiry-off-calls"), "on": os.path.join(self.tmp, "expiry-on-calls")}
        keys = {"off": "ExpiryOff", "on": "ExpirySwr"}
        stale = {"off": 0, "on": self.EXPIRY_STALE_TTL}
        lines = []
        for mode in ("off", "on"):
            lines += self.handler_key(keys[mode], "cold", 2, counts[mode], [
                "ttl = %d" % self.EXPIRY_TTL, "stale_ttl = %d" % stale[mode]], stamp=True)
        config = os.path.join(self.tmp, name + ".toml")
        self.write_config(config, self.cached_redis_url(), keys=lines)
        p, sock = self.start_cached(name, config)
        rounds = {"off": [], "on": []}
        try:
            base = int(time.time() * 1000)
            for n, mode in enumerate(("off", "on")):  # workers started and warm
                probe = self.rpc(sock, "get", {"key": keys[mode], "identity": base - 1 - n}, timeout=15)
                if "error" in probe or (probe.get("result") or {}).get("value") is None:
                    return {"ran": False, "reason": "get %s failed: %s | log: %s" % (
                        keys[mode], json.dumps(probe)[:300], self.tail(name)[-300:])}
            for i in range(self.a.repeat):
                for n, mode in enumerate(("off", "on")):
                    r = self.expiry_round(sock, keys[mode], base + 2 * i + n, counts[mode], stale[mode])
                    rounds[mode].append(r)
                    log("  expiry stale_ttl=%d round %d: %d gets, %d answered, %d errors, waited %d, stale %d, slow %d, "
                        "p50 %.2f p99 %.2f p99.9 %.2f max %.1f ms, stale p99 %s, handler calls %d (+%d after), fills seen %d, "
                        "bursts %s, overdue fresh %d (max %s ms) stale %d, client lag max %.1f ms, counters %s" % (
                            stale[mode], i + 1, r["gets"], r["answered"], r["errors"], r["waited"], r["stale"], r["slow"],
                            r["p50Ms"] or -1, r["p99Ms"] or -1, r["p999Ms"] or -1, r["maxMs"] or -1, r["staleP99Ms"],
                            r["handlerCalls"], r["handlerCallsAfter"], r["fillsSeen"],
                            [(b["atMs"], b["gets"], b["maxMs"]) for b in r["bursts"]], r["overdueFresh"],
                            r["overdueFreshMaxMs"], r["overdueStale"], r["clientLagMaxMs"] or -1, r["fleet"]))
                    if r["overdueExamples"]:
                        log("    not marked stale, value older than ttl: %s" % r["overdueExamples"])
        finally:
            self.stop(p)
        out = {"ran": True, "ttl": self.EXPIRY_TTL, "staleTtl": self.EXPIRY_STALE_TTL, "rate": self.a.expiry_rate,
               "seconds": self.a.expiry_seconds, "rounds": self.a.repeat, "handlerMs": float(self.a.handler_seconds) * 1000}
        for mode, rs in rounds.items():
            lat = sorted(x for r in rs for x in r["latenciesMs"])
            m = {"gets": sum(r["gets"] for r in rs), "answered": sum(r["answered"] for r in rs),
                 "p50Ms": self.percentile(lat, 50), "p99Ms": self.percentile(lat, 99), "p999Ms": self.percentile(lat, 99.9),
                 "maxMs": lat[-1] if lat else None}
            for k in ("errors", "waited", "stale", "uncached", "slow", "handlerCalls", "handlerCallsAfter",
                      "overdueFresh", "overdueStale"):
                m[k] = sum(r[k] for r in rs)
                m[k + "PerRound"] = [r[k] for r in rs]
            m["firstError"] = next((r["firstError"] for r in rs if r["firstError"]), None)
            for k in ("overdueFreshMaxMs", "overdueStaleMaxMs", "staleMaxMs", "clientLagMaxMs"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                m[k] = max(vals) if vals else None
            vals = [r["staleP99Ms"] for r in rs if r.get("staleP99Ms") is not None]
            m["staleP99Ms"] = statistics.median(vals) if vals else None
            m["boundaries"] = sum(len(r["bursts"]) for r in rs)
            m["fillsSeen"] = sum(r["fillsSeen"] for r in rs)
            m["bursts"] = [[(b["atMs"], b["gets"], b["maxMs"]) for b in r["bursts"]] for r in rs]
            own = [r["handlerOwnMs"] for r in rs if r.get("handlerOwnMs")]
            m["handlerOwnMs"] = statistics.median(own) if own else None
            m["counters"] = {}
            for r in rs:
                for k, v in r["fleet"].items():
                    m["counters"][k] = m["counters"].get(k, 0) + v
            out[mode] = m
        return out

    @staticmethod
    def percentile(sorted_values, p):
        """The same nearest-rank percentile as cold_gets.py and expiry_load.py."""
        if not sorted_values:
            return None
        k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
        return sorted_values[k]

    def idle_connections(self, sock, pid):
        ready = os.path.join(self.tmp, "idle.ready")
        stop = os.path.join(self.tmp, "idle.stop")
        p = self.spawn([sys.executable, os.path.join(HERE, "idle_conns.py"), "--socket", sock, "--connections",
                        str(self.a.idle_connections), "--ready-file", ready, "--stop-file", stop, "--hold", "120"], "idle")
        deadline = time.monotonic() + 100
        while not os.path.exists(ready) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        if not os.path.exists(ready):
            self.stop(p)
            return {"error": "idle client did not get ready: " + self.tail("idle")}
        with open(ready) as f:
            report = json.load(f)
        time.sleep(1.0)
        report["rssKB"] = self.rss_kb(pid)
        try:
            stats = self.rpc(sock, "stats")
            report["daemonConnections"] = stats.get("result", {}).get("connections")
        except OSError as e:
            report["statsError"] = repr(e)
        open(stop, "w").close()
        p.wait(timeout=30)
        time.sleep(1.0)
        report["rssAfterCloseKB"] = self.rss_kb(pid)
        return report

    def callgrind(self):
        """Instructions per get-hit: cached under callgrind, counters zeroed after warm-up."""
        if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
            return {"error": "valgrind not installed"}
        config = os.path.join(self.tmp, "cg.toml")
        # Under valgrind the daemon runs ~50x slower: a loaded machine can push a reply past the default 1 s
        # command timeout (a -32002 in the warm-up); a longer one changes no instruction on the hit path.
        self.write_config(config, self.cached_redis_url(), with_handlers=False,
                          keys=["[redis_options]", "command_timeout = 10", ""] + (self.access_rules(self.a.access_rules) or []))
        out_base = os.path.join(self.tmp, "callgrind.out")
        # Valgrind 3.19 cannot read the DWARF 5 debug info of Swift 6 binaries: profile a copy without it
        # (symbols stay, so functions are still named).
        stripped = os.path.join(self.tmp, "cached-nodebug")
        shutil.copy(self.a.cached, stripped)
        subprocess.run(["objcopy", "--strip-debug", stripped], check=False)
        saved, self.a.cached = self.a.cached, stripped
        try:
            # Swift's concurrency runtime crashes valgrind 3.19 (rt_sigsuspend with a read-only mask) unless
            # scripts/bench/sigsuspend_shim.c is preloaded.
            preload = ["env", "LD_PRELOAD=" + self.a.valgrind_preload] if self.a.valgrind_preload else []
            p, sock = self.start_cached("cg", config, prefix=preload + [
                "valgrind", "--tool=callgrind", "--dump-instr=no", "--callgrind-out-file=" + out_base + ".%p"], ready_timeout=180)
        except RuntimeError as e:
            crash = re.search(r"(VALGRIND INTERNAL ERROR[^\n]*|the 'impossible' happened[^\n]*|Possibly corrupted debuginfo[^\n]*)", str(e))
            return {"error": "valgrind cannot run cached here: %s" % (crash.group(1) if crash else str(e)[-300:])}
        finally:
            self.a.cached = saved
        try:
            n = self.a.callgrind_requests
            self.cached_bench(sock, "--mix", "get-hit", "-c", 10, "-n", 0, "--warmup", timeout=300)
            # Read every entry once, so the measured gets are hits in the daemon's memory like in the
            # throughput runs (a first read of each entry goes to Redis and fills the local cache).
            self.cached_bench(sock, "--mix", "get-hit", "-c", 10, "-n", 5 * self.a.keyspace, timeout=900)
            loaded = {}
            idle_seconds, load_seconds = self.callgrind_phases(p.pid, lambda: loaded.update(
                self.cached_bench(sock, "--mix", "get-hit", "-c", 10, "-n", n, timeout=600)))
            c = loaded
        finally:
            self.stop(p, timeout=120)
        idle_ir, load_ir, load_file, net = self.callgrind_totals("callgrind.out.%d" % p.pid, idle_seconds, load_seconds)
        if load_ir is None:
            return {"error": "no callgrind dump of cached found"}
        res = {"requests": n, "completed": c["completed"], "errors": c["errors"], "loadIr": load_ir, "idleIr": idle_ir,
               "idleSeconds": round(idle_seconds, 2), "loadSeconds": round(load_seconds, 2),
               "irPerGet": round(net / max(1, c["completed"])), "irPerGetGross": round(load_ir / max(1, c["completed"]))}
        # Keep the profile and its annotation for humans.
        shutil.copy(load_file, os.path.join(self.artefacts, "callgrind.get-hit.out"))
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", load_file], capture_output=True, text=True)
        with open(os.path.join(self.artefacts, "callgrind.get-hit.txt"), "w") as f:
            f.write(ann.stdout)
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", load_file], capture_output=True, text=True)
        with open(os.path.join(self.artefacts, "callgrind.get-hit.inclusive.txt"), "w") as f:
            f.write(ann.stdout)
        return res

    def callgrind_redis(self):
        """Instructions per GET in redis-server under callgrind, the same way: warm-up, idle baseline, load."""
        port = self.free_port()
        out_base = os.path.join(self.tmp, "callgrind-redis.out")
        p = self.spawn(["valgrind", "--tool=callgrind", "--dump-instr=no", "--callgrind-out-file=" + out_base + ".%p",
                        self.a.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", self.tmp], "redis-callgrind")
        try:
            for _ in range(600):
                r = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True)
                if r.stdout.strip() == "PONG":
                    break
                time.sleep(0.1)
            else:
                return {"error": "redis-server under valgrind did not answer"}
            n = self.a.callgrind_requests
            bench = ["redis-benchmark", "-p", str(port), "-c", "10", "-P", "1", "-d", str(self.a.value_size),
                     "-r", str(self.a.keyspace), "-q"]
            self.run(bench + ["-t", "set", "-n", str(self.a.keyspace * 2)], timeout=600)
            self.run(bench + ["-t", "get", "-n", "2000"], timeout=600)
            idle_seconds, load_seconds = self.callgrind_phases(
                p.pid, lambda: self.run(bench + ["-t", "get", "-n", str(n)], timeout=600))
        finally:
            self.stop(p, timeout=120)
        _, load_ir, _, net = self.callgrind_totals("callgrind-redis.out.%d" % p.pid, idle_seconds, load_seconds)
        if load_ir is None:
            return {"error": "no callgrind dump of redis-server found"}
        return {"requests": n, "irPerGet": round(net / n), "irPerGetGross": round(load_ir / n)}

    def callgrind_phases(self, pid, load):
        """Zeroes the counters, dumps 2 s of idle ("idle"), zeroes again, runs `load`, dumps it ("load").
        Returns the seconds each phase took (the idle rate is subtracted from the load)."""
        self.run(["callgrind_control", "-z", str(pid)], timeout=60)
        t0 = time.monotonic()
        time.sleep(2.0)
        self.run(["callgrind_control", "-d", "idle", str(pid)], timeout=60)
        idle_seconds = time.monotonic() - t0
        self.run(["callgrind_control", "-z", str(pid)], timeout=60)
        t0 = time.monotonic()
        load()
        self.run(["callgrind_control", "-d", "load", str(pid)], timeout=60)
        return idle_seconds, time.monotonic() - t0

    def callgrind_totals(self, prefix, idle_seconds, load_seconds):
        """From the dumps `prefix`* named by their trigger: (idle total, load total, load dump path, load total
        less the idle rate over the load's duration)."""
        dumps = sorted(f for f in os.listdir(self.tmp) if f.startswith(prefix))
        def total_ir(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        return int(line.split()[1])
            return None

        idle_ir = load_ir = load_path = None
        for d in dumps:
            path = os.path.join(self.tmp, d)
            with open(path) as f:
                head = f.read(4000)
            if idle_ir is None and re.search(r"^desc: Trigger: .*idle", head, re.M):
                idle_ir = total_ir(path)
            elif re.search(r"^desc: Trigger: .*load", head, re.M):
                load_ir, load_path = total_ir(path), path
        net = None if load_ir is None else load_ir - (idle_ir or 0) / idle_seconds * load_seconds
        return idle_ir, load_ir, load_path, net

    def perf_profile(self, sock, pid):
        """cpu-clock samples of cached under get-hit load (perf has no hardware counters on most VMs)."""
        if not shutil.which("perf"):
            return {"error": "perf not installed"}
        data = os.path.join(self.tmp, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-p", str(pid), "-o", data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        c = self.cached_bench(sock, "--mix", "get-hit", "-c", self.a.connections, "-n", self.a.requests)
        rec.send_signal(signal.SIGINT)
        try:
            rec.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rec.kill()
        if not os.path.exists(data):
            return {"error": "perf record wrote nothing"}
        demangle = ["swift", "demangle", "--simplified"]
        out = {}
        for name, extra in (("self", ["--no-children"]), ("inclusive", ["--children"])):
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym", "-g", "none"] + extra,
                                 capture_output=True, text=True, timeout=300)
            text = subprocess.run(demangle, input=rep.stdout, capture_output=True, text=True).stdout or rep.stdout
            path = os.path.join(self.artefacts, "perf.get-hit.%s.txt" % name)
            with open(path, "w") as f:
                f.write(text)
            out[name] = path
        shutil.copy(data, os.path.join(self.artefacts, "perf.get-hit.data"))
        out["requestsPerSecond"] = c["requestsPerSecond"]
        return out

    # ---------------------------------------------------------------- main

    def wanted(self, section):
        """A section runs unless --skip-SECTION says no or --only leaves it out."""
        if self.a.only is not None and section not in self.a.only:
            return False
        return not getattr(self.a, "skip_" + section, False)

    def main(self):
        a = self.a
        self.cold_count_file = os.path.join(self.tmp, "cold-calls")
        log("temp dir %s" % self.tmp)
        self.start_redis()
        self.populate_redis_benchmark_keys()
        config = os.path.join(self.tmp, "cached.toml")
        self.metrics_port = self.free_port()
        self.write_config(config, self.cached_redis_url(), metrics_port=self.metrics_port)
        cached, sock = self.start_cached("cached", config)
        self.cached = cached
        time.sleep(0.5)
        self.results["rssIdleKB"] = self.rss_kb(cached.pid)
        log("cached pid %d, idle RSS %s kB" % (cached.pid, self.results["rssIdleKB"]))

        warm = self.cached_bench(sock, "--mix", "get-hit", "-c", a.connections, "-n", 0, "--warmup")
        log("warm-up: %s s" % warm.get("warmupSeconds"))
        if self.wanted("throughput"):
            log("get-hit, %d connections, no pipelining" % a.connections)
            self.results["p1"] = self.throughput(sock, 1, a.requests)
            log("get-hit, %d connections, pipeline 16" % a.connections)
            self.results["p16"] = self.throughput(sock, 16, a.pipelined_requests)
        if self.wanted("scrape"):
            log("get-hit, %d connections, no pipelining, with and without GET /metrics once a second" % a.connections)
            self.results["scrape"] = self.scrape_overhead(sock, a.requests)
        if self.wanted("tls"):
            log("get-hit over TLS (rediss://), %d connections, no pipelining" % a.connections)
            try:
                self.results["tls"] = self.tls(sock)
            except Exception as e:  # report, do not abort the other figures
                self.results["tls"] = {"ran": False, "skipped": False, "reason": "error: %s" % str(e)[:500]}
            if not self.results["tls"].get("ran"):
                log("  TLS row %s: %s" % ("skipped" if self.results["tls"].get("skipped") else "failed", self.results["tls"]["reason"]))
        if self.wanted("cluster"):
            log("get-hit on a Redis Cluster of %d masters (redis-cluster://), %d connections, no pipelining" % (
                self.CLUSTER_NODES, a.connections))
            try:
                self.results["cluster"] = self.cluster(sock)
            except Exception as e:  # report, do not abort the other figures
                self.results["cluster"] = {"ran": False, "skipped": False, "reason": "error: %s" % str(e)[:500]}
            if not self.results["cluster"].get("ran"):
                log("  cluster row %s: %s" % ("skipped" if self.results["cluster"].get("skipped") else "failed",
                                              self.results["cluster"]["reason"]))
        if self.wanted("python"):
            log("python per-call")
            self.results["python"] = self.python_calls(sock)
        if self.wanted("clients"):
            log("clients: get hit per call, %d calls x %d rounds per variant, Node / Go / PHP / Python shim vs each one's bare "
                "Unix-socket round trip" % (a.clients_calls, a.clients_rounds))
            self.timed_section("clients", self.clients)
        if self.wanted("cold"):
            log("1000 concurrent cold gets")
            try:
                self.results["cold"] = self.cold(sock)
            except Exception as e:  # report, do not abort the other figures
                self.results["cold"] = {"ran": False, "reason": "error: %s" % e}
            log("  cold: %s" % self.results["cold"])
        if self.wanted("fleet"):
            log("cold stampede across %d daemons sharing one redis-server, %d gets to each, %d rounds per setting" % (
                self.FLEET_DAEMONS, a.fleet_gets, a.fleet_rounds))
            self.timed_section("fleet", self.fleet)
        if self.wanted("expiry"):
            log("one hot entry across expiry boundaries (ttl %d s), stale_ttl 0 and %d, %g gets/s for %g s, %d rounds each" % (
                self.EXPIRY_TTL, self.EXPIRY_STALE_TTL, a.expiry_rate, a.expiry_seconds, a.repeat))
            t0 = time.monotonic()
            try:
                self.results["expiry"] = self.expiry()
            except Exception as e:  # report, do not abort the other figures
                self.results["expiry"] = {"ran": False, "reason": "error: %s" % str(e)[:500]}
            if not self.results["expiry"].get("ran"):
                log("  expiry: did not run: %s" % self.results["expiry"]["reason"])
            log("  expiry: %.0f s" % (time.monotonic() - t0))
        self.results["rssAfterLoadKB"] = self.rss_kb(cached.pid)
        if self.wanted("perf"):
            log("perf profile of get-hit")
            try:
                self.results["perf"] = self.perf_profile(sock, cached.pid)
            except Exception as e:
                self.results["perf"] = {"error": str(e)[:300]}
        if self.wanted("idle"):
            log("%d idle connections" % a.idle_connections)
            self.results["idle"] = self.idle_connections(sock, cached.pid)
            log("  idle: %s" % self.results["idle"])
        self.stop(cached)
        if self.wanted("callgrind"):
            log("callgrind: %d get-hits at -c 10" % a.callgrind_requests)
            try:
                self.results["callgrind"] = self.callgrind()
            except Exception as e:
                self.results["callgrind"] = {"error": str(e)[:500]}
            log("  callgrind: %s" % self.results["callgrind"])
            if "irPerGet" in self.results["callgrind"]:
                log("callgrind: redis-server, %d GETs at -c 10" % a.callgrind_requests)
                try:
                    self.results["callgrindRedis"] = self.callgrind_redis()
                except Exception as e:
                    self.results["callgrindRedis"] = {"error": str(e)[:500]}
                log("  callgrind redis: %s" % self.results["callgrindRedis"])
        with open(os.path.join(self.artefacts, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)
        table = self.render()
        print(table)
        if a.output:
            write_report(a.output, table)
            log("wrote %s" % a.output)

    # ---------------------------------------------------------------- report

    def machine(self):
        cpu = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass

        def cmd(argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
            except Exception:
                return "?"

        swift = cmd(["swift", "--version"]).splitlines()
        swift = swift[0] if swift else "?"
        redis = cmd([self.a.redis_server, "--version"])
        m = re.search(r"v=(\S+)", redis)
        rev = cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        dirty = cmd(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
        return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "swift": swift,
                "redis": m.group(1) if m else redis, "rev": rev + ("+dirty" if dirty else ""),
                "python": platform.python_version(),
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

    CLIENT_LABELS = (("node", "Node.js (`clients/node`, `CachedClient`)"), ("go", "Go (`clients/go`, `cached.Client`)"),
                     ("php", "PHP (`clients/php`, `Cached\\Client`)"), ("python", "Python shim (`clients/python`, `CacheClient`)"))

    def render_clients(self, cl):
        """The clients section: its own table (language | floor | plain | plain/floor | near | near/floor) and how it is made."""
        def us(x):
            return "-" if x is None else ("%.2f" % x if x < 10 else "%.1f" % x)

        def ratio(x, y):
            return "-" if x is None or not y else "%.2fx" % (x / y)

        out = ["Client libraries: a get hit, us per call (median round; best round in parentheses), beside the same language's "
               "bare Unix-socket round trip (the floor):", ""]
        if not cl.get("ran"):
            self.notes.append("Clients section did not run: %s" % cl.get("reason"))
            return out + ["(did not run: see Notes)", ""]
        out += ["| language | floor us | plain us | plain/floor | near us | near/floor |", "|---|---|---|---|---|---|"]
        langs = cl.get("languages") or {}
        for name, label in self.CLIENT_LABELS:
            res = langs.get(name)
            if res is None:
                continue
            if res.get("skipped"):
                out.append("| %s | skipped: %s | - | - | - | - |" % (label, res["skipped"]))
                self.notes.append("clients, %s: skipped (%s)" % (name, res["skipped"]))
                continue
            if res.get("error"):
                out.append("| %s | could not run | - | - | - | - |" % label)
                self.notes.append("clients, %s: %s" % (name, res["error"].replace("\n", " ")[:500]))
                continue
            fl, pl, nr = res.get("floor") or {}, res.get("plain") or {}, res.get("near")
            f, pv = fl.get("usPerCall"), pl.get("usPerCall")
            if nr:
                nv = nr.get("usPerCall")
                near_cell, near_ratio = "%s (%s)" % (us(nv), us(nr.get("usPerCallBest"))), ratio(nv, f)
                if nr.get("calls") and nr.get("hits") != nr.get("calls"):
                    self.notes.append("clients, %s near: %s of %s measured gets were near hits" % (name, nr.get("hits"), nr.get("calls")))
            else:
                near_cell, near_ratio = "none: %s" % res.get("nearNote", "no near cache"), "-"
            runtime = res.get("runtime")
            out.append("| %s%s | %s (%s) | %s (%s) | %s | %s | %s |" % (
                label, " %s" % runtime if runtime else "", us(f), us(fl.get("usPerCallBest")), us(pv), us(pl.get("usPerCallBest")),
                ratio(pv, f), near_cell, near_ratio))
            if name == "python" and res.get("shim", "installed") != "installed":
                self.notes.append("clients, python: the shim came from %s" % res["shim"])
        out += ["",
                "How: one daemon of its own (no handlers, no `[[access]]` rules) on the bench's redis-server; %d entries `%s`/0..%d "
                "(small JSON values, no expiry) stored with `set`; then one process per language (`scripts/bench/node_client.js`, "
                "`clients/go/cmd/cached-bench-client` via `go run` with `GOFLAGS=-mod=mod GOPROXY=off`, `scripts/bench/php_client.php`, "
                "the shim's venv running the script in `run.py`) checks every entry once (a hit, the same bytes through the floor and "
                "the client), reads each through the near-cache client until all are kept, warms each variant up for 2,000 calls, then "
                "runs %d rounds, each running every variant for %s sequential gets of `identity = i %% %d` (floor, plain, near, floor, "
                "...): us per call is the round's time / calls, the median round reported. floor: that language writing one "
                "`{\"jsonrpc\":\"2.0\",\"id\":i,\"method\":\"get\",\"params\":{\"key\":\"%s\",\"identity\":i %% %d}}` line on a "
                "raw Unix socket and reading the answer line (Node `net.createConnection`, Go `net.Dial` + `bufio.Reader`, PHP "
                "`stream_socket_client` + `fwrite`/`fgets`, Python `socket` `sendall`/`recv`); nothing parsed. plain: the client's "
                "`get` (Node, Go, PHP: `get` with `\"lease\": false`; the shim: its read-through `CacheClient.get`, here always a hit; "
                "each sends its `timeout` and decodes the answer). near: the same client with its near cache (`nearCache: %d`, "
                "`WithNearCache(%d)`, `near_cache=%d`); the measured gets are near hits (counted). The PHP client has no near cache. "
                "Ratios within one language are from the same interleaved rounds; across languages the floors differ." % (
                    cl["entries"], cl["key"], cl["entries"] - 1, cl["rounds"], "{:,}".format(cl["callsPerRound"]), cl["entries"],
                    cl["key"], cl["entries"], cl["entries"], cl["entries"], cl["entries"]), ""]
        return out

    def render(self):
        a, r = self.a, self.results
        m = self.machine()
        rows = []

        def verdict(ok):
            return "n/a" if ok is None else ("PASS" if ok else "**FAIL**")

        def f0(x):
            return "-" if x is None else "{:,.0f}".format(x)

        def f1(x):
            return "-" if x is None else "{:,.1f}".format(x)

        def ratio(x, y):
            return None if (x is None or y in (None, 0)) else x / y

        def fr(x):
            return "-" if x is None else "%.2fx" % x

        # Issue 16's targets: unpipelined at least 1.2x redis-benchmark with p99 at most 1.5x Redis's;
        # -P 16 at least 0.6x.
        for key, label, target in (("p1", "get-hit, -c %d, no pipelining" % a.connections, 1.2),
                                   ("p16", "get-hit, -c %d, -P 16" % a.connections, 0.6)):
            t = r.get(key)
            if not t:
                continue
            c, rt, ru = t["cached"], t["redis_tcp"], t["redis_unix"]
            rr = ratio(c["rps"], rt["rps"])
            rows.append(("%s: requests/s" % label, f0(rt["rps"]) + " (unix %s)" % f0(ru["rps"]), f0(c["rps"]), fr(rr),
                         ">= %.1fx" % target, verdict(rr is not None and rr >= target and c["errors"] == 0 and c["misses"] == 0)))
            pr = ratio(c["p99Micros"], rt["p99Micros"])
            rows.append(("%s: p50 / p99 / p99.9 / max (us)" % label,
                         "%s / %s / - / %s (unix p99 %s)" % (f0(rt["p50Micros"]), f0(rt["p99Micros"]), f0(rt["maxMicros"]), f0(ru["p99Micros"])),
                         "%s / %s / %s / %s" % (f0(c["p50Micros"]), f0(c["p99Micros"]), f0(c["p999Micros"]), f0(c["maxMicros"])),
                         "p99 " + fr(pr), "p99 <= 1.5x" if key == "p1" else "info",
                         verdict(pr is not None and pr <= 1.5) if key == "p1" else "-"))
            cpu = t.get("cpuMicrosPerGet")
            if cpu:
                rows.append(("%s: CPU per get (us, from /proc/PID/stat)" % label, "redis-server %.1f" % cpu["redis_alone"],
                             "cached %.1f + redis-server %.1f" % (cpu["cached"], cpu["redis_behind_cached"]),
                             fr(ratio(cpu["cached"] + cpu["redis_behind_cached"], cpu["redis_alone"])), "info", "-"))
            if c["errors"] or c["misses"] or c["failures"]:
                self.notes.append("%s: cached-bench saw %d errors, %d misses, failures %s" % (label, c["errors"], c["misses"], c["failures"]))
        t = r.get("scrape")
        if t:
            rr = ratio(t["scraped"]["rps"], t["plain"]["rps"])
            rows.append(("get-hit, -c %d, no pipelining: requests/s with `GET /metrics` once a second (%d scrapes, median %.1f ms, %s bytes) / without"
                         % (a.connections, t["scrapes"], t["scrapeMillis"] or 0, f0(t["scrapeBytes"])),
                         "-", "%s / %s" % (f0(t["scraped"]["rps"]), f0(t["plain"]["rps"])), fr(rr), ">= 0.98x",
                         verdict(rr is not None and rr >= 0.98)))
        t = r.get("tls")
        label = "get-hit over TLS (rediss://), -c %d, no pipelining" % a.connections
        plain = "TCP" if a.cached_redis == "tcp" else "unix"
        if t and t.get("ran"):
            c, rt, cp, rp = t["cached_tls"], t["redis_tls"], t["cached"], t["redis_tcp"]
            rows.append(("%s: requests/s" % label, f0(rt["rps"]), f0(c["rps"]), fr(ratio(c["rps"], rt["rps"])), "info", "-"))
            rows.append(("%s: p50 / p99 / p99.9 / max (us)" % label,
                         "%s / %s / - / %s" % (f0(rt["p50Micros"]), f0(rt["p99Micros"]), f0(rt["maxMicros"])),
                         "%s / %s / %s / %s" % (f0(c["p50Micros"]), f0(c["p99Micros"]), f0(c["p999Micros"]), f0(c["maxMicros"])),
                         "p99 " + fr(ratio(c["p99Micros"], rt["p99Micros"])), "info", "-"))
            cpu = t.get("cpuMicrosPerGet")
            if cpu:
                rows.append(("%s: CPU per get (us, from /proc/PID/stat)" % label, "redis-server %.1f" % cpu["redis_alone"],
                             "cached %.1f + redis-server %.1f" % (cpu["cached"], cpu["redis_behind_cached"]),
                             fr(ratio(cpu["cached"] + cpu["redis_behind_cached"], cpu["redis_alone"])), "info", "-"))
            rows.append(("get-hit, -c %d, no pipelining: Redis over TLS vs plain %s, requests/s (same rounds)" % (a.connections, plain),
                         "TLS %s / TCP %s (TLS/plain %s)" % (f0(rt["rps"]), f0(rp["rps"]), fr(ratio(rt["rps"], rp["rps"]))),
                         "TLS %s / %s %s" % (f0(c["rps"]), plain, f0(cp["rps"])), "TLS/plain " + fr(ratio(c["rps"], cp["rps"])),
                         "info", "-"))
            for name, x in (("over TLS", c), ("over plain %s" % plain, cp)):
                if x["errors"] or x["misses"] or x["failures"]:
                    self.notes.append("%s: cached-bench %s saw %d errors, %d misses, failures %s" % (
                        label, name, x["errors"], x["misses"], x["failures"]))
        elif t:
            rows.append(("%s: requests/s" % label, "-", "skipped" if t.get("skipped") else "could not run", "-", "info", "n/a"))
            self.notes.append("TLS row %s: %s" % ("skipped" if t.get("skipped") else "did not run", t.get("reason")))
        t = r.get("cluster")
        label = "get-hit on a Redis Cluster (redis-cluster://, %d masters), -c %d, no pipelining" % (
            (t or {}).get("masters", self.CLUSTER_NODES), a.connections)
        if t and t.get("ran"):
            c, rc, cp, rp = t["cached_cluster"], t["redis_cluster"], t["cached"], t["redis_tcp"]
            rows.append(("%s: requests/s" % label, f0(rc["rps"]), f0(c["rps"]), fr(ratio(c["rps"], rc["rps"])), "info", "-"))
            rows.append(("%s: p50 / p99 / p99.9 / max (us)" % label,
                         "%s / %s / - / %s" % (f0(rc["p50Micros"]), f0(rc["p99Micros"]), f0(rc["maxMicros"])),
                         "%s / %s / %s / %s" % (f0(c["p50Micros"]), f0(c["p99Micros"]), f0(c["p999Micros"]), f0(c["maxMicros"])),
                         "p99 " + fr(ratio(c["p99Micros"], rc["p99Micros"])), "info", "-"))
            cpu = t.get("cpuMicrosPerGet")
            if cpu:
                rows.append(("%s: CPU per get (us, from /proc/PID/stat; all masters summed)" % label,
                             "redis-servers %.1f" % cpu["redis_alone"],
                             "cached %.1f + redis-servers %.1f" % (cpu["cached"], cpu["redis_behind_cached"]),
                             fr(ratio(cpu["cached"] + cpu["redis_behind_cached"], cpu["redis_alone"])), "info", "-"))
            rows.append(("get-hit, -c %d, no pipelining: Redis Cluster vs a single redis-server over %s, requests/s (same rounds)" % (
                             a.connections, plain),
                         "cluster %s / TCP %s (cluster/single %s)" % (f0(rc["rps"]), f0(rp["rps"]), fr(ratio(rc["rps"], rp["rps"]))),
                         "cluster %s / %s %s" % (f0(c["rps"]), plain, f0(cp["rps"])), "cluster/single " + fr(ratio(c["rps"], cp["rps"])),
                         "info", "-"))
            for name, x in (("on the cluster", c), ("on the single redis-server", cp)):
                if x["errors"] or x["misses"] or x["failures"]:
                    self.notes.append("%s: cached-bench %s saw %d errors, %d misses, failures %s" % (
                        label, name, x["errors"], x["misses"], x["failures"]))
            ks = t.get("redisBenchmarkKeyspace") or {}
            if ks.get("misses"):
                self.notes.append("%s: redis-benchmark --cluster missed %d of %d GETs (the masters' keyspace_misses)" % (
                    label, ks["misses"], ks["misses"] + ks.get("hits", 0)))
        elif t:
            rows.append(("%s: requests/s" % label, "-", "skipped" if t.get("skipped") else "could not run", "-", "info", "n/a"))
            self.notes.append("Cluster row %s: %s" % ("skipped" if t.get("skipped") else "did not run", t.get("reason")))
        py = r.get("python")
        if py:
            s, rp, pc = py.get("shim", {}).get("usPerCall"), py.get("redispy", {}).get("usPerCall"), py.get("pyredis", {}).get("usPerCall")
            ru = py.get("redispy_unix", {}).get("usPerCall")
            x = ratio(s, rp)
            best = {k: v.get("usPerCallBest") for k, v in py.items()}
            rows.append(("Python get hit, us per call, median round (best): shim vs redis-py `json.loads(r.get(k))`",
                         "%s (%s; unix %s)" % (f1(rp), f1(best.get("redispy")), f1(ru)), "%s (%s)" % (f1(s), f1(best.get("shim"))),
                         fr(x), "<= 1.2x", verdict(None if x is None else x <= 1.2)))
            y = ratio(pc, s)
            rows.append(("Python get hit, us per call, median round (best): pyredis-cache 0.1.3 vs shim",
                         "%s (%s)" % (f1(pc), f1(best.get("pyredis"))), "%s (%s)" % (f1(s), f1(best.get("shim"))),
                         "shim " + ("%.2fx faster" % y if y is not None else "-"), ">= 3x faster", verdict(None if y is None else y >= 3.0)))
            near, csc = py.get("shim_near", {}).get("usPerCall"), py.get("redispy_csc", {}).get("usPerCall")
            if near is not None or csc is not None:
                rows.append(("Python get hit from the process, us per call, median round (best): shim near_cache vs redis-py client-side caching",
                             "%s (%s)" % (f1(csc), f1(best.get("redispy_csc"))), "%s (%s)" % (f1(near), f1(best.get("shim_near"))),
                             fr(ratio(near, csc)), "<= 10 us and <= 1.0x", verdict(None if near is None or csc is None else near <= 10 and near <= csc)))
                rows.append(("Python get hit, us per call, median round: shim / shim near_cache / redis-py / redis-py CSC / pyredis-cache 0.1.3",
                             "-", " / ".join(f1(py.get(k, {}).get("usPerCall")) for k in ("shim", "shim_near", "redispy", "redispy_csc", "pyredis")),
                             "-", "info", "-"))
            sc = py.get("swift_client", {})
            if "nearMicros" in sc:
                rows.append(("Swift client (CachedClient) get of one stored entry, us per call, median round: plain / nearCache (best)",
                             "-", "%s / %s (%s)" % (f1(sc.get("plainMicros")), f1(sc.get("nearMicros")), f1(sc.get("nearBestMicros"))),
                             fr(ratio(sc.get("nearMicros"), sc.get("plainMicros"))), "near <= 1 us",
                             verdict(sc.get("correct") is True and sc["nearMicros"] <= 1.0)))
            for k, v in py.items():
                if "error" in v:
                    self.notes.append("Python %s: %s" % (k, v["error"]))
        cold = r.get("cold")
        if cold:
            if cold.get("ran"):
                ok_calls = (all(c == 1 for c in cold["callsPerRun"]) and all(n == cold["requests"] for n in cold["answeredPerRun"])
                            and all(d == 1 for d in cold["distinctPerRun"]))
                rows.append(("1000 concurrent cold gets (50 processes x 20): handler calls", "-",
                             "%s calls, %s/%d answered, %s distinct values (%d runs)" % (
                                 "/".join(map(str, cold["callsPerRun"])), "/".join(map(str, cold["answeredPerRun"])),
                                 cold["requests"], "/".join(map(str, cold["distinctPerRun"])), cold["runs"]),
                             "-", "exactly 1", verdict(ok_calls)))
                fl = cold.get("floor") or {}
                own = cold.get("handlerOwnMs")
                ok_lat = cold.get("excessMs") is not None and cold["excessMs"] <= 5
                rows.append(("1000 cold gets: waiters' latency p50 / p99 / max (ms), median run; floor: a minimal C server (fanout_floor.c)",
                             "floor %s / %s / %s (+%s)" % (f1(fl.get("p50Ms")), f1(fl.get("p99Ms")), f1(fl.get("maxMs")), f1(fl.get("excessMs"))),
                             "%s / %s / %s" % (f1(cold["p50Ms"]), f1(cold["p99Ms"]), f1(cold["maxMs"])),
                             "max - handler's own %s ms = %s ms" % (f1(own), f1(cold.get("excessMs"))),
                             "<= handler + 5 ms", verdict(ok_lat)))
                rows.append(("1000 cold gets, where the time goes (ms): first send -> handler start / handler / handler end -> first answer / first -> last answer",
                             "floor %s / %s / %s / %s" % (f1(fl.get("dispatchMs")), f1(fl.get("handlerOwnMs")), f1(fl.get("returnMs")), f1(fl.get("fanOutMs"))),
                             "%s / %s / %s / %s" % (f1(cold.get("dispatchMs")), f1(own), f1(cold.get("returnMs")), f1(cold.get("fanOutMs"))),
                             "-", "info", "-"))
                if cold.get("errors"):
                    self.notes.append("cold gets: %d errors, first: %s" % (cold["errors"], cold.get("firstError")))
            else:
                rows.append(("1000 concurrent cold gets through a handler key", "-", "could not run", "-",
                             "1 call, <= handler + 5 ms", "n/a"))
                self.notes.append("Cold gets did not run: %s" % cold.get("reason"))
        fl = r.get("fleet")
        if fl:
            if fl.get("ran"):
                on, off = fl["on"], fl["off"]
                n, g = fl["daemons"], fl["getsPerDaemon"]
                total = n * g
                label = "cold stampede, %d daemons sharing one redis-server, %d concurrent gets to each (%d), %d rounds" % (
                    n, g, total, fl["rounds"])
                ok_on = (all(c == 1 for c in on["callsPerRound"]) and all(x == total for x in on["answeredPerRound"])
                         and all(d == 1 for d in on["distinctPerRound"]))
                ok_off = all(c == n for c in off["callsPerRound"]) and all(x == total for x in off["answeredPerRound"])
                cn = on["counters"]
                rows.append(("%s: handler calls per round, fleet_single_flight on / off" % label, "-",
                             "on %s (fleet locks won %s, lost %s, waits %s) / off %s" % (
                                 "/".join(map(str, on["callsPerRound"])), cn.get("locksWon", "-"), cn.get("locksLost", "-"),
                                 cn.get("waits", "-"), "/".join(map(str, off["callsPerRound"]))),
                             "answered on %s, off %s of %d" % ("/".join(map(str, on["answeredPerRound"])),
                                                               "/".join(map(str, off["answeredPerRound"])), total),
                             "on: exactly 1, all answered; off: %d" % n, verdict(ok_on and ok_off)))

                def over(x):
                    if x.get("maxOverHandler") is None:
                        return "-"
                    return "%.2fx (+%s ms)" % (x["maxOverHandler"], f1(x.get("excessMs")))
                rows.append(("fleet stampede: waiters' latency p50 / p99 / max (ms), median round, fleet_single_flight on / off", "-",
                             "on %s / %s / %s; off %s / %s / %s" % (f1(on.get("p50Ms")), f1(on.get("p99Ms")), f1(on.get("maxMs")),
                                                                     f1(off.get("p50Ms")), f1(off.get("p99Ms")), f1(off.get("maxMs"))),
                             "max / handler's own (%s ms): on %s, off %s" % (f1(on.get("handlerOwnMs")), over(on), over(off)),
                             "info", "-"))
                rows.append(("fleet stampede, fleet_single_flight on: slowest waiter at the lock holder's daemon / at the other %d (ms); "
                             "the others' first answers, how long after the holder's (ms, the later of the two); medians of rounds" % (n - 1), "-",
                             "%s / %s; +%s" % (f1(on.get("holderMaxMsMedian")), f1(on.get("othersMaxMsMedian")),
                                               f1(on.get("othersLagMsMedian"))),
                             "-", "info", "-"))
                for mode, x in (("on", on), ("off", off)):
                    if x.get("errors"):
                        self.notes.append("fleet stampede, fleet_single_flight %s: %d errors, first: %s" % (mode, x["errors"], x.get("firstError")))
                if not all(d == 1 for d in on["distinctPerRound"]):
                    self.notes.append("fleet stampede, fleet_single_flight on: distinct values per round %s (each value carries "
                                      "its fill's stamp, so more than 1 means clients got different fills)" % on["distinctPerRound"])
            else:
                rows.append(("cold stampede across %d daemons sharing one redis-server" % self.FLEET_DAEMONS, "-", "could not run",
                             "-", "exactly 1 call", "n/a"))
                self.notes.append("Fleet stampede did not run: %s" % fl.get("reason"))
        ex = r.get("expiry")
        if ex:
            if ex.get("ran"):
                off, on = ex["off"], ex["on"]
                label = "one hot entry across expiry boundaries (ttl %d s, handler %s ms, %s gets/s open loop, %d x %s s)" % (
                    ex["ttl"], f0(ex["handlerMs"]), f0(ex["rate"]), ex["rounds"], "{:g}".format(ex["seconds"]))
                def fms(x):
                    return "-" if x is None else ("%.2f" % x if x < 10 else f1(x))
                rows.append(("%s: get latency p50 / p99 / p99.9 / max (ms), stale_ttl 0 / %d" % (label, ex["staleTtl"]), "-",
                             "stale_ttl 0: %s / %s / %s / %s; stale_ttl %d: %s / %s / %s / %s" % (
                                 fms(off.get("p50Ms")), fms(off.get("p99Ms")), fms(off.get("p999Ms")), fms(off.get("maxMs")),
                                 ex["staleTtl"], fms(on.get("p50Ms")), fms(on.get("p99Ms")), fms(on.get("p999Ms")), fms(on.get("maxMs"))),
                             "stale_ttl 0 over %d: max %s, p99 %s" % (ex["staleTtl"], fr(ratio(off.get("maxMs"), on.get("maxMs"))),
                                                                      fr(ratio(off.get("p99Ms"), on.get("p99Ms")))),
                             "stale_ttl %d: no get waits for the handler" % ex["staleTtl"],
                             # stale_ttl 0 must have made readers wait, or the rounds crossed no boundary
                             verdict(on.get("maxMs") is not None and on["slow"] == 0 and on["errors"] == 0 and off["slow"] > 0)))
                per_ttl = -(-ex["seconds"] // ex["ttl"])  # boundaries a round can cross at most
                cn = on["counters"]
                rows.append(("expiry boundaries: gets that waited for a fill (answered hit: false) / stale answers / handler calls "
                             "per round during the load, stale_ttl 0 / %d" % ex["staleTtl"], "-",
                             "stale_ttl 0: %s waited of %s, %s calls; stale_ttl %d: %s waited, %s stale, %s calls (background refreshes %s)" % (
                                 f0(off["waited"]), f0(off["answered"]), "/".join(map(str, off["handlerCallsPerRound"])), ex["staleTtl"],
                                 f0(on["waited"]), f0(on["stale"]), "/".join(map(str, on["handlerCallsPerRound"])),
                                 cn.get("refreshes", "-")),
                             "slower than half the handler: %s / %s" % (f0(off["slow"]), f0(on["slow"])),
                             "stale_ttl %d: 0 waited, <= 1 call per TTL" % ex["staleTtl"],
                             verdict(on["waited"] == 0 and all(0 < c <= per_ttl for c in on["handlerCallsPerRound"]))))
                for mode, x in (("0", off), (str(ex["staleTtl"]), on)):
                    if x.get("errors"):
                        self.notes.append("expiry rows, stale_ttl %s: %d gets failed, first: %s" % (mode, x["errors"], x.get("firstError")))
                    if x.get("overdueFresh"):
                        self.notes.append("expiry rows, stale_ttl %s: %d answers not marked stale carried a value older than ttl "
                                          "(at their send; up to %s ms past, 20 ms allowed)" % (mode, x["overdueFresh"], f1(x.get("overdueFreshMaxMs"))))
                    if x.get("overdueStale"):
                        self.notes.append("expiry rows, stale_ttl %s: %d stale answers carried a value older than ttl + stale_ttl "
                                          "(up to %s ms past)" % (mode, x["overdueStale"], f1(x.get("overdueStaleMaxMs"))))
                    if x.get("uncached"):
                        self.notes.append("expiry rows, stale_ttl %s: %d answers marked cached: false" % (mode, x["uncached"]))
            else:
                rows.append(("one hot entry across expiry boundaries, stale_ttl 0 / 5", "-", "could not run", "-", "info", "n/a"))
                self.notes.append("Expiry rows did not run: %s" % ex.get("reason"))
        idle_kb = r.get("rssIdleKB")
        rows.append(("daemon RSS, idle (fresh start)", "-", f1(idle_kb / 1024) + " MB" if idle_kb else "-", "-", "<= 40 MB",
                     verdict(None if not idle_kb else idle_kb / 1024 <= 40)))
        idle = r.get("idle", {})
        if idle.get("rssKB"):
            ok = idle["rssKB"] / 1024 <= 150 and idle.get("answered") == a.idle_connections
            rows.append(("daemon RSS, %d idle connections" % a.idle_connections, "-",
                         "%s MB (%d/%d answered ping)" % (f1(idle["rssKB"] / 1024), idle.get("answered", 0), a.idle_connections),
                         "-", "<= 150 MB", verdict(ok)))
            rows.append(("daemon RSS after the load runs / after closing them", "-", "%s MB / %s MB" % (
                f1((r.get("rssAfterLoadKB") or 0) / 1024), f1((idle.get("rssAfterCloseKB") or 0) / 1024)), "-", "info", "-"))
        elif idle:
            self.notes.append("idle connections: %s" % idle)
        cg = r.get("callgrind")
        if cg:
            if "irPerGet" in cg:
                cr = r.get("callgrindRedis") or {}
                rows.append(("instructions per get-hit (callgrind, -c 10, unpipelined; net of an idle baseline, gross in parentheses)",
                             "redis-server %s (%s)" % (f0(cr.get("irPerGet")), f0(cr.get("irPerGetGross"))) if "irPerGet" in cr else "-",
                             "%s (%s)" % (f0(cg["irPerGet"]), f0(cg["irPerGetGross"])),
                             "%.2fx" % (cg["irPerGet"] / cr["irPerGet"]) if cr.get("irPerGet") else "-", "<= 12,000",
                             verdict(cg["irPerGet"] <= 12000)))
                if cr.get("error"):
                    self.notes.append("callgrind of redis-server: %s" % cr["error"])
            else:
                self.notes.append("callgrind: %s" % cg.get("error"))

        out = ["# Benchmarks", "",
               "Produced by `make bench` (`scripts/bench.sh`): a private `redis-server` (no persistence) and a release",
               "`cached` (store: Redis over %s), measured side by side on this machine. Ratios are cached / Redis unless noted;" % (
                   "loopback TCP" if a.cached_redis == "tcp" else "its Unix socket"),
               "throughput and latency figures are the median of %d interleaved runs." % a.repeat, "",
               "- machine: %d cores, %s, kernel %s" % (m["nproc"], m["cpu"], m["kernel"]),
               "- date: %s" % m["date"],
               "- versions: %s; redis-server %s; Python %s; cached %s" % (m["swift"], m["redis"], m["python"], m["rev"]),
               "- load: %d connections, %d requests unpipelined, %d pipelined, values of %d bytes, keyspace %d (pre-populated)" % (
                   a.connections, a.requests, a.pipelined_requests, a.value_size, a.keyspace), "",
               "| scenario | Redis direct | cached | ratio | target | verdict |", "|---|---|---|---|---|---|"]
        out += ["| %s |" % " | ".join(row) for row in rows]
        out += ["", "How each figure is made:", "",
                "- Redis direct: `redis-benchmark -t get -c %d -P P -n N -d %d -r %d` over loopback TCP (its Unix socket in parentheses); cached: `cached-bench --mix get-hit -c %d -P P -n N` over cached's Unix socket." % (
                    a.connections, a.value_size, a.keyspace, a.connections),
                "- Python: one process, %d calls in 5 rounds (median round), values are small JSON objects; redis-py and pyredis-cache over loopback TCP, each client in its own virtual environment." % a.python_calls,
                "- Cold gets: 50 forked processes x 20 connections send the same `get` of a never-used entry of a key whose handler sleeps %s s; latency from each request's own send, set against the handler's own duration (its start and end stamps, CLOCK_MONOTONIC); median of %d runs. The floor is `scripts/bench/fanout_floor.c`, a single-threaded epoll server that only reads the 1000 requests, waits the same time and writes 1000 fixed answers: what the same clients see from a server that does nothing else." % (a.handler_seconds, a.repeat),
                "- RSS: `VmRSS` of `/proc/PID/status`.",
                "- Instructions: `valgrind --tool=callgrind` (user space only) on the release daemon (debug info stripped; `scripts/bench/sigsuspend_shim.c` preloaded, see below) "
                "and on a second redis-server, each after a warm-up that makes every get a hit (for cached: in its memory), counters zeroed, an idle baseline subtracted, "
                "then %d gets from 10 connections (`cached-bench` and `redis-benchmark`); when valgrind cannot run, CPU per get from `/proc/PID/stat` and the perf profile stand in." % a.callgrind_requests,
                "- CPU per get: utime+stime of the process over the run divided by the requests (10 ms clock ticks).",
                ""]
        if (r.get("tls") or {}).get("ran"):  # after the "Redis direct" line
            redis_line = next(i for i, line in enumerate(out) if line.startswith("- Redis direct:"))
            out.insert(redis_line + 1,
                       "- TLS: a second redis-server, TLS only (`--port 0 --tls-port P --tls-auth-clients no`; a CA and a server certificate for "
                       "DNS:localhost, IP:127.0.0.1 made by `openssl` at bench time), pre-populated the same way; Redis direct: `redis-benchmark --tls "
                       "--cacert ca.crt -h 127.0.0.1 -p P` with the flags above; cached: a second daemon with `redis = \"rediss://127.0.0.1:P/0\"` and "
                       "`[redis_options] tls_ca_file`, warmed up and measured with the same `cached-bench` invocation. Hits are served from cached's local "
                       "copy, so within the measured load cached pays TLS only on fills (each entry's first read, in the first round; the plain daemon's "
                       "copy may already be warm from the rows above); the load writes nothing, so no invalidation crosses TLS during it. The TLS/plain "
                       "row measures both daemons and both redis-benchmark targets in the same interleaved rounds.")
        t = r.get("cluster") or {}
        if t.get("ran"):  # after the "Redis direct" and TLS lines
            at = max(i for i, line in enumerate(out) if line.startswith("- Redis direct:") or line.startswith("- TLS:"))
            out.insert(at + 1,
                       "- Cluster: %d more redis-servers as cluster masters (`--cluster-enabled yes`, no replicas, no persistence, one folder per "
                       "node in the temp dir, joined by `redis-cli --cluster create --cluster-replicas 0`, then waited on until `cluster_state:ok`). "
                       "Redis direct: `redis-benchmark --cluster --threads 1 -h 127.0.0.1 -p P` with the flags above (`--threads 1`: one client "
                       "thread like the single-node runs and cached-bench; in cluster mode redis-benchmark would start one per master). In cluster "
                       "mode redis-benchmark reads `key:{TAG}:NNNNNNNNNNNN`, TAG a hash tag of the first slot of the master a client is connected "
                       "to, so each master serves its own copy of the keyspace (%s keys written to each before the runs; misses counted on the "
                       "masters' `keyspace_misses`: %s). cached: a daemon with `redis = \"redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3\"`, "
                       "warmed up and measured with the same `cached-bench` invocation; its entries spread over the masters by slot (%s per "
                       "master). CPU per get sums the masters. The cluster/single row measures both daemons and both redis-benchmark targets in "
                       "the same interleaved rounds." % (
                           t.get("masters", self.CLUSTER_NODES), "{:,}".format(a.keyspace),
                           "{:,}".format((t.get("redisBenchmarkKeyspace") or {}).get("misses", 0)),
                           "/".join("{:,}".format(x) for x in t.get("cachedEntriesPerMaster") or []) or "-"))
        fl = r.get("fleet") or {}
        ex = r.get("expiry") or {}
        at = next((i for i, line in enumerate(out) if line.startswith("- Cold gets:")), None)
        if at is not None and ex.get("ran"):
            out.insert(at + 1,
                       "- Expiry: a daemon of its own with two keys filled by the same handler (sleeps %s s), `ExpiryOff` (`ttl = %d`, "
                       "`stale_ttl = 0`) and `ExpirySwr` (`ttl = %d`, `stale_ttl = %d`); per round, one get fills a new entry, then "
                       "`scripts/bench/expiry_load.py` reads it for %s s at %s gets/s, open loop (each get on an idle connection of a pool, "
                       "a new one opened when all are busy, so gets that arrive during a refill pile up as they would from many web "
                       "workers), crossing three expiries; %d rounds of each, alternating. Latency from each get's own send, percentiles "
                       "over all rounds' gets. A get *waited* when it was answered `hit: false`; handler calls are those the handler logged "
                       "between the load's first and last send; the handler puts its end stamp into the value, so an answer not marked "
                       "stale whose value is older than ttl at its send is reported under Notes." % (
                           a.handler_seconds, ex["ttl"], ex["ttl"], ex["staleTtl"], "{:g}".format(ex["seconds"]),
                           "{:g}".format(ex["rate"]), ex["rounds"]))
        if at is not None and fl.get("ran"):
            out.insert(at + 1,
                       "- Fleet: %d more daemons on the same redis-server, each with its own socket and one handler worker per key, and "
                       "two keys filled by the cold handler (sleeps %s s): `Fleet` (`fleet_single_flight` on, the default with Redis) and "
                       "`FleetSolo` (`fleet_single_flight = false`). Per round, %d forked processes x %d connections (%d processes per "
                       "daemon) send one `get` of a never-used entry each at a common signal (`cold_gets.py` with one `--socket` per "
                       "daemon); %d rounds per key, alternating, each on a new identity. Handler calls are counted from each daemon's "
                       "handler log; fleet locks won and lost from the daemons' `stats` (`fleet`); latency as for cold gets, the median "
                       "round being the one with the median max over the handler's own duration." % (
                           fl["daemons"], a.handler_seconds, 10 * fl["daemons"], fl["getsPerDaemon"] // 10, 10, fl["rounds"]))
        cl = r.get("clients")
        if cl:
            out += self.render_clients(cl)
        pf = r.get("perf") or {}
        if pf.get("self"):
            top = []
            with open(pf["self"]) as f:
                for line in f:
                    mm = re.match(r"\s*([0-9.]+)%\s+\[(.)\]\s+(.*)", line)
                    if mm:
                        top.append((float(mm.group(1)), mm.group(2), mm.group(3).strip()))
            if top:
                out += ["Where cached's CPU goes under get-hit load (perf, cpu-clock samples, self time, top 15; `[k]` kernel):", "",
                        "| self | function |", "|---|---|"]
                out += ["| %.1f%% | %s`%s` |" % (pct, "[k] " if kind == "k" else "", name.replace("|", "\\|")[:140]) for pct, kind, name in top[:15]]
                out += ["", "Full reports: `.build-bench-results/perf.get-hit.{self,inclusive}.txt` (git-ignored).", ""]
        elif pf.get("error"):
            self.notes.append("perf profile: %s" % pf["error"])
        if self.notes:
            out += ["Notes:", ""] + ["- " + n for n in self.notes] + [""]
        return "\n".join(out)


# What --only can name (the --skip-* flags name the same sections).
SECTIONS = ("throughput", "scrape", "tls", "cluster", "python", "clients", "cold", "fleet", "expiry", "perf", "idle", "callgrind")


def sections(text):
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(names - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError("unknown section(s) %s; choose from %s" % (", ".join(unknown) or "(none)", ", ".join(SECTIONS)))
    return names


# Everything from this line on in the report is hand-written analysis, kept when a run rewrites the table.
KEEP_MARKER = "<!-- make bench keeps everything below this line -->"


def write_report(path, table):
    kept = ""
    try:
        with open(path) as f:
            old = f.read()
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER):]
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(table.rstrip("\n") + "\n\n" + (kept or KEEP_MARKER + "\n"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cached", required=True)
    p.add_argument("--cached-bench", required=True)
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--venv-shim", required=True, help="python of the shim's venv")
    p.add_argument("--venv-redispy", required=True)
    p.add_argument("--venv-pyredis", required=True)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--requests", type=int, default=200000)
    p.add_argument("--pipelined-requests", type=int, default=1000000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--keyspace", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--python-calls", type=int, default=20000)
    p.add_argument("--clients-calls", type=int, default=20000, help="gets per variant per round in the clients section")
    p.add_argument("--clients-rounds", type=int, default=5, help="interleaved rounds in the clients section (median round)")
    p.add_argument("--node", default="node", help="node for the clients section (skipped when missing)")
    p.add_argument("--go", default="go", help="go for the clients section (skipped when missing)")
    p.add_argument("--php", default="php", help="php for the clients section (skipped when missing)")
    p.add_argument("--handler-seconds", default="0.2")
    p.add_argument("--fleet-gets", type=int, default=300, help="concurrent cold gets to each fleet daemon per round (a multiple of 10)")
    p.add_argument("--fleet-rounds", type=int, default=5, help="rounds of the fleet stampede, for each fleet_single_flight setting")
    p.add_argument("--expiry-rate", type=float, default=500.0, help="gets per second on the hot entry of the expiry rows")
    p.add_argument("--expiry-seconds", type=float, default=7.5, help="length of one expiry round (ttl 2 s: three boundaries)")
    p.add_argument("--valgrind-preload", help="the compiled scripts/bench/sigsuspend_shim.c, preloaded under valgrind")
    p.add_argument("--fanout-floor", help="the compiled scripts/bench/fanout_floor.c (the cold-get floor); skipped if absent")
    p.add_argument("--idle-connections", type=int, default=10000)
    p.add_argument("--callgrind-requests", type=int, default=20000)
    p.add_argument("--access-rules", type=int, default=10,
                   help="[[access]] rules in the callgrind run's configuration (0: none; see issue #26's 2%% target)")
    p.add_argument("--cached-redis", choices=["tcp", "unix"], default="tcp")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-scrape", action="store_true", help="leave out get-hit throughput with /metrics scraped once a second")
    p.add_argument("--skip-python", action="store_true")
    p.add_argument("--skip-clients", action="store_true", help="leave out the Node/Go/PHP/Python client rows against their floors")
    p.add_argument("--skip-callgrind", action="store_true")
    p.add_argument("--skip-perf", action="store_true")
    p.add_argument("--skip-tls", action="store_true", help="leave out the get-hit row over TLS (rediss://)")
    p.add_argument("--skip-cluster", action="store_true", help="leave out the get-hit row on a Redis Cluster (redis-cluster://)")
    p.add_argument("--skip-fleet", action="store_true", help="leave out the cold stampede across three daemons")
    p.add_argument("--skip-expiry", action="store_true", help="leave out the get latency across expiry boundaries")
    p.add_argument("--only", type=sections, metavar="SECTION[,SECTION...]",
                   help="run only these sections (quick runs; the rest of the table stays empty): " + ", ".join(SECTIONS))
    p.add_argument("--keep-temp", action="store_true")
    p.add_argument("--from-results", help="render the table from a saved results.json instead of measuring")
    args = p.parse_args()
    b = Bench(args)
    if args.from_results:
        with open(args.from_results) as f:
            b.results = json.load(f)
        table = b.render()
        print(table)
        if args.output:
            write_report(args.output, table)
        b.cleanup()
        return
    try:
        b.main()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
