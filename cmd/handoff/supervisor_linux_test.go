//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The supervisor's tests run real children (the test binary in a helper
// role, forked by a real spawner) behind fakes of the Upgrader and of the
// readiness check, so that each transition can be driven on purpose.

func init() {
	helpers["serve"] = func() int { // runs until a signal ends it
		select {}
	}
	helpers["exit2"] = func() int { return 2 }
}

// fakeUpgrader records what the supervisor asks of the Upgrader.
type fakeUpgrader struct {
	readyErr error
	exit     chan struct{}

	mu       sync.Mutex
	readied  int
	stopped  int
	statuses []string
}

func newFakeUpgrader() *fakeUpgrader { return &fakeUpgrader{exit: make(chan struct{})} }

func (u *fakeUpgrader) Ready() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.readied++
	return u.readyErr
}

func (u *fakeUpgrader) Exit() <-chan struct{} { return u.exit }

func (u *fakeUpgrader) Stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stopped++
}

func (u *fakeUpgrader) SetStatus(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.statuses = append(u.statuses, s)
}

// scriptedReady is ready at once for the children numbered in ready;
// any other child is never ready: it waits for the child to exit or for
// ctx, as readiness.wait does.
type scriptedReady map[int]bool

func (r scriptedReady) wait(ctx context.Context, c *child) error {
	if r[c.number] {
		return nil
	}
	select {
	case <-c.done:
		return errExited
	case <-ctx.Done():
		return ctx.Err()
	}
}

// roleStarter starts the test binary in roles[i] for the i-th start, and
// fails a start whose role is "". It records the executable each start
// was given.
type roleStarter struct {
	sp    *spawner
	self  string
	mu    sync.Mutex
	roles []string
	exes  []*os.File
}

func (r *roleStarter) start(exe *os.File, argv, env []string, files []uintptr) (int, error) {
	r.mu.Lock()
	role := "serve"
	if len(r.roles) > 0 {
		role, r.roles = r.roles[0], r.roles[1:]
	}
	r.exes = append(r.exes, exe)
	r.mu.Unlock()
	if role == "" {
		return 0, errors.New("no such file")
	}
	return r.sp.start(exe, []string{r.self}, append(env, envHelper+"="+role), files)
}

// testSupervisor is a running supervisor whose children play roles; it is
// stopped, and every child reaped, at cleanup.
type testSupervisor struct {
	*supervisor
	upg    *fakeUpgrader
	cancel context.CancelFunc
	done   chan error
}

func startSupervisor(t *testing.T, cfg runConfig, ready scriptedReady, roles ...string) *testSupervisor {
	t.Helper()
	return startSupervisorWith(t, newWrapperSockets(modeShared, false, slog.New(slog.DiscardHandler)), cfg, ready, roles...)
}

// startSupervisorWith is startSupervisor for children with sockets.
func startSupervisorWith(t *testing.T, sockets *wrapperSockets, cfg runConfig, ready scriptedReady, roles ...string) *testSupervisor {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.readyTimeout == 0 {
		cfg.readyTimeout = 10 * time.Second
	}
	cfg.drainTimeout = 5 * time.Second
	cfg.stopSignal = syscall.SIGTERM
	cfg.path, cfg.argv = self, []string{self}
	sp := newTestSpawner(t)
	ts := &testSupervisor{supervisor: newSupervisor(cfg), upg: newFakeUpgrader(), done: make(chan error, 1)}
	var ctx context.Context
	ctx, ts.cancel = context.WithCancel(context.Background())
	deps := supervisorDeps{
		log: slog.New(slog.DiscardHandler), upg: ts.upg, ready: ready,
		spawn: &roleStarter{sp: sp, self: self, roles: roles}, env: os.Environ(), forget: func(int) {},
		sockets: sockets,
	}
	go func() { ts.done <- ts.run(ctx, deps) }()
	t.Cleanup(func() {
		ts.cancel()
		ts.wait(t)
	})
	return ts
}

// wait returns what run returned.
func (ts *testSupervisor) wait(t *testing.T) error {
	t.Helper()
	err := recv(t, "the supervisor to return", ts.done)
	ts.done <- err // for the cleanup's wait
	return err
}

// serving waits until the supervisor serves with child number n, and
// returns it.
func (ts *testSupervisor) serving(t *testing.T, n int) *child {
	t.Helper()
	var c *child
	waitUntil(t, fmt.Sprintf("child number %d serves", n), func() bool {
		c = ts.currentChild()
		return c != nil && c.number == n
	})
	return c
}

func (ts *testSupervisor) reload(t *testing.T) ([]string, error) {
	t.Helper()
	return ts.reloadWaiting(t, false)
}

