//go:build unix

// Command bench measures restarts under load, side by side on one
// machine: for each scenario and load mode it starts a server, keeps
// clients that never retry sending requests (internal/loadgen), first
// without restarts (steady state), then through N restarts back to back,
// and prints one markdown row. `make bench` runs it and keeps the table
// and a plot for the README.
//
//	go run ./internal/bench [-restarts 10] [-period 250ms] [-steady 2.5s]
//	    [-clients 8] [-interval 2ms]
//	    [-modes keepalive,newconn,mixed] [-scenarios naive,...]
//	    [-protocols http1,tls,h2c,h2] [-protocol-modes keepalive] [-streams 4]
//	    [-out docs/bench.md] [-svg docs/bench.svg]
//
// Every scenario runs over cleartext HTTP/1.1 (http1) in every -modes;
// tableflip and handoff-embedded also over HTTP/1.1 over TLS (tls), h2c
// and HTTP/2 over TLS (h2), in -protocol-modes. The HTTP/2 clients go
// through net/http's Transport, and a request it retried counts as
// failed (internal/loadgen).
//
// Scenarios: spawn-only (no restart: a second process starts and stops
// beside the server; the latency cost of a process start alone on this
// machine), naive (stop, then start), reuseport (SO_REUSEPORT: start a
// new process, then stop the old), tableflip (cloudflare/tableflip's HTTP
// example, SIGHUP), handoff-embedded (examples/httpserver, SIGHUP),
// handoff-nocanary (the same with its canary window off),
// handoff-takeover (examples/httpserver, an independent new process),
// handoff-wrapper (`handoff run` around examples/activated, which knows
// nothing about handoff; SIGHUP), wrapper-plain and wrapper-plain-shared
// (`handoff run` around integration/plainshutdown, which drains with
// http.Server.Shutdown alone, with a socket per child generation and
// with one shared socket), and tableflip-crash and handoff-crash
// (restarts to a new process that dies 1 s after it is ready). The peers
// live in the module integration/bench.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// prog is the benchmark's testbed.TB: a failure cleans up and exits.
var prog = &testbed.Program{Name: "bench"}

// A scenario is one way of restarting a server.
type scenario struct {
	name string
	how  string // what one restart is, for the report
	bin  string // the server's executable
	// server returns the scenario's server on s, with flags for a
	// protocol other than cleartext HTTP/1.1 (see protocolFlags).
	server func(s *testbed.Service, flags []string) server
	// protocols: it serves TLS and HTTP/2 too, with the flags of
	// examples/httpserver; the others serve cleartext HTTP/1.1 only.
	protocols bool
}

