package integration_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// runHelper runs the test binary as a broken build of httpserver: it is
// put in place of the binary, so that SIGHUP starts it as the successor.
//
// HANDOFF_TEST_HELPER names a file that holds the role, so that a test
// can choose it after the server (whose environment every successor
// inherits) has started.
func runHelper(roleFile string) {
	b, err := os.ReadFile(roleFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	role := strings.TrimSpace(string(b))
	fs := flag.NewFlagSet("httpserver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "", "")
	fs.String("addr", "", "")
	fs.String("pidfile", "", "")
	fs.Duration("delay", 0, "")
	fs.Parse(os.Args[1:])
	if _, err := handoff.New(context.Background(), handoff.Config{Name: "httpserver", Socket: *socket}); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	switch role {
	case "crash": // took the sockets, dies before it is ready
		os.Exit(3)
	case "hang": // took the sockets, never says it is ready
		select {}
	}
	fmt.Fprintf(os.Stderr, "unknown helper role %q\n", role)
	os.Exit(2)
}

// TestHTTPServerRestartsUnderLoad: examples/httpserver under steady load
// (keep-alive and new connections, no retries) through 50 SIGHUP upgrades
// back to back and 10 takeovers by independent processes: no request
// fails, every upgrade brings a new pid, every old process exits, and
// nothing is left running.
func TestHTTPServerRestartsUnderLoad(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./examples/httpserver"))
	first := s.Start()
	s.WaitPID(first, 0, 30*time.Second)
	testbed.WaitServing(t, s.Addr, first)

	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)
	pids := []int{first}
	var hupToStop []time.Duration
	for range 50 {
		old := pids[len(pids)-1]
		t0 := time.Now()
		s.Signal(old, syscall.SIGHUP)
		// The old process rewrites the pid file right after it closed
		// its listeners: this is when it stopped accepting.
		next := s.WaitPID(0, old, 30*time.Second)
		hupToStop = append(hupToStop, time.Since(t0))
		pids = append(pids, next)
	}
	for range 10 {
		next := s.Start()
		s.WaitPID(next, 0, 30*time.Second)
		pids = append(pids, next)
	}
	res := stopLoad()
	requireNoFailures(t, res)

	seen := map[int]bool{}
	for _, pid := range pids {
		if seen[pid] {
			t.Fatalf("pid %d served twice: upgrades did not all bring a new process (%v)", pid, pids)
		}
		seen[pid] = true
	}
	for _, pid := range pids[:len(pids)-1] {
		if ws := s.WaitExit(pid, 60*time.Second); ws.ExitStatus() != 0 {
			t.Errorf("old process %d exited with %v", pid, ws)
		}
	}
	last := pids[len(pids)-1]
	s.Signal(last, syscall.SIGTERM)
	if ws := s.WaitExit(last, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("last process exited with %v after SIGTERM", ws)
	}
	t.Logf("%d generations served %d requests (%d distinct pids answered); SIGHUP to old process stopped accepting: median %v, max %v",
		len(pids), res.OK, len(res.PIDs), testbed.Median(hupToStop), slicesMax(hupToStop))
}

func slicesMax(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// TestHTTPServerBrokenSuccessor: a successor that crashes before it is
// ready, and one that hangs past the ready timeout, change nothing for
// clients: the old process keeps serving, and a good build then upgrades.
func TestHTTPServerBrokenSuccessor(t *testing.T) {
	checkNoChildren(t)
	good := binary(t, "./examples/httpserver")
	s := newService(t, good)
	// Run a copy that the test can replace, as a deploy would.
	installed := s.Dir + "/httpserver"
	install(t, good, installed)
	s.Bin = installed
	broken, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	roleFile := s.Dir + "/role"
	s.Env = []string{envHelper + "=" + roleFile} // httpserver ignores it; the broken build reads it

	first := s.Start()
	s.WaitPID(first, 0, 30*time.Second)
	testbed.WaitServing(t, s.Addr, first)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)
	for _, role := range []string{"crash", "hang"} {
		if err := os.WriteFile(roleFile, []byte(role), 0o644); err != nil {
			t.Fatal(err)
		}
		install(t, broken, installed)
		from := s.LogSize()
		s.Signal(first, syscall.SIGHUP)
		s.WaitLog(from, "upgrade failed; still serving", 60*time.Second)
		if pid := s.PID(); pid != first {
			t.Fatalf("after the %s successor the pid file says %d, want %d", role, pid, first)
		}
	}
	install(t, good, installed)
	s.Signal(first, syscall.SIGHUP)
	next := s.WaitPID(0, first, 30*time.Second)
	requireNoFailures(t, stopLoad())
	s.WaitExit(first, 60*time.Second)
	s.Signal(next, syscall.SIGTERM)
	s.WaitExit(next, 60*time.Second)
}

// install copies the executable from to to, replacing to atomically as
// a deploy would.
func install(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	tmp := to + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}
