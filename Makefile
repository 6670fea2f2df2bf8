# handoff: zero-downtime restarts. `make help` lists the targets.
.DEFAULT_GOAL := help
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# A count, not a duration: go1.26's fuzz coordinator can fail a clean run with
# "context deadline exceeded" when a -fuzztime duration expires (go.dev/issue/75804).
FUZZTIME ?= 1000000x
# The systems besides Linux that the library claims to build on.
CROSS_OS ?= darwin freebsd windows
UNIT_PKGS = $$($(GO) list ./... | grep -v /integration)
# The oldest Go the module supports, go.mod's go line: slog.DiscardHandler and
# testing.B.Loop need 1.24, and so does golang.org/x/sys v0.36.0 (its later
# releases need 1.25 or 1.26). `make oldgo` checks that go.mod still says
# so, and vets with the installed Go, whose compiler holds the module to
# the go line's language and whose vet (stdversion) reports any standard
# library symbol newer than it. `make oldgo OLDGO_TOOLCHAIN=1` also vets
# and unit-tests with the go$(MINGO) toolchain itself, which the go command
# fetches from the Go module proxy (golang.org/toolchain, ~75 MB once). It
# is off by default: the machines CI runs on may fetch only the toolchain
# their own rules name (go1.27.3 there), so CI does not fetch it.
MINGO := 1.24.0
OLDGO_TOOLCHAIN ?=

.PHONY: help build release demo test integration websocket check fuzz fuzz-ci lint cover bench scale deps oldgo

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build every binary into bin/
	$(GO) build -o bin/ ./cmd/... ./examples/...
	cd examples/websocket && $(GO) build -o ../../bin/ .
	cd examples/grpc && $(GO) build -o ../../bin/ .

release: ## static handoff binaries for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS (VERSION= overrides git describe)
	GO=$(GO) ./scripts/release.sh

demo: ## the main job: restart a server under load, count failed requests
	$(GO) run ./internal/demo

test: ## unit tests, with the race detector
	$(GO) test -race -count=1 $(UNIT_PKGS)

integration: deps ## integration tests: real binaries, processes, sockets and load (examples/grpc's too: GRPC_RESTARTS=200 scales its run)
	$(GO) test -race -count=1 -timeout 25m ./integration/...
	cd examples/grpc && $(GO) test -race -count=1 -timeout 5m ./...

websocket: deps ## examples/websocket's tests: 200 clients and headless Chromium across restarts (WS_CLIENTS, WS_RESTARTS, WS_INTERVAL_MS, WS_BROWSER_RESTARTS, WS_SCALE_CONNS size them; WS_SCREENSHOT=../../docs/websocket.png remakes the screenshot)
	cd examples/websocket && $(GO) test -race -count=1 -timeout 10m ./...

oldgo: ## go.mod's go line is still MINGO and go vet (stdversion: no newer standard library) passes; OLDGO_TOOLCHAIN=1 also vets and unit-tests with the go$(MINGO) toolchain itself
	@test "$$($(GO) list -m -f '{{.GoVersion}}')" = $(MINGO) || { echo "go.mod's go line is $$($(GO) list -m -f '{{.GoVersion}}'), not MINGO=$(MINGO): a dependency or an edit raised it; lower it again, or raise MINGO and say why"; exit 1; }
	$(GO) vet ./...
	@if [ -n "$(OLDGO_TOOLCHAIN)" ]; then \
		tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		grep -v '^godebug' go.mod > "$$tmp/go.mod" && cp go.sum "$$tmp/go.sum" && \
		echo "GOTOOLCHAIN=go$(MINGO) go vet ./... && go test -count=1 UNIT_PKGS (with go.mod's godebug line left out: go$(MINGO) does not know go1.26's defaults)" && \
		GOTOOLCHAIN=go$(MINGO) GOFLAGS=-modfile="$$tmp/go.mod" $(GO) vet ./... && \
		GOTOOLCHAIN=go$(MINGO) GOFLAGS=-modfile="$$tmp/go.mod" $(GO) test -count=1 $(UNIT_PKGS); \
	else \
		echo "checked against go$(MINGO) by the go line and vet's stdversion; make oldgo OLDGO_TOOLCHAIN=1 also tests with the go$(MINGO) toolchain itself"; \
	fi

check: lint release test oldgo fuzz-ci integration websocket ## everything CI runs (README's test command)

fuzz: ## fuzz the wire decoder for FUZZTIME executions (default 1000000x, about a minute)
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) -fuzzminimizetime=100x ./internal/wire

fuzz-ci: ## a short fuzzing run
	$(MAKE) fuzz FUZZTIME=150000x

lint: ## gofmt, go vet (here and for CROSS_OS) and staticcheck
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "run gofmt -w ."; exit 1; }
	$(GO) vet ./...
	@for os in $(CROSS_OS); do echo "GOOS=$$os go build ./... && go vet ./..."; GOOS=$$os $(GO) build ./... && GOOS=$$os $(GO) vet ./... || exit 1; done
	cd integration/bench && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd examples/websocket && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd examples/grpc && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) ./...

cover: ## unit test coverage, in cover.html
	$(GO) test -coverprofile=cover.out $(UNIT_PKGS)
	$(GO) tool cover -html=cover.out -o cover.html

bench: ## restarts under load side by side with the peers, and micro-benchmarks: docs/bench.{md,svg}, docs/bench-micro.txt (BENCH_FLAGS="-restarts 100" scales it up)
	@mkdir -p docs
	$(GO) run ./internal/bench $(BENCH_FLAGS) -out docs/bench.md -svg docs/bench.svg
	$(GO) test -run='^$$' -bench=. -benchmem ./handoff > docs/bench-micro.txt || { cat docs/bench-micro.txt; exit 1; }
	cd integration/bench && $(GO) test -run='^$$' -bench=. . >> ../../docs/bench-micro.txt || { cat ../../docs/bench-micro.txt; exit 1; }
	cat docs/bench-micro.txt

SCALE_CONNS ?= 18000
scale: ## SCALE_CONNS (18,000) idle keep-alive connections, then as many WebSockets, through one restart of examples/httpserver and examples/websocket, and the connection-handover benchmarks (up to 18,000; idle ones up to 6,000): docs/performance.md's connection figures
	HANDOFF_SCALE_CONNS=$(SCALE_CONNS) $(GO) test -count=1 -v -run='^TestIdleConnectionsMoveAtScale$$' ./integration/
	cd examples/websocket && WS_SCALE_CONNS=$(SCALE_CONNS) $(GO) test -count=1 -v -run='^TestWebSocketsMoveAtScale$$' .
	$(GO) test -run='^$$' -bench='^Benchmark(Idle)?ConnHandover$$' -benchtime=5x -benchmem ./handoff

deps: ## install the system packages the tests need (Debian)
	./scripts/deps.sh
