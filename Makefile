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
# releases need 1.25 or 1.26). Set OLDGO_TOOLCHAIN=1 to test with that toolchain too.
MINGO := 1.24.0
OLDGO_TOOLCHAIN ?=

.PHONY: help build release demo test integration check fuzz fuzz-ci lint cover bench scale deps oldgo

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build every binary into bin/
	$(GO) build -o bin/ ./cmd/... ./examples/...

release: ## static handoff binaries for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS (VERSION= overrides git describe)
	GO=$(GO) ./scripts/release.sh

demo: ## the main job: restart a server under load, count failed requests
	$(GO) run ./internal/demo

test: ## unit tests, with the race detector
	$(GO) test -race -count=1 $(UNIT_PKGS)

integration: deps ## integration tests: real binaries, processes, sockets and load
	$(GO) test -race -count=1 -timeout 25m ./integration/...

oldgo: ## go.mod's go line is still MINGO and go vet holds the code to it; OLDGO_TOOLCHAIN=1 also vets and unit-tests with that Go
	@test "$$($(GO) list -m -f '{{.GoVersion}}')" = $(MINGO) || { echo "go.mod's go line is $$($(GO) list -m -f '{{.GoVersion}}'), not MINGO=$(MINGO): a dependency or an edit raised it; lower it again, or raise MINGO and say why"; exit 1; }
	$(GO) vet ./...
	@if [ -n "$(OLDGO_TOOLCHAIN)" ]; then \
		echo "GOTOOLCHAIN=go$(MINGO) go vet ./... && go test -count=1 UNIT_PKGS"; \
		GOTOOLCHAIN=go$(MINGO) $(GO) vet ./... && GOTOOLCHAIN=go$(MINGO) $(GO) test -count=1 $(UNIT_PKGS); \
	else \
		echo "not tested with the go$(MINGO) toolchain itself: OLDGO_TOOLCHAIN=1 make oldgo does, where the Go module proxy serves it"; \
	fi

check: lint release test oldgo fuzz-ci integration ## everything CI runs (README's test command)

fuzz: ## fuzz the wire decoder for FUZZTIME executions (default 1000000x, about a minute)
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) -fuzzminimizetime=100x ./internal/wire

fuzz-ci: ## a short fuzzing run
	$(MAKE) fuzz FUZZTIME=150000x

lint: ## gofmt, go vet (here and for CROSS_OS) and staticcheck
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "run gofmt -w ."; exit 1; }
	$(GO) vet ./...
	@for os in $(CROSS_OS); do echo "GOOS=$$os go build ./... && go vet ./..."; GOOS=$$os $(GO) build ./... && GOOS=$$os $(GO) vet ./... || exit 1; done
	cd integration/bench && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
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
scale: ## SCALE_CONNS (18,000) idle keep-alive connections through one restart of examples/httpserver, and the connection-handover benchmark up to 18,000: docs/performance.md's connection figures
	HANDOFF_SCALE_CONNS=$(SCALE_CONNS) $(GO) test -count=1 -v -run='^TestIdleConnectionsMoveAtScale$$' ./integration/
	$(GO) test -run='^$$' -bench='^BenchmarkConnHandover$$' -benchtime=5x -benchmem ./handoff

deps: ## install the system packages the tests need (Debian)
	./scripts/deps.sh
