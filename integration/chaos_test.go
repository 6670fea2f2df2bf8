//go:build linux

package integration_test

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// The chaos suite: examples/httpserver under steady load while its
// successors die at every step of the protocol, its old process dies
// mid-drain, a successor is stopped past the ready timeout, and upgrades
// are requested 20 at a time. The broken successors are the handoff
// package's test binary playing the role chaos-successor
// (handoff/chaos_helper_linux_test.go), which speaks the protocol with
// the package's own codec; it is started as an independent process
// (takeover) or installed in place of httpserver (SIGHUP).

// chaosService is an httpserver whose installed binary a test can swap
// for the handoff test binary.
type chaosService struct {
	*testbed.Service
	good      string // examples/httpserver
	peer      string // the handoff package's test binary
	installed string // what SIGHUP starts
	stepFile  string // where chaos-successor reads its step
	// standing is the process upgrade handed over from, which stands by
	// in its canary window until the next upgrade's handover or
	// stopService releases it; both wait for it to exit.
	standing int
}

func newChaosService(t *testing.T) *chaosService {
	t.Helper()
	good := binary(t, "./examples/httpserver")
	c := &chaosService{Service: newService(t, good), good: good, peer: builder.BuildTest(t, "./handoff")}
	c.installed = c.Dir + "/httpserver"
	install(t, good, c.installed)
	c.Bin = c.installed
	c.stepFile = c.Dir + "/step"
	// httpserver ignores these; the handoff test binary, whether started
	// by the test or by httpserver's SIGHUP, reads them.
	c.Env = []string{envHelper + "=chaos-successor", testenv.ChaosFile + "=" + c.stepFile, testenv.Service + "=httpserver"}
	return c
}

// start starts the first process and waits until it serves.
func (c *chaosService) start(t *testing.T, args ...string) int {
	t.Helper()
	pid := c.Start(args...)
	c.WaitPID(pid, 0, 30*time.Second)
	testbed.WaitServing(t, c.Addr, pid)
	return pid
}

