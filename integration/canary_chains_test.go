//go:build linux

package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
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

// TestCanaryTakeoverDiesWithinWindow: B, a process A did not start (the
// handoff test binary as chaos-successor, started by the test on the
// service's control socket: a takeover through New), takes A's sockets
// and says ready; within A's canary window B dies, killed with SIGKILL by
// the test or crashing by itself. A, which cannot reap a process that is
// not its child, sees the link break and rolls back: it serves again on
// the same sockets under load from clients that never retry (B listened
// without accepting, so nothing was B's to lose), the pid file and
// Status name A with the reason, `handoff status` prints it, A has no
// descriptor more than before, and a takeover by a good build then works
// at once.
func TestCanaryTakeoverDiesWithinWindow(t *testing.T) {
	cli := binary(t, "./cmd/handoff")
	for _, tt := range []struct {
		name string
		step string // B's chaos step
		kill bool   // the test kills B once it is ready
		by   syscall.Signal
		says string // in the rollback's reason
	}{
		{"killed", "ready-then-die 1h", true, syscall.SIGKILL, "exited"},
		{"crashes", "ready-then-die 500ms", false, syscall.SIGKILL, "exited"},
		// B breaks the link but runs on: A, which cannot wait for a
		// process it did not start, tells by B's pidfd, and stops it.
		{"drops the link, runs on", "ready-then-drop-link", false, syscall.SIGTERM, "was sent SIGTERM"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkNoChildren(t)
			c := newChaosService(t)
			a := c.start(t)
			before := c.fds(t, a)
			c.setStep(t, tt.step)
			stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
			from := c.LogSize()
			b := c.StartProgram(c.peer, c.DefaultArgs()...)
			c.WaitLog(from, "successor is ready", 30*time.Second)
			if tt.kill {
				c.Signal(b, syscall.SIGKILL)
			}
			if ws := c.WaitExit(b, 30*time.Second); !ws.Signaled() || ws.Signal() != tt.by {
				t.Fatalf("B (pid %d) ended with %v, want %v", b, ws, tt.by)
			}
			if log := c.waitServesAgain(t, from, a); !strings.Contains(log, "rolled back, serving again") {
				t.Fatalf("A did not roll back:\n%s", log)
			}
			testbed.WaitServing(t, c.Addr, a)
			res := stop()
			requireNoFailures(t, res)
			if pid := c.PID(); pid != a {
				t.Fatalf("pid file says %d after the rollback, want A (pid %d)", pid, a)
			}
			st := status(t, c.Socket)
			if st.PID != a || st.State != "serving" || st.LastReload == nil || !st.LastReload.RolledBack ||
				st.LastReload.Successor != b || !strings.Contains(st.LastReload.Error, "pid "+strconv.Itoa(b)) || !strings.Contains(st.LastReload.Error, tt.says) {
				t.Fatalf("status %+v, last reload %+v; want A (pid %d) serving, rolled back from B (pid %d)", st, st.LastReload, a, b)
			}
			t.Logf("%s: %s", tt.name, st.LastReload.Error)
			out, err := exec.Command(cli, "status", "-socket", c.Socket).CombinedOutput()
			for _, want := range []string{fmt.Sprintf("process:    pid %d (embeds the handoff library), generation 1, serving", a), st.LastReload.Error} {
				if err != nil || !strings.Contains(string(out), want) {
					t.Fatalf("handoff status: %v; want %q in:\n%s", err, want, out)
				}
			}
			testbed.WaitFDs(t, a, before, 10*time.Second)
			// The same takeover, by a good build, works at once; its stop
			// releases A from the window.
			stop = testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
			good := c.StartProgram(c.good, c.DefaultArgs()...)
			c.WaitPID(good, a, 30*time.Second)
			testbed.WaitServing(t, c.Addr, good)
			requireNoFailures(t, stop())
			c.standing = a
			c.stopService(t, good)
		})
	}
}

// TestCanaryTakeoverProvenAfterWindow: B, a good examples/httpserver that
// A did not start, takes over from A (canary window 2 s) on the control
// socket and lives through the window. A exits 0 when the window ends,
// not before; under load from clients that never retry nothing fails; B
// then serves alone: the pid file, Status and every answer name B, and B
// holds no more descriptors than A did when it served alone (the link to
// A is closed). B stops cleanly.
func TestCanaryTakeoverProvenAfterWindow(t *testing.T) {
	const window = 2 * time.Second
	checkNoChildren(t)
	c := newChaosService(t)
	a := c.start(t, append(c.DefaultArgs(), "-canary-window", window.String())...)
	alone := c.fds(t, a)
	stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
	from := c.LogSize()
	t0 := time.Now()
	b := c.StartProgram(c.good, c.DefaultArgs()...)
	c.WaitPID(b, a, 30*time.Second)
	testbed.WaitServing(t, c.Addr, b)
	if ws := c.WaitExit(a, window+30*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("A (pid %d) exited with %v", a, ws)
	}
	took := time.Since(t0)
	if took < window {
		t.Errorf("A exited %v after B started, before its %v window passed", took, window)
	}
	c.WaitLog(from, "successor proved itself", time.Second)
	if log := c.LogFrom(from); strings.Contains(string(log), "rolled back") {
		t.Fatalf("a rollback with B alive:\n%s", log)
	}
	testbed.WaitServing(t, c.Addr, b)
	res := stop()
	t.Logf("A exited %v after B started (window %v); %v", took.Round(time.Millisecond), window, res)
	requireNoFailures(t, res)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r := loadgen.Run(ctx, loadgen.Config{Addr: c.Addr, Mode: loadgen.NewConn, Workers: 2, MaxRequests: 50}); r.OK != 50 || r.PIDs[b] != 50 {
		t.Fatalf("after A exited: %v, by pid %v; want all 50 answered by B (pid %d)", r, r.PIDs, b)
	}
	if pid := c.PID(); pid != b {
		t.Fatalf("pid file says %d, want B (pid %d)", pid, b)
	}
	if st := status(t, c.Socket); st.PID != b || st.State != "serving" {
		t.Fatalf("status %+v; want B (pid %d) serving", st, b)
	}
	testbed.WaitFDs(t, b, alone, 10*time.Second)
	c.stopService(t, b)
}