func main() {
	restarts := flag.Int("restarts", 10, "restarts per scenario and mode; scale this up for a longer run")
	period := flag.Duration("period", 250*time.Millisecond, "start a restart at most this often (back to back when one takes longer), so that every scenario sees about the same number of requests")
	steady := flag.Duration("steady", 0, "load without restarts first, per scenario and mode, for the steady-state latency (default: as long as the restarts take, restarts × period, so that both p99s rest on as many requests)")
	clients := flag.Int("clients", 8, "concurrent clients")
	interval := flag.Duration("interval", 2*time.Millisecond, "each client starts a request at most this often")
	modes := flag.String("modes", defaultModes, "load modes")
	protocols := flag.String("protocols", defaultProtocols, "protocols: http1 for every scenario; tls, h2c and h2 for those that serve them (tableflip, handoff-embedded)")
	protocolModes := flag.String("protocol-modes", defaultProtocolModes, "load modes for the protocols other than http1")
	streams := flag.Int("streams", loadgen.DefaultStreams, "HTTP/2: clients that share a connection kept open, as many streams in flight on it")
	only := flag.String("scenarios", "", "run only these scenarios (comma-separated)")
	out := flag.String("out", "", "also write the report (markdown) here")
	svg := flag.String("svg", "", "write the plot (SVG) here")
	flag.Parse()
	defer prog.Close()
	if *steady <= 0 {
		*steady = time.Duration(*restarts) * *period
	}

	loadModes, otherModes := parseList(*modes, loadgen.ParseMode), parseList(*protocolModes, loadgen.ParseMode)
	protos := parseList(*protocols, loadgen.ParseProtocol)
	if err := testbed.BecomeSubreaper(); err != nil {
		prog.Fatalf("%v", err)
	}
	reaper := testbed.StartReaper()
	testbed.CheckNoChildren(prog, reaper)
	dir, err := os.MkdirTemp("", "handoff-bench")
	if err != nil {
		prog.Fatalf("%v", err)
	}
	prog.Cleanup(func() { os.RemoveAll(dir) })

	fmt.Fprintln(os.Stderr, "bench: building the servers")
	all := scenarios(dir, reaper)
	cert, key := testbed.WriteSelfSigned(prog, dir)
	env := describeMachine()
	var rows []row
	started := time.Now()
	for _, sc := range all {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), sc.name) {
			continue
		}
		for _, proto := range protos {
			modes := loadModes
			if proto != loadgen.HTTP1 {
				if !sc.protocols {
					continue
				}
				modes = otherModes
			}
			for _, mode := range modes {
				s := testbed.NewService(prog, reaper, sc.bin)
				load := loadgen.Config{Addr: s.Addr, Mode: mode, Protocol: proto, Streams: *streams, Workers: *clients, Interval: *interval, Timeout: 10 * time.Second}
				r := measure(sc, sc.server(s, protocolFlags(proto, cert, key)), load, *steady, *restarts, *period)
				fmt.Fprintf(os.Stderr, "bench: %-16s %-5s %-9s %s\n", sc.name, proto, mode, r.summary())
				rows = append(rows, r)
			}
		}
	}
	flags := fmt.Sprintf("-restarts %d -period %v -steady %v -clients %d -interval %v", *restarts, *period, *steady, *clients, *interval)
	for _, f := range []struct{ name, value, def string }{
		{"scenarios", *only, ""}, {"modes", *modes, defaultModes}, {"protocols", *protocols, defaultProtocols},
		{"protocol-modes", *protocolModes, defaultProtocolModes}, {"streams", fmt.Sprint(*streams), fmt.Sprint(loadgen.DefaultStreams)},
	} {
		if f.value != f.def {
			flags += fmt.Sprintf(" -%s %s", f.name, f.value)
		}
	}
	report := markdown(env, all, rows, flags, time.Since(started))
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			prog.Fatalf("%v", err)
		}
	}
	if *svg != "" {
		if err := os.WriteFile(*svg, plot(rows), 0o644); err != nil {
			prog.Fatalf("%v", err)
		}
	}
}

// The defaults of the flags that choose the rows.
const (
	defaultModes         = "keepalive,newconn,mixed"
	defaultProtocols     = "http1,tls,h2c,h2"
	defaultProtocolModes = "keepalive"
)

// parseList parses a comma-separated flag value, or exits.
func parseList[T any](s string, parse func(string) (T, error)) []T {
	var out []T
	for _, v := range strings.Split(s, ",") {
		t, err := parse(v)
		if err != nil {
			prog.Fatalf("%v", err)
		}
		out = append(out, t)
	}
	return out
}

// protocolFlags are the flags of examples/httpserver and tableflipserver
// for proto, with the certificate and key for TLS.
func protocolFlags(proto loadgen.Protocol, cert, key string) []string {
	switch {
	case proto == loadgen.H2C:
		return []string{"-h2c"}
	case proto.Secure():
		return []string{"-tls-cert", cert, "-tls-key", key}
	}
	return nil
}

