//go:build linux

package integration_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// The canary window's chains (README, "The canary window"), with
// examples/httpserver and its default window of 10 s.

// canaryWindow is examples/httpserver's window: handoff.DefaultCanaryWindow.
const canaryWindow = handoff.DefaultCanaryWindow

// TestCanarySuccessorUpgradesWithinWindow: A upgrades to B; within A's
// window B upgrades to C. B's handover releases A, which drains and exits
// at once instead of standing by for the rest of its window (C is B's to
// watch now); C dies within B's window, and B, the middle generation,
// takes the service back. Under load from clients that never retry,
// nothing fails.
func TestCanarySuccessorUpgradesWithinWindow(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	a := c.start(t)
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	c.Signal(a, syscall.SIGHUP)
	b := c.WaitPID(0, a, 30*time.Second)
	testbed.WaitServing(t, c.Addr, b)

	from := c.LogSize()
	install(t, c.peer, c.installed)
	c.setStep(t, "ready-then-die 1s")
	t0 := time.Now()
	c.Signal(b, syscall.SIGHUP)
	c.WaitLog(from, "chaos-successor pid", 30*time.Second)
	succ := chaosPID(t, c.LogFrom(from))
	if ws := c.WaitExit(a, canaryWindow); ws.ExitStatus() != 0 {
		t.Errorf("A (pid %d) exited with %v", a, ws)
	}
	released := time.Since(t0)
	if released > canaryWindow/2 {
		t.Errorf("A exited %v after B's upgrade began: it stood by for its window instead of being released by B's handover", released)
	}
	c.WaitLog(from, "rolled back, serving again", 30*time.Second)
	testbed.WaitServing(t, c.Addr, b)
	res := stop()
	t.Logf("A released %v after B's SIGHUP; B rolled back from C (pid %d); %v", released.Round(time.Millisecond), succ, res)
	requireNoFailures(t, res)
	if pid := c.PID(); pid != b {
		t.Fatalf("pid file says %d after B's rollback, want %d", pid, b)
	}
	st := status(t, c.Socket)
	if st.PID != b || st.State != "serving" || st.LastReload == nil || !st.LastReload.RolledBack || !strings.Contains(st.LastReload.Error, strconv.Itoa(succ)) {
		t.Fatalf("status %+v, last reload %+v; want B (pid %d) serving, rolled back from %d", st, st.LastReload, b, succ)
	}
	waitReaped(t, succ)
	c.stopService(t, b)
}

// TestCanaryOldKilledWithinWindow: the old process, standing by in its
// window, is killed with SIGKILL. The successor serves on: it sees its
// predecessor gone, no new connection is refused, and it can be upgraded
// again. (Under systemd the old process is the unit's main process until
// the window ends, so systemd would stop the unit: README says so.)
func TestCanaryOldKilledWithinWindow(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	a := c.start(t)
	from := c.LogSize()
	c.Signal(a, syscall.SIGHUP)
	b := c.WaitPID(0, a, 30*time.Second)
	testbed.WaitServing(t, c.Addr, b)
	if st := status(t, c.Socket); st.PID != b {
		t.Fatalf("the control socket answers for pid %d, want the successor %d", st.PID, b)
	}
	stop := testbed.RunLoad(c.Addr, loadgen.NewConn, 8)
	c.Signal(a, syscall.SIGKILL) // the first process, which this test started
	if ws := c.WaitExit(a, 30*time.Second); !killedBy(ws) {
		t.Fatalf("A (pid %d) ended with %v, want SIGKILL", a, ws)
	}
	c.WaitLog(from, "predecessor exited", 30*time.Second)
	testbed.WaitServing(t, c.Addr, b)
	if st := status(t, c.Socket); st.PID != b || st.State != "serving" {
		t.Fatalf("status %+v; want B (pid %d) serving", st, b)
	}
	// B upgrades as usual, under the same load: it has no predecessor to
	// wait for.
	c.Signal(b, syscall.SIGHUP)
	next := c.WaitPID(0, b, 30*time.Second)
	testbed.WaitServing(t, c.Addr, next)
	requireNoFailures(t, stop())
	c.stopService(t, next)
	if ws := c.WaitExit(b, 30*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("B (pid %d) exited with %v", b, ws)
	}
}

// TestCanarySuccessorCrashesAfterWindow: a successor that lasts the
// window has proven itself; the old process drains and exits, and a crash
// after that is not rolled back: nothing is left to take the service
// back, so connections are refused until a supervisor (systemd's
// Restart=, or `handoff run`) starts the service again, as README says.
func TestCanarySuccessorCrashesAfterWindow(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	a := c.start(t)
	from := c.LogSize()
	install(t, c.peer, c.installed)
	die := canaryWindow + 2*time.Second
	c.setStep(t, "ready-then-die "+die.String())
	c.Signal(a, syscall.SIGHUP)
	c.WaitLog(from, "chaos-successor pid", 30*time.Second)
	succ := chaosPID(t, c.LogFrom(from))
	c.WaitLog(from, "successor is ready", 30*time.Second)
	ready := time.Now()
	if ws := c.WaitExit(a, canaryWindow+30*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("A (pid %d) exited with %v", a, ws)
	}
	if took := time.Since(ready); took < canaryWindow-time.Second {
		t.Errorf("A exited %v after the successor was ready, before its %v window passed", took, canaryWindow)
	}
	c.WaitLog(from, "successor proved itself", time.Second)
	if ws := c.WaitExit(succ, die+30*time.Second); !killedBy(ws) {
		t.Errorf("successor %d ended with %v, want its own SIGKILL (the crash)", succ, ws)
	}
	if strings.Contains(string(c.LogFrom(from)), "rolled back") {
		t.Fatalf("a rollback after the window:\n%s", c.LogFrom(from))
	}
	conn, err := net.DialTimeout("tcp", c.Addr, 5*time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("a connection was accepted after the proven successor died; want refused")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after the successor died: %v, want connection refused", err)
	}
}

// status asks the process serving socket for its Status.
func status(t *testing.T, socket string) handoff.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := control.Status(ctx, socket)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}
