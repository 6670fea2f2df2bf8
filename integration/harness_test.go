// Package integration builds the real binaries and drives them with real
// processes, real sockets and real load. Load goes to loopback only.
package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"golang.org/x/sys/unix"
)

// The test binary doubles as a broken successor: with HANDOFF_TEST_HELPER
// set, TestMain runs that role instead of the tests.
const envHelper = "HANDOFF_TEST_HELPER"

var (
	binDir string
	reap   *reaper
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envHelper); role != "" {
		runHelper(role)
		return
	}
	// Every generation of server is a descendant of this process; as a
	// subreaper it inherits the orphans, can reap them, and can tell
	// that none is left behind.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "prctl(PR_SET_CHILD_SUBREAPER):", err)
		os.Exit(1)
	}
	reap = startReaper()
	dir, err := os.MkdirTemp("", "handoff-it")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var builds sync.Map // package path → *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// binary builds the main package pkg (relative to the module root) once,
// with the race detector, and returns the executable's path.
func binary(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(pkg, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-race", "-o", b.path, pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// reaper reaps the processes the tests watch: the ones they start and the
// orphans they inherit as subreaper. It never waits for any child (-1),
// which would steal the exit status of commands run with os/exec.
type reaper struct {
	mu      sync.Mutex
	watched map[int]bool
	exited  map[int]syscall.WaitStatus
	changed chan struct{}
	kick    chan struct{}
}

func startReaper() *reaper {
	r := &reaper{watched: map[int]bool{}, exited: map[int]syscall.WaitStatus{}, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGCHLD)
	go func() {
		for {
			r.reapWatched()
			select {
			case <-sigc:
			case <-r.kick:
			}
		}
	}()
	return r
}

// watch makes the reaper reap pid, which must be a child of this process
// by now or later (an orphan it inherits).
func (r *reaper) watch(pid int) {
	r.mu.Lock()
	if _, done := r.exited[pid]; !done {
		r.watched[pid] = true
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *reaper) reapWatched() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid := range r.watched {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got != pid || err != nil {
			continue // still running, or not (yet) our child
		}
		delete(r.watched, pid)
		r.exited[pid] = ws
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// wait waits until pid, which it watches from now on, has exited and been
// reaped.
func (r *reaper) wait(pid int, timeout time.Duration) (syscall.WaitStatus, bool) {
	r.watch(pid)
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		ws, ok := r.exited[pid]
		changed := r.changed
		r.mu.Unlock()
		if ok {
			return ws, true
		}
		select {
		case <-changed:
		case <-deadline:
			return 0, false
		}
	}
}

// children lists this process's children that are still running or not
// yet reaped.
func children() []int {
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var pids []int
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(s)
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

// checkNoChildren fails t if a process it started is still around once
// its cleanups have run (register it first). Leftovers are killed.
func checkNoChildren(t *testing.T) {
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			kids := children()
			if len(kids) == 0 {
				return
			}
			for _, pid := range kids {
				reap.watch(pid) // a zombie not reaped yet is no leak
			}
			if time.Now().After(deadline) {
				t.Errorf("processes left running: %v", kids)
				for _, pid := range kids {
					syscall.Kill(pid, syscall.SIGKILL)
					reap.wait(pid, 10*time.Second)
				}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// freePort returns a loopback address nothing listens on right now.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// service is one httpserver-like service under test: its control socket,
// pid file, address, and one log that all its processes append to.
type service struct {
	t       testing.TB
	bin     string
	dir     string
	addr    string
	socket  string
	pidfile string
	log     *os.File
	env     []string
	known   map[int]bool // every pid seen serving
}

func newService(t testing.TB, bin string) *service {
	t.Helper()
	dir, err := os.MkdirTemp("", "svc")
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{t: t, bin: bin, dir: dir, addr: freePort(t), socket: filepath.Join(dir, "ctl.sock"),
		pidfile: filepath.Join(dir, "pid"), log: log, known: map[int]bool{}}
	t.Cleanup(func() {
		s.killAll()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("service log:\n%s", tail(b, 60))
		}
		os.RemoveAll(dir)
	})
	return s
}

func tail(b []byte, lines int) []byte {
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return bytes.Join(parts, []byte("\n"))
}

// start starts one more process of the service (the first, or an
// independent successor) and returns its pid.
func (s *service) start(args ...string) int {
	s.t.Helper()
	if len(args) == 0 {
		args = []string{"-addr", s.addr, "-socket", s.socket, "-pidfile", s.pidfile}
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release() // the reaper reaps it
	s.remember(pid)
	return pid
}

// remember records pid as a process of this service, to reap and, at the
// end, to kill if it is still running.
func (s *service) remember(pid int) {
	s.known[pid] = true
	reap.watch(pid)
}

// pid reads the pid file (0 if there is none).
func (s *service) pid() int {
	b, err := os.ReadFile(s.pidfile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitPID waits until the pid file names pid, or a process other than
// not when pid is 0, and returns it.
func (s *service) waitPID(pid, not int, timeout time.Duration) int {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.pid()
		if got != 0 && (got == pid || (pid == 0 && got != not)) {
			s.remember(got)
			return got
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("pid file says %d after %v, want %d (not %d)", got, timeout, pid, not)
		}
		time.Sleep(time.Millisecond)
	}
}

// logSize is the current length of the shared log, to wait for lines
// written after it.
func (s *service) logSize() int64 {
	fi, err := s.log.Stat()
	if err != nil {
		s.t.Fatal(err)
	}
	return fi.Size()
}

// waitLog waits until the log, past offset from, contains substr.
func (s *service) waitLog(from int64, substr string, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(s.log.Name())
		if int64(len(b)) > from && bytes.Contains(b[from:], []byte(substr)) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("log has no %q after %v", substr, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// signal sends sig to pid, a process of this service.
func (s *service) signal(pid int, sig syscall.Signal) {
	s.t.Helper()
	if !s.known[pid] {
		s.t.Fatalf("refusing to signal %d: not a process of this test", pid)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		s.t.Fatalf("kill -%v %d: %v", sig, pid, err)
	}
}

// waitExit waits until pid has exited and returns its status.
func (s *service) waitExit(pid int, timeout time.Duration) syscall.WaitStatus {
	s.t.Helper()
	ws, ok := reap.wait(pid, timeout)
	if !ok {
		s.t.Fatalf("process %d still running after %v", pid, timeout)
	}
	return ws
}

// killAll kills whatever of the service's processes is still running.
func (s *service) killAll() {
	for pid := range s.known {
		if err := syscall.Kill(pid, 0); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
			reap.wait(pid, 10*time.Second)
		}
	}
}

// runLoad sends load to addr until stop is called, which returns the
// result.
func runLoad(addr string, mode loadgen.Mode, workers int) (stop func() *loadgen.Result) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	done := make(chan *loadgen.Result, 1)
	go func() {
		done <- loadgen.Run(ctx, loadgen.Config{Addr: addr, Mode: mode, Workers: workers, Timeout: 10 * time.Second})
	}()
	return func() *loadgen.Result {
		cancel()
		return <-done
	}
}

// waitServing waits until addr answers with pid.
func waitServing(t testing.TB, addr string, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := loadgen.Run(context.Background(), loadgen.Config{Addr: addr, Mode: loadgen.NewConn, Workers: 1, MaxRequests: 1, Timeout: time.Second})
		if r.PIDs[pid] == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served by %d: %v %v", addr, pid, r, r.Errors)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// requireNoFailures fails t unless r saw no failed request.
func requireNoFailures(t testing.TB, r *loadgen.Result) {
	t.Helper()
	t.Logf("load: %v", r)
	if r.FailedCount() != 0 || r.OK == 0 {
		t.Errorf("%d failed requests of %d: %v", r.FailedCount(), r.Requests, r.Errors)
	}
}
