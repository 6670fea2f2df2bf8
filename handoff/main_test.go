package handoff

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
	"github.com/handoffd/handoff/internal/testenv"
)

// The test binary doubles as the peer process: a test sets
// HANDOFF_TEST_HELPER to a role and starts this binary again (or lets
// Upgrade do it); TestMain then runs that role instead of the tests.
const envHelper = testenv.Helper

var helpers = map[string]func() error{}

// registerHelper makes fn runnable as a helper process role.
func registerHelper(role string, fn func() error) {
	helpers[role] = fn
}

func TestMain(m *testing.M) {
	if role := os.Getenv(envHelper); role != "" {
		fn, ok := helpers[role]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper role %q\n", role)
			os.Exit(2)
		}
		if err := fn(); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testLogger logs to the test output when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// socketDir returns a short private directory (unix socket paths must
// fit in 107 bytes, which t.TempDir's do not always).
func socketDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "hof")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testConfig is a Config with a private control socket and short
// timeouts, without a canary window (canary_linux_test.go sets one).
func testConfig(t testing.TB) Config {
	return Config{
		Name:         "test",
		Socket:       filepath.Join(socketDir(t), "ctl.sock"),
		ReadyTimeout: 5 * time.Second,
		StepTimeout:  2 * time.Second,
		CanaryWindow: -1,
		Logger:       testLogger(t),
	}
}

// waitBound bounds every wait in these tests: long enough for a loaded
// machine under -race, short enough that a test that hangs fails well
// before go test's -timeout and says what it waited for.
const waitBound = 10 * time.Second

// waitFor polls cond until it holds, failing the test after waitBound
// with what it waited for. It waits on observable state, never on time
// alone.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !eventually(waitBound, cond) {
		t.Fatalf("timed out after %v waiting for %s", waitBound, what)
	}
}

// eventually polls cond every millisecond until it holds or within has
// passed, and reports whether it held. Tests call waitFor; eventually is
// for a caller that writes its own report (checkLeaks).
func eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// recvWithin receives from ch, failing the test after waitBound with
// what it waited for. A closed channel yields T's zero value, so it also
// waits for a channel to be closed (Exit, a done channel).
func recvWithin[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(waitBound)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", waitBound, what)
		panic("unreachable")
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	n, err := procfs.OpenFDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return n - 1 // the directory being read
}

// checkLeaks fails the test if, once its cleanups have run, it left more
// descriptors or goroutines than it found. Register it first, so that its
// cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	fds, goroutines := openFDs(t), runtime.NumGoroutine()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		var nowFDs, nowG int
		if !eventually(5*time.Second, func() bool {
			nowFDs, nowG = openFDs(t), runtime.NumGoroutine()
			return nowFDs <= fds && nowG <= goroutines
		}) {
			buf := make([]byte, 1<<20)
			t.Fatalf("leak: %d fds (was %d), %d goroutines (was %d)\n%s", nowFDs, fds, nowG, goroutines, buf[:runtime.Stack(buf, true)])
		}
	})
}

// readyUpgrader is newUpgrader with one loopback TCP listener, ready.
func readyUpgrader(t testing.TB, cfg Config) (*Upgrader, net.Listener) {
	t.Helper()
	u := newUpgrader(t, cfg)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	return u, ln
}

// newUpgrader is New that fails the test on error and closes at cleanup.
func newUpgrader(t testing.TB, cfg Config) *Upgrader {
	t.Helper()
	u, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}