// reloadWaiting is reload, waiting for the canary window's end if proven.
func (ts *testSupervisor) reloadWaiting(t *testing.T, proven bool) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var progress []string
	err := ts.requestReload(ctx, func(s string) { progress = append(progress, s) }, proven)
	return progress, err
}

// TestSupervisorReloadReplaces: the new child serves once ready, and only
// then is the old one stopped with the stop signal and reaped.
func TestSupervisorReloadReplaces(t *testing.T) {
	ts := startSupervisor(t, runConfig{}, scriptedReady{1: true, 2: true})
	first := ts.serving(t, 1)
	progress, err := ts.reload(t)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !first.exited() || first.describe() != "killed by SIGTERM" {
		t.Fatalf("old child after the reload: exited %v, %s; want killed by SIGTERM", first.exited(), first.describe())
	}
	second := ts.serving(t, 2)
	if second.exited() {
		t.Fatalf("the new child exited: %s", second.describe())
	}
	if last := progress[len(progress)-1]; !strings.Contains(last, "serves") {
		t.Fatalf("last progress line %q; want it to say who serves (all: %q)", last, progress)
	}
	d := ts.detail().(statusDetail)
	if len(d.Children) != 1 || d.Children[0].PID != second.pid || d.Children[0].Role != "serving" {
		t.Fatalf("status children %+v; want only pid %d serving", d.Children, second.pid)
	}
}

// TestSupervisorReloadRollsBack: a new child that exits before it is
// ready, or is not ready in time, or cannot start, is gone afterwards,
// and the old child serves on, untouched.
func TestSupervisorReloadRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name, role, want string
		timeout          time.Duration
	}{
		{"exits", "exit2", "exited before it was ready (exit status 2)", 0},
		{"not ready", "serve", "was not ready within 300ms", 300 * time.Millisecond},
		{"cannot start", "", "no such file", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startSupervisor(t, runConfig{readyTimeout: tc.timeout}, scriptedReady{1: true}, "serve", tc.role, "exit2")
			first := ts.serving(t, 1)
			_, err := ts.reload(t)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reload error %v; want it to say %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), fmt.Sprintf("pid %d keeps serving", first.pid)) {
				t.Fatalf("reload error %v; want it to say rolled back, and that pid %d keeps serving", err, first.pid)
			}
			if c := ts.currentChild(); c != first || first.exited() {
				t.Fatalf("after the failed reload: current %v, first exited %v; want the first serving", c, first.exited())
			}
			d := ts.detail().(statusDetail)
			if len(d.Children) != 1 || d.Children[0].PID != first.pid {
				t.Fatalf("status children %+v; want only pid %d", d.Children, first.pid)
			}
			// A failed reload leaves nothing in the way of the next one.
			if _, err := ts.reload(t); err == nil || !strings.Contains(err.Error(), "rolled back: child pid") {
				t.Fatalf("second reload: %v; want it tried, and rolled back", err)
			}
		})
	}
}

// TestSupervisorRestartsCrashedChild: a serving child that exits on its
// own is restarted after the backoff, and counted.
func TestSupervisorRestartsCrashedChild(t *testing.T) {
	ts := startSupervisor(t, runConfig{}, scriptedReady{1: true}, "exit2", "serve")
	second := ts.serving(t, 2)
	if second.exited() {
		t.Fatalf("the restarted child exited: %s", second.describe())
	}
	if d := ts.detail().(statusDetail); d.Restarts != 1 {
		t.Fatalf("restarts = %d, want 1", d.Restarts)
	}
	if last := ts.lastChild(); last == nil || last.number != 1 || last.describe() != "exit status 2" {
		t.Fatalf("last ended child %+v; want number 1, exit status 2", last)
	}
}

// TestSupervisorStops: the end of ctx stops the upgrader first (no reload
// or takeover from then on), then the child; run returns nil, and a
// reload asked afterwards is told the wrapper is stopping.
func TestSupervisorStops(t *testing.T) {
	ts := startSupervisor(t, runConfig{}, scriptedReady{1: true})
	first := ts.serving(t, 1)
	ts.cancel()
	if err := ts.wait(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if !first.exited() || first.exitCode(syscall.SIGTERM) != 0 {
		t.Fatalf("child after stop: exited %v, %s", first.exited(), first.describe())
	}
	ts.upg.mu.Lock()
	stopped := ts.upg.stopped
	ts.upg.mu.Unlock()
	if stopped != 1 {
		t.Fatalf("Upgrader.Stop called %d times, want 1", stopped)
	}
	if _, err := ts.reload(t); err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("reload after stop: %v; want 'the wrapper is stopping'", err)
	}
}

