//go:build linux

package integration_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// TestCanaryRollbackUnderLoad: examples/httpserver (default canary
// window, 10 s) upgraded by SIGHUP, under load from clients that never
// retry, to builds that die within the window: 200 ms, 1 s and 5 s after
// ready, killed with SIGKILL by the test, or panicking on their first
// connection. Each time the old process serves again on the same sockets:
// no connection refused, nothing queued lost (only the one connection the
// panicking build had accepted is cut), its pid in the pid file, the
// reason in Status, no descriptor leaked, the successor reaped; and a
// good build then upgrades at once.
func TestCanaryRollbackUnderLoad(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	old := c.start(t)
	before := c.fds(t, old)
	for _, step := range []string{"ready-then-die 200ms", "ready-then-die 1s", "ready-then-die 5s", "killed", "ready-then-panic"} {
		from := c.LogSize()
		if step == "killed" {
			c.setStep(t, "ready-then-die 1h")
		} else {
			c.setStep(t, step)
		}
		install(t, c.peer, c.installed)
		stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
		t0 := time.Now()
		c.Signal(old, syscall.SIGHUP)
		c.WaitLog(from, "chaos-successor pid", 30*time.Second)
		succ := chaosPID(t, c.LogFrom(from))
		if step == "killed" {
			c.WaitLog(from, "successor is ready", 30*time.Second)
			t.Logf("during the window: old process %s, successor %s", vmRSS(old), vmRSS(succ))
			syscall.Kill(succ, syscall.SIGKILL) // a child of old, which this test started: no one else's
		}
		c.WaitLog(from, "rolled back, serving again", 30*time.Second)
		took := time.Since(t0)
		testbed.WaitServing(t, c.Addr, old)
		res := stop()
		t.Logf("%s: rolled back %v after SIGHUP; %v", step, took.Round(time.Millisecond), res)
		if step == "ready-then-panic" {
			if res.FailedCount() > 1 {
				t.Errorf("%s: %d requests failed; want at most the one the build panicked on", step, res.FailedCount())
			}
		} else {
			requireNoFailures(t, res)
		}
		if pid := c.PID(); pid != old {
			t.Fatalf("%s: pid file says %d after the rollback, want %d", step, pid, old)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := control.Status(ctx, c.Socket)
		cancel()
		if err != nil {
			t.Fatalf("%s: status: %v", step, err)
		}
		if st.PID != old || st.State != "serving" || st.LastReload == nil || !st.LastReload.RolledBack || !strings.Contains(st.LastReload.Error, strconv.Itoa(succ)) {
			t.Fatalf("%s: status %+v, last reload %+v; want pid %d serving, rolled back from %d", step, st, st.LastReload, old, succ)
		}
		t.Logf("%s: %s", step, st.LastReload.Error)
		if !strings.Contains(st.LastReload.Error, "killed by SIGKILL") && !strings.Contains(st.LastReload.Error, "exit status 2") {
			t.Errorf("%s: the reason does not say how the successor ended: %s", step, st.LastReload.Error)
		}
		waitReaped(t, succ)
		testbed.WaitFDs(t, old, before, 10*time.Second)
	}
	c.stopService(t, c.upgrade(t, old))
}

// waitReaped waits until pid, a child of the old process, is gone: the
// old process reaped it, leaving no zombie.
func waitReaped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("successor %d not reaped within 30s (state %s)", pid, processState(pid))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// vmRSS is process pid's resident set size, as /proc says it.
func vmRSS(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return "RSS " + strings.TrimSpace(v)
		}
	}
	return "RSS unknown"
}

// chaosPID is the pid in the latest "chaos-successor pid N" line of log.
func chaosPID(t *testing.T, log []byte) int {
	t.Helper()
	s := string(log)
	i := strings.LastIndex(s, "chaos-successor pid ")
	if i < 0 {
		t.Fatalf("no chaos-successor line in\n%s", log)
	}
	f := strings.Fields(s[i+len("chaos-successor pid "):])
	pid, err := strconv.Atoi(strings.TrimSuffix(f[0], ":"))
	if err != nil {
		t.Fatalf("chaos-successor line %q: %v", s[i:], err)
	}
	return pid
}
