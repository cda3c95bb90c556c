# cached: build, run and test. `make run` and `make test` are all a fresh machine needs.
SWIFT ?= swift
PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
RUN_DIR := $(CURDIR)/run
REDIS_URL ?=
## Release builds drop Swift's run-time exclusivity checks in every module, swift-nio's included (about a
## seventh of the instructions of a get hit, docs/benchmarks.md); debug builds, which `make test` runs,
## keep them, so a violation still traps in the tests.
RELEASE_FLAGS ?= -c release -Xswiftc -enforce-exclusivity=unchecked

.PHONY: all deps build release run test test-swift test-python test-coherence test-access test-allocations test-clients test-node test-go test-php test-interop soak soak-sentinel soak-cluster install clean bench fuzz fuzz-replay

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)

## Coherence (Tests/Coherence): unit tests of the history check, then a 20 s checker run against a
## real redis-server and cached with every fault kind (docs/reliability.md).
## Per-key access ([[access]]): clients run as users the test makes (needs root, setpriv, useradd).
test-access: build
	CACHED_BIN=$$($(SWIFT) build --show-bin-path)/cached $(PYTHON) -m pytest Tests/Access -q

## Heap allocations per get hit (a preloaded malloc counter), gated at the figure in Tests/Allocations.
test-allocations: build
	CACHED_BIN=$$($(SWIFT) build --show-bin-path)/cached $(PYTHON) -m pytest Tests/Allocations -q

test-coherence:
	CACHED_BIN=$$($(SWIFT) build --show-bin-path)/cached $(PYTHON) -m pytest Tests/Coherence -q

## Coherence soak (not part of `make test`): the checker for SOAK_SECONDS with every fault kind; prints
## operations checked, faults injected, violations; exit status 1 on any violation or unanswered request.
## SOAK_DAEMONS cached daemons share the one redis-server (default 2, so that the soak covers the fleet's
## fill locks, fenced stores and waits; kill -9 of a daemon is then one of the faults); 1 runs one daemon.
SOAK_SECONDS ?= 600
SOAK_DAEMONS ?= 2
SOAK_ARGS ?=
soak: build
	$(PYTHON) Tests/Coherence/checker.py --seconds $(SOAK_SECONDS) --faults all --daemons $(SOAK_DAEMONS) \
		--bin $$($(SWIFT) build --show-bin-path)/cached $(SOAK_ARGS)

## The same across Redis failovers: a master, a replica and three Sentinels on 127.0.0.1, cached configured
## with a redis-sentinel:// URL, every fault kind plus `failover`; also reports lost writes and failover times.
soak-sentinel: build
	$(PYTHON) Tests/Coherence/checker.py --seconds $(SOAK_SECONDS) --topology sentinel --faults all \
		--bin $$($(SWIFT) build --show-bin-path)/cached $(SOAK_ARGS)

## The same across Redis Cluster reshards and failovers: six nodes (three primaries with a replica each) on
## 127.0.0.1, cached configured with a redis-cluster:// URL, the fault kinds on one primary at a time plus
## `reshard` and `failover`; also reports slots and keys moved, failover times and lost writes.
soak-cluster: build
	$(PYTHON) Tests/Coherence/checker.py --seconds $(SOAK_SECONDS) --topology cluster --faults all \
		--bin $$($(SWIFT) build --show-bin-path)/cached $(SOAK_ARGS)

## Start cached in the foreground with the example configuration, on run/cached.sock.
## Uses the embedded store unless REDIS_URL is set (e.g. REDIS_URL=redis://127.0.0.1:6379/0).
run: build
	@mkdir -p $(RUN_DIR)
	@echo "cached: serving on $(RUN_DIR)/cached.sock; try: echo '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}' | socat - UNIX-CONNECT:$(RUN_DIR)/cached.sock"
	$$($(SWIFT) build --show-bin-path)/cached --config examples/cached.toml --socket $(RUN_DIR)/cached.sock $(if $(REDIS_URL),--redis "$(REDIS_URL)")

## Every suite. Each test starts its own private redis-server (temp dir, Unix socket or free port)
## and its own cached process, and stops them.
test: build
	$(MAKE) test-swift
	$(MAKE) test-python
	$(MAKE) test-clients
	$(MAKE) test-access
	$(MAKE) test-allocations
	$(MAKE) test-coherence

## The Node.js, Go and PHP clients, each with its own runner and the shared conformance suite
## (clients/conformance) against real daemons; then every client reads what every other one wrote.
CACHED_DEBUG_BIN = $$($(SWIFT) build --show-bin-path)/cached
test-clients: test-node test-go test-php test-interop

