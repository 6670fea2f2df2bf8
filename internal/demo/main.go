//go:build unix

// Command demo shows a zero-downtime restart: it runs examples/httpserver
// under load from clients that never retry, upgrades it with SIGHUP,
// replaces it with independent processes, and counts failed requests.
// Then, for contrast, it restarts the same server the usual way (stop,
// then start) and counts again.
//
//	go run ./internal/demo [-restarts 10] [-takeovers 3] [-naive 3]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

func main() {
	restarts := flag.Int("restarts", 10, "SIGHUP upgrades")
	takeovers := flag.Int("takeovers", 3, "takeovers by independent processes")
	naive := flag.Int("naive", 3, "stop-then-start restarts, for contrast")
	workers := flag.Int("clients", 8, "concurrent clients")
	flag.Parse()

	d := &testbed.Program{Name: "demo"}
	defer d.Close()
	if err := testbed.BecomeSubreaper(); err != nil {
		d.Fatalf("%v", err)
	}
	reaper := testbed.StartReaper()
	dir, err := os.MkdirTemp("", "handoff-demo")
	if err != nil {
		d.Fatalf("%v", err)
	}
	d.Cleanup(func() { os.RemoveAll(dir) })
	testbed.CheckNoChildren(d, reaper)

	say("building examples/httpserver")
	bin := (&testbed.Builder{ModuleRoot: ".", Dir: dir}).Build(d, "./examples/httpserver")
	s := testbed.NewService(d, reaper, bin)
	pid := s.Start()
	s.WaitPID(pid, 0, 30*time.Second)
	testbed.WaitServing(d, s.Addr, pid)
	say("httpserver pid %d serves http://%s/", pid, s.Addr)

	say("load: %d clients, keep-alive and new connections, no retries", *workers)
	stop := testbed.RunLoad(s.Addr, loadgen.Mixed, *workers)
	for i := 1; i <= *restarts; i++ {
		t0 := time.Now()
		s.Signal(pid, syscall.SIGHUP)
		next := s.WaitPID(0, pid, 30*time.Second)
		say("upgrade %2d/%d: SIGHUP to %d, now %d serves (old one stopped accepting after %v)", i, *restarts, pid, next, time.Since(t0).Round(time.Millisecond))
		pid = next
	}
	for i := 1; i <= *takeovers; i++ {
		t0 := time.Now()
		next := s.Start()
		s.WaitPID(next, 0, 30*time.Second)
		say("takeover %d/%d: independent process %d took over from %d in %v", i, *takeovers, next, pid, time.Since(t0).Round(time.Millisecond))
		pid = next
	}
	handoff := stop()
	report("with handoff", handoff)

	stop = testbed.RunLoad(s.Addr, loadgen.Mixed, *workers)
	for i := 1; i <= *naive; i++ {
		s.Signal(pid, syscall.SIGTERM)
		s.WaitExit(pid, time.Minute)
		pid = s.Start()
		s.WaitPID(pid, 0, 30*time.Second)
		say("plain restart %d/%d: stopped, then started %d", i, *naive, pid)
	}
	plain := stop()
	report("plain restart", plain)
	s.Signal(pid, syscall.SIGTERM)
	s.WaitExit(pid, time.Minute)

	if handoff.FailedCount() != 0 {
		d.Fatalf("%d requests failed across handoff restarts", handoff.FailedCount())
	}
	say("zero failed requests across %d restarts with handoff.", *restarts+*takeovers)
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func report(what string, r *loadgen.Result) {
	var kinds []string
	for _, k := range loadgen.Kinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, r.Failures[k]))
	}
	say("%s: %d requests, %d failed (%s); %d server processes answered; latency p50 %v, p99 %v, max %v",
		what, r.Requests, r.FailedCount(), strings.Join(kinds, ", "), len(r.PIDs),
		r.Latency.Quantile(0.5).Round(time.Microsecond), r.Latency.Quantile(0.99).Round(time.Microsecond), r.Latency.Max().Round(time.Microsecond))
}