// TestSupervisorTakenOver: when a new wrapper takes over, the child is
// stopped and run returns nil without stopping the Upgrader.
func TestSupervisorTakenOver(t *testing.T) {
	ts := startSupervisor(t, runConfig{}, scriptedReady{1: true})
	first := ts.serving(t, 1)
	close(ts.upg.exit)
	if err := ts.wait(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if !first.exited() {
		t.Fatal("the child still runs after the takeover")
	}
	if ts.upg.stopped != 0 {
		t.Fatal("Upgrader.Stop called on a takeover")
	}
}

// TestSupervisorFirstChildFails: a first child that is never ready, or
// an Upgrader that cannot become ready, ends run with the reason, and no
// child is left.
func TestSupervisorFirstChildFails(t *testing.T) {
	t.Run("exits", func(t *testing.T) {
		ts := startSupervisor(t, runConfig{}, scriptedReady{}, "exit2")
		err := ts.wait(t)
		if err == nil || !strings.Contains(err.Error(), "exited before it was ready (exit status 2)") {
			t.Fatalf("run: %v", err)
		}
	})
	t.Run("upgrader refuses", func(t *testing.T) {
		self, _ := os.Executable()
		sp := newTestSpawner(t)
		sup := newSupervisor(runConfig{readyTimeout: 10 * time.Second, drainTimeout: 5 * time.Second,
			stopSignal: syscall.SIGTERM, path: self, argv: []string{self}})
		upg := newFakeUpgrader()
		upg.readyErr = errors.New("another instance")
		var started *child
		ready := readyFunc(func(ctx context.Context, c *child) error { started = c; return nil })
		err := sup.run(context.Background(), supervisorDeps{log: slog.New(slog.DiscardHandler), upg: upg, ready: ready,
			spawn: &roleStarter{sp: sp, self: self}, env: os.Environ(), forget: func(int) {},
			sockets: newWrapperSockets(modeShared, false, slog.New(slog.DiscardHandler))})
		if err == nil || err.Error() != "another instance" {
			t.Fatalf("run: %v", err)
		}
		if started == nil || !started.exited() {
			t.Fatal("the child was left running")
		}
	})
}

// readyFunc is a readiness check as a function.
type readyFunc func(ctx context.Context, c *child) error

func (f readyFunc) wait(ctx context.Context, c *child) error { return f(ctx, c) }

// TestSupervisorCanaryRollback: a new child that a reload made serve and
// that exits within the canary window is replaced at once, without the
// crash backoff, by a child of the previous executable: the very file
// the replaced child ran, kept open, whatever is on disk by then.
func TestSupervisorCanaryRollback(t *testing.T) {
	ts := startSupervisor(t, runConfig{canaryWindow: 10 * time.Second}, scriptedReady{1: true, 2: true, 3: true}, "serve", "exit2", "serve")
	ts.serving(t, 1)
	if _, err := ts.reload(t); err != nil {
		t.Fatalf("reload: %v", err)
	}
	third := ts.serving(t, 3)
	if third.exited() {
		t.Fatalf("the rolled-back child exited: %s", third.describe())
	}
	st := ts.spawn.(*roleStarter)
	st.mu.Lock()
	exes := append([]*os.File(nil), st.exes...)
	st.mu.Unlock()
	if len(exes) != 3 || exes[2] != exes[0] {
		t.Fatalf("child 3 started from %v; want the executable child 1 ran (%v)", exes[len(exes)-1], exes[0])
	}
	d := ts.detail().(statusDetail)
	if !strings.Contains(d.LastRollback, "ended (exit status 2)") || !strings.Contains(d.LastRollback, "executable of child 1") {
		t.Fatalf("last rollback %q; want it to say child 2 ended with exit status 2 and child 1's executable runs", d.LastRollback)
	}
	if d.Restarts != 0 || !d.CanaryUntil.IsZero() {
		t.Fatalf("restarts %d, canary until %v; want a rollback, not a crash restart, and no window left", d.Restarts, d.CanaryUntil)
	}
}

// TestSupervisorReloadWaitsForCanary: a reload that waits for the canary
// window (`handoff reload -wait-canary`) answers with the rollback's
// reason when the new child dies within it, and with success once a new
// child has lasted it.
func TestSupervisorReloadWaitsForCanary(t *testing.T) {
	t.Run("rolled back", func(t *testing.T) {
		ts := startSupervisor(t, runConfig{canaryWindow: 10 * time.Second}, scriptedReady{1: true, 2: true, 3: true}, "serve", "exit2", "serve")
		ts.serving(t, 1)
		progress, err := ts.reloadWaiting(t, true)
		if err == nil || !strings.Contains(err.Error(), "ended (exit status 2)") || !strings.Contains(err.Error(), "executable of child 1") {
			t.Fatalf("reload = %v (progress %q); want the rollback's reason", err, progress)
		}
		ts.serving(t, 3)
	})
	t.Run("proven", func(t *testing.T) {
		const window = 300 * time.Millisecond
		ts := startSupervisor(t, runConfig{canaryWindow: window}, scriptedReady{1: true, 2: true}, "serve", "serve")
		ts.serving(t, 1)
		t0 := time.Now()
		progress, err := ts.reloadWaiting(t, true)
		if err != nil {
			t.Fatalf("reload = %v (progress %q); want success once the window passed", err, progress)
		}
		if took := time.Since(t0); took < window {
			t.Fatalf("answered after %v, before the %v window passed", took, window)
		}
		if d := ts.detail().(statusDetail); !d.CanaryUntil.IsZero() {
			t.Fatalf("answered with the window still open (until %v)", d.CanaryUntil)
		}
		ts.serving(t, 2)
	})
}

// TestSupervisorCanaryPasses: once the window has passed, a child that
// exits is restarted from the path, after the backoff, as any crash.
func TestSupervisorCanaryPasses(t *testing.T) {
	ts := startSupervisor(t, runConfig{canaryWindow: 200 * time.Millisecond}, scriptedReady{1: true, 2: true, 3: true}, "serve", "serve", "serve")
	ts.serving(t, 1)
	if _, err := ts.reload(t); err != nil {
		t.Fatalf("reload: %v", err)
	}
	second := ts.serving(t, 2)
	if d := ts.detail().(statusDetail); d.CanaryUntil.IsZero() {
		t.Fatal("no canary window after the reload")
	}
	waitUntil(t, "the canary window to end", func() bool { return ts.detail().(statusDetail).CanaryUntil.IsZero() })
	if err := second.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ts.serving(t, 3)
	d := ts.detail().(statusDetail)
	if d.Restarts != 1 || d.LastRollback != "" {
		t.Fatalf("restarts %d, last rollback %q; want a crash restart", d.Restarts, d.LastRollback)
	}
	st := ts.spawn.(*roleStarter)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.exes[2] == st.exes[0] || st.exes[2] == st.exes[1] {
		t.Fatal("the crash restart reused a kept executable instead of the path")
	}
}

// TestSupervisorDrainsBeforeStop: with a socket per generation, a reload
// sends new connections to the new child at once, and sends the old
// child its stop signal only once nothing waits in its queue: here the
// old child never accepts, so the test takes its queue itself, and only
// then does the reload finish.
func TestSupervisorDrainsBeforeStop(t *testing.T) {
	w := testGroupSockets(t, "tcp", false)
	ts := startSupervisorWith(t, w, runConfig{}, scriptedReady{1: true, 2: true})
	first := ts.serving(t, 1)
	addr := w.socks[0].addr.String()
	for range 3 { // queued for the first child, which does not accept
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	oldSock := first.gen.fds[0]
	waitUntil(t, "3 connections queue for the first child", func() bool { n, _ := w.socks[0].group.queued(oldSock); return n == 3 })
	done := make(chan error, 1)
	go func() { _, err := ts.reload(t); done <- err }()
	// Once steered, a new connection goes to the second child's socket.
	var second *child
	waitUntil(t, "the second child serves", func() bool {
		c := ts.currentChild()
		if c != nil && c.number == 2 {
			second = c
		}
		return second != nil
	})
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitUntil(t, "the new connection queues for the second child", func() bool { n, _ := w.socks[0].group.queued(second.gen.fds[0]); return n == 1 })
	select {
	case <-first.done:
		t.Fatalf("the first child was stopped (%s) with 3 connections in its queue", first.describe())
	case err := <-done:
		t.Fatalf("the reload finished (%v) with 3 connections in the old queue", err)
	case <-time.After(300 * time.Millisecond): // long enough for a wrong stop to show
	}
	unix.SetNonblock(oldSock, true)
	for range 3 {
		fd, _, err := unix.Accept4(oldSock, unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	if err := recv(t, "the reload", done); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !first.exited() || first.describe() != "killed by SIGTERM" {
		t.Fatalf("old child after the reload: %s; want killed by SIGTERM", first.describe())
	}
}

// TestSupervisorFirstChildStarting: while the first child is not ready
// yet, the status lists it as starting, with the executable it runs (the
// test binary, a Go program: its build is known).
func TestSupervisorFirstChildStarting(t *testing.T) {
	ts := startSupervisor(t, runConfig{}, scriptedReady{}) // never ready
	var d statusDetail
	waitUntil(t, "the first child listed as starting", func() bool {
		d = ts.detail().(statusDetail)
		return len(d.Children) == 1 && d.Children[0].Role == "starting"
	})
	c := d.Children[0]
	if c.Number != 1 || c.PID == 0 || c.Exe == nil || c.Exe.Path != ts.cfg.path || c.Exe.Size == 0 || c.Exe.Build == nil {
		t.Fatalf("starting child %+v, exe %+v; want child 1 running %s, with its Go build", c, c.Exe, ts.cfg.path)
	}
}
