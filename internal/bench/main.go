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
//	    [-out docs/bench.md] [-svg docs/bench.svg]
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
	name   string
	how    string // what one restart is, for the report
	bin    string // the server's executable
	server func(s *testbed.Service) server
}

func main() {
	restarts := flag.Int("restarts", 10, "restarts per scenario and mode; scale this up for a longer run")
	period := flag.Duration("period", 250*time.Millisecond, "start a restart at most this often (back to back when one takes longer), so that every scenario sees about the same number of requests")
	steady := flag.Duration("steady", 0, "load without restarts first, per scenario and mode, for the steady-state latency (default: as long as the restarts take, restarts × period, so that both p99s rest on as many requests)")
	clients := flag.Int("clients", 8, "concurrent clients")
	interval := flag.Duration("interval", 2*time.Millisecond, "each client starts a request at most this often")
	modes := flag.String("modes", "keepalive,newconn,mixed", "load modes")
	only := flag.String("scenarios", "", "run only these scenarios (comma-separated)")
	out := flag.String("out", "", "also write the report (markdown) here")
	svg := flag.String("svg", "", "write the plot (SVG) here")
	flag.Parse()
	defer prog.Close()
	if *steady <= 0 {
		*steady = time.Duration(*restarts) * *period
	}

	var loadModes []loadgen.Mode
	for _, m := range strings.Split(*modes, ",") {
		mode, err := loadgen.ParseMode(m)
		if err != nil {
			prog.Fatalf("%v", err)
		}
		loadModes = append(loadModes, mode)
	}
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
	env := describeMachine()
	var rows []row
	started := time.Now()
	for _, sc := range all {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), sc.name) {
			continue
		}
		for _, mode := range loadModes {
			s := testbed.NewService(prog, reaper, sc.bin)
			load := loadgen.Config{Addr: s.Addr, Mode: mode, Workers: *clients, Interval: *interval, Timeout: 10 * time.Second}
			r := measure(sc, sc.server(s), load, *steady, *restarts, *period)
			fmt.Fprintf(os.Stderr, "bench: %-16s %-9s %s\n", sc.name, mode, r.summary())
			rows = append(rows, r)
		}
	}
	report := markdown(env, all, rows, fmt.Sprintf("-restarts %d -period %v -steady %v -clients %d -interval %v", *restarts, *period, *steady, *clients, *interval), time.Since(started))
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
		{"spawn-only", "no restart: start a second copy of the server on another port, wait until it listens, SIGTERM it", plain, func(s *testbed.Service) server {
			return &pidServer{s: s, args: plainArgs(s), how: startBeside(testbed.NewService(prog, reaper, plain))}
		}},
		{"naive", "SIGTERM, wait until it exits, start a new process", plain, func(s *testbed.Service) server {
			return &pidServer{s: s, args: plainArgs(s), how: stopThenStart}
		}},
		{"reuseport", "start a new process on the same port (SO_REUSEPORT), then SIGTERM the old one", plain, func(s *testbed.Service) server {
			return &pidServer{s: s, args: plainArgs(s, "-reuseport"), how: startThenStop(true)}
		}},
		{"tableflip", "SIGHUP: tableflip.Upgrade, then the old process runs http.Server.Shutdown", tableflip, func(s *testbed.Service) server {
			return &pidServer{s: s, args: plainArgs(s), how: upgradeOnSignal}
		}},
		{"handoff-embedded", "SIGHUP: Upgrade to a fresh copy of examples/httpserver (canary window on, 10 s: the old process stands by until the next restart releases it)", httpserver, func(s *testbed.Service) server {
			return &pidServer{s: s, args: s.DefaultArgs(), how: upgradeOnSignal, canary: true}
		}},
		{"handoff-nocanary", "as handoff-embedded with the canary window off (-canary-window -1ns): what the window costs a good upgrade", httpserver, func(s *testbed.Service) server {
			return &pidServer{s: s, args: append(s.DefaultArgs(), "-canary-window", "-1ns"), how: upgradeOnSignal}
		}},
		{"handoff-takeover", "start an independent examples/httpserver on the same control socket", httpserver, func(s *testbed.Service) server {
			return &pidServer{s: s, args: s.DefaultArgs(), how: startThenStop(false), canary: true}
		}},
		{"handoff-wrapper", "SIGHUP to `handoff run` around examples/activated, which knows nothing about handoff", activated, func(s *testbed.Service) server {
			return &wrapped{s: s, wrapper: wrapper, command: []string{activated}}
		}},
		{"wrapper-plain", "SIGHUP to `handoff run` around integration/plainshutdown, which drains with http.Server.Shutdown alone: a socket per child generation (the default)", plainShutdown, func(s *testbed.Service) server {
			return &wrapped{s: s, wrapper: wrapper, command: []string{plainShutdown}}
		}},
		{"wrapper-plain-shared", "as wrapper-plain with -socket-mode shared: every child accepts from one socket until its stop signal", plainShutdown, func(s *testbed.Service) server {
			return &wrapped{s: s, wrapper: wrapper, flags: []string{"-socket-mode", "shared"}, command: []string{plainShutdown}}
		}},
		{"tableflip-crash", "as tableflip, but the new process dies (SIGKILL) " + crashAfter.String() + " after it is ready, as a build that crashes then would; the benchmark then starts the server again at once, as the quickest supervisor would", tableflip, func(s *testbed.Service) server {
			return &pidServer{s: s, args: plainArgs(s), how: crashAfterReady(false)}
		}},
		{"handoff-crash", "as handoff-embedded, but the new process dies (SIGKILL) " + crashAfter.String() + " after it is ready, within the canary window: the old process rolls back", httpserver, func(s *testbed.Service) server {
			return &pidServer{s: s, args: s.DefaultArgs(), how: crashAfterReady(true)}
		}},
	}
}

// measure runs one scenario in one load mode: steady load, then restarts
// under load, one every period or back to back when they take longer.
func measure(sc scenario, srv server, load loadgen.Config, steady time.Duration, restarts int, period time.Duration) row {
	pid := srv.start()
	testbed.WaitServing(prog, load.Addr, pid)
	stop := testbed.RunLoadConfig(load)
	time.Sleep(steady) // the length of the measurement, not a wait for anything
	r := row{scenario: sc.name, mode: load.Mode, steady: stop()}

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