test-node: build
	CACHED_BIN=$(CACHED_DEBUG_BIN) node --test clients/node/test/*.test.js

test-go: build
	cd clients/go && GOFLAGS=-mod=mod GOPROXY=off go vet ./... && \
		CACHED_BIN=$(CACHED_DEBUG_BIN) GOFLAGS=-mod=mod GOPROXY=off go test -race -count=1 ./...

test-php: build
	CACHED_BIN=$(CACHED_DEBUG_BIN) phpunit --configuration clients/php/phpunit.xml

test-interop: build
	CACHED_BIN=$(CACHED_DEBUG_BIN) $(PYTHON) -m pytest clients/conformance/test_interop.py -q

## Serial: the integration tests block on sockets and processes; run in parallel with the worker-pool
## tests on a 2-core machine they starve Swift's cooperative thread pool. All suites take about a minute.
test-swift:
	$(SWIFT) test --no-parallel

test-python:
	CACHED_BIN=$$($(SWIFT) build --show-bin-path)/cached $(PYTHON) -m pytest clients/python/tests -q

## Install the release binaries, the units and the example configuration (DESTDIR, PREFIX honoured).
## The units refer to /usr/local/bin/cached; with another PREFIX they are rewritten on install.
install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/cached $(DESTDIR)/lib/systemd/system \
		$(DESTDIR)/usr/lib/sysusers.d $(DESTDIR)/usr/lib/tmpfiles.d $(DESTDIR)$(PREFIX)/share/doc/cached
	install -m 0755 $$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)/cached $(DESTDIR)$(PREFIX)/bin/cached
	if [ -x $$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)/cachectl ]; then \
		install -m 0755 $$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)/cachectl $(DESTDIR)$(PREFIX)/bin/cachectl; fi
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|; s|/usr/local/share/|$(PREFIX)/share/|' packaging/cached.service > $(DESTDIR)/lib/systemd/system/cached.service
	sed 's|/usr/local/share/|$(PREFIX)/share/|' packaging/cached.socket > $(DESTDIR)/lib/systemd/system/cached.socket
	chmod 0644 $(DESTDIR)/lib/systemd/system/cached.service $(DESTDIR)/lib/systemd/system/cached.socket
	[ -e $(DESTDIR)/etc/cached/cached.toml ] || install -m 0644 packaging/cached.toml $(DESTDIR)/etc/cached/cached.toml
	install -m 0644 packaging/cached.sysusers $(DESTDIR)/usr/lib/sysusers.d/cached.conf
	install -m 0644 packaging/cached.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/cached.conf
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/cached/

clean:
	rm -rf .build run

## Benchmarks (not part of `make test`): cached vs Redis side by side; rewrites docs/benchmarks.md.
bench:
	scripts/bench.sh

## Fuzzing (not part of `make test`; Fuzz/README.md): libFuzzer + ASan over the input path, for FUZZ_SECONDS,
## from Fuzz/corpus and Fuzz/seeds; new finds are merged into Fuzz/corpus. FUZZ_FLAGS adds libFuzzer flags.
FUZZ_SECONDS ?= 300
FUZZ_FLAGS ?=
FUZZ_BIN = .build-fuzz/debug/CachedFuzz
fuzz:
	CACHED_FUZZ=1 $(SWIFT) build --scratch-path .build-fuzz -c debug --product CachedFuzz -Xswiftc -sanitize=fuzzer,address
	@mkdir -p Fuzz/corpus .build-fuzz/work .build-fuzz/artifacts
	status=0; SWIFT_BACKTRACE=enable=no nice -n 10 $(FUZZ_BIN) .build-fuzz/work Fuzz/corpus Fuzz/seeds \
		-dict=Fuzz/cached.dict -max_len=4096 -timeout=5 -rss_limit_mb=2048 -max_total_time=$(FUZZ_SECONDS) \
		-print_final_stats=1 -artifact_prefix=.build-fuzz/artifacts/ $(FUZZ_FLAGS) || status=$$?; \
	SWIFT_BACKTRACE=enable=no nice -n 10 $(FUZZ_BIN) -set_cover_merge=1 -max_len=4096 -timeout=5 -rss_limit_mb=2048 \
		-artifact_prefix=.build-fuzz/artifacts/ Fuzz/corpus .build-fuzz/work || status=$$?; \
	echo "corpus: $$(ls Fuzz/corpus | wc -l) files; artifacts: $$(ls .build-fuzz/artifacts | wc -l) (in .build-fuzz/artifacts)"; \
	exit $$status

## Replays Fuzz/corpus and Fuzz/seeds through the fuzz check (also part of `make test`).
fuzz-replay:
	$(SWIFT) test --filter FuzzCorpusReplayTests