// scenarios builds every scenario's binaries into dir.
func scenarios(dir string, reaper *testbed.Reaper) []scenario {
	own := &testbed.Builder{ModuleRoot: ".", Dir: dir}
	peers := &testbed.Builder{ModuleRoot: "integration/bench", Dir: dir}
	plain := peers.Build(prog, "./cmd/plainserver")
	httpserver := own.Build(prog, "./examples/httpserver")
	wrapper := own.Build(prog, "./cmd/handoff")
	activated := own.Build(prog, "./examples/activated")
	plainShutdown := own.Build(prog, "./integration/plainshutdown")
	tableflip := peers.Build(prog, "./cmd/tableflipserver")
	plainArgs := func(s *testbed.Service, extra ...string) []string {
		return append([]string{"-addr", s.Addr, "-pidfile", s.PIDFile}, extra...)
	}
	return []scenario{
		{"spawn-only", "no restart: start a second copy of the server on another port, wait until it listens, SIGTERM it", plain, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: plainArgs(s), how: startBeside(testbed.NewService(prog, reaper, plain))}
		}, false},
		{"naive", "SIGTERM, wait until it exits, start a new process", plain, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: plainArgs(s), how: stopThenStart}
		}, false},
		{"reuseport", "start a new process on the same port (SO_REUSEPORT), then SIGTERM the old one", plain, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: plainArgs(s, "-reuseport"), how: startThenStop(true)}
		}, false},
		{"tableflip", "SIGHUP: tableflip.Upgrade, then the old process runs http.Server.Shutdown (on HTTP/2: net/http's single GOAWAY)", tableflip, func(s *testbed.Service, flags []string) server {
			return &pidServer{s: s, args: plainArgs(s, flags...), how: upgradeOnSignal}
		}, true},
		{"handoff-embedded", "SIGHUP: Upgrade to a fresh copy of examples/httpserver (canary window on, 10 s: the old process stands by until the next restart releases it; on HTTP/2, HTTPServer's two-phase GOAWAY drain)", httpserver, func(s *testbed.Service, flags []string) server {
			return &pidServer{s: s, args: append(s.DefaultArgs(), flags...), how: upgradeOnSignal, canary: true}
		}, true},
		{"handoff-nocanary", "as handoff-embedded with the canary window off (-canary-window -1ns): what the window costs a good upgrade", httpserver, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: append(s.DefaultArgs(), "-canary-window", "-1ns"), how: upgradeOnSignal}
		}, false},
		{"handoff-takeover", "start an independent examples/httpserver on the same control socket", httpserver, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: s.DefaultArgs(), how: startThenStop(false), canary: true}
		}, false},
		{"handoff-wrapper", "SIGHUP to `handoff run` around examples/activated, which knows nothing about handoff", activated, func(s *testbed.Service, _ []string) server {
			return &wrapped{s: s, wrapper: wrapper, command: []string{activated}}
		}, false},
		{"wrapper-plain", "SIGHUP to `handoff run` around integration/plainshutdown, which drains with http.Server.Shutdown alone: a socket per child generation (the default)", plainShutdown, func(s *testbed.Service, _ []string) server {
			return &wrapped{s: s, wrapper: wrapper, command: []string{plainShutdown}}
		}, false},
		{"wrapper-plain-shared", "as wrapper-plain with -socket-mode shared: every child accepts from one socket until its stop signal", plainShutdown, func(s *testbed.Service, _ []string) server {
			return &wrapped{s: s, wrapper: wrapper, flags: []string{"-socket-mode", "shared"}, command: []string{plainShutdown}}
		}, false},
		{"tableflip-crash", "as tableflip, but the new process dies (SIGKILL) " + crashAfter.String() + " after it is ready, as a build that crashes then would; the benchmark then starts the server again at once, as the quickest supervisor would", tableflip, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: plainArgs(s), how: crashAfterReady(false)}
		}, false},
		{"handoff-crash", "as handoff-embedded, but the new process dies (SIGKILL) " + crashAfter.String() + " after it is ready, within the canary window: the old process rolls back", httpserver, func(s *testbed.Service, _ []string) server {
			return &pidServer{s: s, args: s.DefaultArgs(), how: crashAfterReady(true)}
		}, false},
	}
}

// measure runs one scenario in one load mode: steady load, then restarts
// under load, one every period or back to back when they take longer.
func measure(sc scenario, srv server, load loadgen.Config, steady time.Duration, restarts int, period time.Duration) row {
	pid := srv.start()
	testbed.WaitServingConfig(prog, load, pid)
	stop := testbed.RunLoadConfig(load)
	time.Sleep(steady) // the length of the measurement, not a wait for anything
	r := row{scenario: sc.name, mode: load.Mode, protocol: load.Protocol, steady: stop()}

	stop = testbed.RunLoadConfig(load)
	var last time.Time
	for i := range restarts {
		if i > 0 {
			time.Sleep(time.Until(last.Add(period))) // the restarts' pace, not a wait for anything
		}
		last = time.Now()
		srv.restart()
		r.durations = append(r.durations, time.Since(last))
	}
	// The load runs one more period, as between restarts: connections the
	// last restart moved are measured on the new process too (a drain
	// hands them over after the restart returns).
	time.Sleep(time.Until(last.Add(period))) // the measurement's length, not a wait for anything
	r.load = stop()
	r.retried = srv.retried()
	srv.stop()
	return r
}