func (c *chaosService) setStep(t *testing.T, step string) {
	t.Helper()
	if err := os.WriteFile(c.stepFile, []byte(step), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fds counts pid's open descriptors.
func (c *chaosService) fds(t *testing.T, pid int) int {
	t.Helper()
	n, err := testbed.OpenFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// upgrade upgrades old to a good build with SIGHUP under load: no request
// fails, and the successor serves. It returns the successor. old stands
// by in its canary window (the next upgrade or stopService waits for it
// to exit 0); the process that stood by for old, released by this
// handover, has exited 0 when upgrade returns.
func (c *chaosService) upgrade(t *testing.T, old int) int {
	t.Helper()
	install(t, c.good, c.installed)
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	c.Signal(old, syscall.SIGHUP)
	next := c.WaitPID(0, old, 30*time.Second)
	testbed.WaitServing(t, c.Addr, next)
	c.retire(t)
	c.standing = old
	requireNoFailures(t, stop())
	return next
}

// retire waits for the process that stood by to exit 0.
func (c *chaosService) retire(t *testing.T) {
	t.Helper()
	if c.standing == 0 {
		return
	}
	if ws := c.WaitExit(c.standing, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("old process %d exited with %v", c.standing, ws)
	}
	c.standing = 0
}

// stopService ends the service's last process with SIGTERM.
func (c *chaosService) stopService(t *testing.T, pid int) {
	t.Helper()
	c.Signal(pid, syscall.SIGTERM)
	if ws := c.WaitExit(pid, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("process %d exited with %v after SIGTERM", pid, ws)
	}
	c.retire(t) // released by the stop
}

// killedBy reports whether ws is a death by SIGKILL.
func killedBy(ws syscall.WaitStatus) bool { return ws.Signaled() && ws.Signal() == syscall.SIGKILL }

// TestChaosSuccessorKilled: a successor killed with SIGKILL at each step
// of the protocol before it is ready, whether it is an independent process
// (takeover) or started by SIGHUP, changes nothing for clients: no request
// fails, the old process keeps serving with no descriptor leaked, and a
// real upgrade succeeds afterwards.
func TestChaosSuccessorKilled(t *testing.T) {
	steps := []string{"after-connect", "after-hello", "mid-transfer", "after-fds", "before-ready"}
	for _, via := range []string{"takeover", "sighup"} {
		t.Run(via, func(t *testing.T) {
			checkNoChildren(t)
			c := newChaosService(t)
			old := c.start(t)
			for _, step := range steps {
				c.setStep(t, step)
				before := c.fds(t, old)
				stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
				from := c.LogSize()
				succ := c.triggerChaos(t, via, old)
				c.WaitLog(from, "still serving", 30*time.Second)
				if succ != 0 {
					if ws := c.WaitExit(succ, 30*time.Second); !killedBy(ws) {
						t.Errorf("%s: successor %d exited with %v, not by its own SIGKILL", step, succ, ws)
					}
				}
				if pid := c.PID(); pid != old {
					t.Fatalf("%s: pid file says %d, want %d", step, pid, old)
				}
				testbed.WaitServing(t, c.Addr, old)
				res := stop()
				t.Logf("%s: %v", step, res)
				requireNoFailures(t, res)
				testbed.WaitFDs(t, old, before, 10*time.Second)
			}
			next := c.upgrade(t, old)
			c.stopService(t, next)
		})
	}
}

// triggerChaos starts the broken successor: as an independent process
// (its pid is returned), or by SIGHUP to old (0: old reaps it).
func (c *chaosService) triggerChaos(t *testing.T, via string, old int) int {
	t.Helper()
	if via == "takeover" {
		return c.StartProgram(c.peer, c.DefaultArgs()...)
	}
	install(t, c.peer, c.installed)
	c.Signal(old, syscall.SIGHUP)
	return 0
}

// TestChaosSuccessorKilledRightAfterReady: a successor that says ready
// and dies at once. Either the old process sees it gone before it gives
// up its sockets and serves on, or it has handed over and, within its
// canary window, rolls back and serves again on the same sockets. Either
// way no request fails, no descriptor leaks, and a real upgrade succeeds
// afterwards.
func TestChaosSuccessorKilledRightAfterReady(t *testing.T) {
	for _, via := range []string{"takeover", "sighup"} {
		t.Run(via, func(t *testing.T) {
			checkNoChildren(t)
			c := newChaosService(t)
			old := c.start(t)
			c.setStep(t, "after-ready")
			before := c.fds(t, old)
			stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
			from := c.LogSize()
			succ := c.triggerChaos(t, via, old)
			log := c.waitServesAgain(t, from, old)
			switch {
			case strings.Contains(log, "rolled back, serving again"):
				t.Logf("the old process handed over, then rolled back")
			case strings.Contains(log, "still serving"):
				t.Logf("the old process saw the successor die before it handed over")
			default:
				t.Fatalf("the old process neither served on nor rolled back:\n%s", log)
			}
			testbed.WaitServing(t, c.Addr, old)
			requireNoFailures(t, stop())
			testbed.WaitFDs(t, old, before, 10*time.Second)
			if succ != 0 && !killedBy(c.WaitExit(succ, 30*time.Second)) {
				t.Errorf("successor %d did not die by its own SIGKILL", succ)
			}
			c.stopService(t, c.upgrade(t, old))
		})
	}
}

// waitServesAgain waits until old logs either that it still serves (it
// gave up on its successor before the commit) or that it rolled back,
// and returns the log since from. It fails t if old exits instead.
func (c *chaosService) waitServesAgain(t *testing.T, from int64, old int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		log := string(c.LogFrom(from))
		if strings.Contains(log, "still serving") || strings.Contains(log, "rolled back, serving again") {
			return log
		}
		if err := syscall.Kill(old, 0); err != nil || processState(old) == "Z" {
			t.Fatalf("old process %d exited instead of serving again:\n%s", old, log)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("old process %d neither gave up on its successor nor rolled back", old)
	return ""
}

// killChild sends SIGKILL to pid, a child of parent (a process this test
// started), through a pidfd, and only after checking, with the pidfd
// open, that pid is still parent's child: never to a process that got the
// pid of one that has exited.
func killChild(t *testing.T, parent, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil || !strings.Contains(string(b), "\nPPid:\t"+strconv.Itoa(parent)+"\n") {
		t.Fatalf("refusing to kill %d: not a child of %d (%v)", pid, parent, err)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatalf("kill -KILL %d: %v", pid, err)
	}
}

// processState is the state letter in /proc/PID/stat ("Z" for a zombie),
// or "" when the process is gone.
func processState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// TestChaosOldKilledMidDrain: the old process killed with SIGKILL while it
// drains requests in flight. Only those requests can fail (at most one per
// client, as reset or EOF); the successor serves on, releases its link to
// the dead predecessor, and can itself be upgraded.
func TestChaosOldKilledMidDrain(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	args := append(c.DefaultArgs(), "-delay", "200ms")
	old := c.start(t, args...)
	before := c.fds(t, old)
	const clients = 8
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, clients)
	c.Signal(old, syscall.SIGHUP)
	next := c.WaitPID(0, old, 30*time.Second) // old has stopped accepting; its requests are in flight
	c.Signal(old, syscall.SIGKILL)
	if ws := c.WaitExit(old, 30*time.Second); !killedBy(ws) {
		t.Errorf("old process %d exited with %v", old, ws)
	}
	testbed.WaitServing(t, c.Addr, next)
	res := stop()
	t.Logf("load: %v", res)
	if n := res.FailedCount(); n > clients || res.Failures[loadgen.Refused]+res.Failures[loadgen.Timeout]+res.Failures[loadgen.Status]+res.Failures[loadgen.Other] > 0 {
		t.Errorf("%d failed requests (%v); only the <= %d in flight on the killed process may fail, by reset or EOF: %v", n, res.Failures, clients, res.Errors)
	}
	testbed.WaitFDs(t, next, before, 10*time.Second)
	c.stopService(t, c.upgrade(t, next))
}

// TestChaosSuccessorStopped: a successor that holds the sockets and is
// stopped (SIGSTOP) past the ready timeout is given up on; no request
// fails meanwhile. Continued, it learns that it must not serve, and
// exits; a real upgrade then succeeds.
func TestChaosSuccessorStopped(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	old := c.start(t)
	c.setStep(t, "hold")
	before := c.fds(t, old)
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	from := c.LogSize()
	succ := c.StartProgram(c.peer, c.DefaultArgs()...)
	c.WaitLog(from, "holding sockets", 30*time.Second)
	c.Signal(succ, syscall.SIGSTOP)
	c.WaitLog(from, "still serving", 60*time.Second) // httpserver's ready timeout is 10s
	c.Signal(succ, syscall.SIGCONT)
	if ws := c.WaitExit(succ, 30*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("continued successor exited with %v; want 0: Ready refused", ws)
	}
	if pid := c.PID(); pid != old {
		t.Fatalf("pid file says %d, want %d", pid, old)
	}
	testbed.WaitServing(t, c.Addr, old)
	requireNoFailures(t, stop())
	testbed.WaitFDs(t, old, before, 10*time.Second)
	c.stopService(t, c.upgrade(t, old))
}

// TestConcurrentUpgradeRequests: 20 upgrade requests at once on the
// control socket: exactly one proceeds, the other 19 are told "in
// progress", and no request fails.
func TestConcurrentUpgradeRequests(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	old := c.start(t)
	// The successor waits at a gate, so the upgrade stays in flight
	// until every other request has been answered.
	gate := c.Dir + "/gate"
	script := "#!/bin/sh\nwhile [ ! -e '" + gate + "' ]; do sleep 0.01; done\nexec '" + c.good + "' \"$@\"\n"
	if err := os.WriteFile(c.installed+".new", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(c.installed+".new", c.installed); err != nil {
		t.Fatal(err)
	}
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	const n = 20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := make(chan struct{})
	results := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results <- control.Reload(ctx, c.Socket, nil)
		}()
	}
	close(start)
	inProgress := 0
	for range n - 1 {
		if err := <-results; errors.Is(err, handoff.ErrInProgress) {
			inProgress++
		} else {
			t.Errorf("a concurrent request got %v, want ErrInProgress", err)
		}
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil {
		t.Errorf("the request that proceeded failed: %v", err)
	}
	wg.Wait()
	t.Logf("%d requests: 1 upgraded, %d in progress", n, inProgress)
	next := c.WaitPID(0, old, 30*time.Second)
	if ws := c.WaitExit(old, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("old process exited with %v", ws)
	}
	testbed.WaitServing(t, c.Addr, next)
	requireNoFailures(t, stop())
	c.stopService(t, next)
}
