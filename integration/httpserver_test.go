//go:build linux

package integration_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

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

// TestHTTPServerBrokenSuccessor: a new build that crashes before it is
// ready, and one that hangs past the ready timeout, change nothing for
// clients: the old process keeps serving, and a good build then upgrades.
// (The broken builds are the handoff package's test binary, see
// chaos_test.go.)
func TestHTTPServerBrokenSuccessor(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	first := c.start(t)
	stopLoad := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	for _, step := range []string{"after-fds", "hold"} {
		c.setStep(t, step)
		install(t, c.peer, c.installed)
		from := c.LogSize()
		c.Signal(first, syscall.SIGHUP)
		c.WaitLog(from, "upgrade failed; still serving", 60*time.Second)
		if pid := c.PID(); pid != first {
			t.Fatalf("after the %s successor the pid file says %d, want %d", step, pid, first)
		}
	}
	requireNoFailures(t, stopLoad())
	next := c.upgrade(t, first)
	c.stopService(t, next)
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
