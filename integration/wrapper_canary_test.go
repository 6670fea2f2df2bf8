//go:build linux

package integration_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// TestWrapperCanaryRollback: `handoff run` around examples/activated, an
// unmodified server; a new build installed at the command's path serves
// after a reload and dies within the canary window (10 s): it exits
// 200 ms, 1 s or 5 s after it started, having accepted nothing; the test
// kills it with SIGKILL once it serves alone; or it panics on the first
// connection it accepts. Each time the wrapper starts the previous build
// again at once, from the file it kept open (the path holds the broken
// build by then): under load from clients that never retry, no request
// fails but the one the panicking build had accepted, status says why,
// and no child is left but the one serving again.
func TestWrapperCanaryRollback(t *testing.T) {
	for _, tt := range []struct {
		name  string
		after string // testenv.CrashAfter for the broken build
		kill  bool   // the test kills the broken build once it serves alone
		ended string // how the rollback reason says the broken build ended
		lost  int64  // requests the broken build accepted, lost with it
	}{
		{"exits after 400ms", "400ms", false, "ended (exit status 3)", 0},
		{"exits after 1s", "1s", false, "ended (exit status 3)", 0},
		{"exits after 5s", "5s", false, "ended (exit status 3)", 0},
		{"SIGKILL once serving", "1h", true, "ended (killed by SIGKILL)", 0},
		{"panics on its first connection", testenv.CrashOnFirstConn, false, "ended (exit status 2)", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkNoChildren(t)
			bin := binary(t, "./cmd/handoff")
			s := newService(t, bin)
			app := filepath.Join(s.Dir, "app")
			install(t, binary(t, "./examples/activated"), app)
			broken := builder.BuildTest(t, "./cmd/handoff")
			// The broken build is cmd/handoff's test binary; its role comes
			// from the environment, which the good build ignores.
			s.Env = []string{testenv.Role + "=canary-crash", testenv.CrashAfter + "=" + tt.after}
			wrapper, child := startWrapper(t, s, "-ready", "accepting", "-canary-window", "10s", "--", app)
			testbed.WaitServing(t, s.Addr, child)
			stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)

			install(t, broken, app)
			t0 := time.Now()
			if !tt.kill {
				// `handoff reload -wait-canary` hears of the rollback:
				// exit 1 and the reason.
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				out, err := exec.CommandContext(ctx, bin, "reload", "-wait-canary", "-socket", s.Socket).CombinedOutput()
				cancel()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), tt.ended) {
					t.Fatalf("handoff reload -wait-canary: %v; want exit 1 saying the new build %s, in:\n%s", err, tt.ended, out)
				}
			} else if err := requestReload(s); err != nil {
				t.Fatalf("reload to the new build: %v", err)
			}
			killed := 0
			if tt.kill {
				killed = servingChild(t, s, child)
				killChild(t, wrapper, killed)
			}
			rollback := waitRollback(t, s, 30*time.Second)
			crashed := rolledBackFrom(t, rollback)
			if tt.kill && crashed != killed {
				t.Errorf("rolled back from child %d; want the killed %d", crashed, killed)
			}
			back := servingChild(t, s, child)
			testbed.WaitServing(t, s.Addr, back)
			took := time.Since(t0)
			res := stopLoad()
			t.Logf("load: %v", res)
			if res.FailedCount() > tt.lost || res.OK == 0 {
				t.Errorf("%d failed requests of %d, want at most %d: %v", res.FailedCount(), res.Requests, tt.lost, res.Errors)
			}
			if !strings.Contains(rollback, tt.ended) {
				t.Errorf("rollback reason %q; want the broken build %s", rollback, tt.ended)
			}
			// The child that serves again runs the previous build, which
			// is no longer at the path: its executable is the deleted file.
			exe, err := os.Readlink("/proc/" + strconv.Itoa(back) + "/exe")
			if err != nil || !strings.HasSuffix(exe, "(deleted)") {
				t.Errorf("the rolled-back child runs %q (%v); want the replaced, deleted, previous build", exe, err)
			}
			out, err := exec.Command(bin, "status", "-socket", s.Socket).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "\nrollback:   "+rollback+"\n") || strings.Contains(string(out), "\ncanary:") {
				t.Errorf("handoff status: %v; want the rollback, and no canary window running, in:\n%s", err, out)
			}
			// The broken build's child is reaped: no zombie, no orphan.
			waitGone(t, crashed, 10*time.Second)
			t.Logf("%s: %d requests, %d failed, reload to the previous build serving again %v, slowest request %v; %s",
				tt.name, res.Requests, res.FailedCount(), took.Round(time.Millisecond), res.Latency.Max().Round(time.Millisecond), rollback)
			stopWrapper(t, s, wrapper, back)
		})
	}
}

// waitRollback waits until `handoff status` names a rollback, and
// returns its reason.
func waitRollback(t *testing.T, s *testbed.Service, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, d := wrapperStatus(t, s); d.LastRollback != "" {
			return d.LastRollback
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rollback within %v", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rolledBackFromRE finds the pid of the child a rollback replaced.
var rolledBackFromRE = regexp.MustCompile(`^child pid (\d+) `)

// rolledBackFrom is the pid of the child the rollback reason says ended.
func rolledBackFrom(t *testing.T, reason string) int {
	t.Helper()
	m := rolledBackFromRE.FindStringSubmatch(reason)
	if m == nil {
		t.Fatalf("rollback reason %q names no child pid", reason)
	}
	return mustAtoi(t, m[1])
}
