//go:build unix

package testbed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
)

// TB is the part of testing.TB that testbed uses; the demo and the
// benchmark bring their own.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// A Reaper reaps the processes it is told to watch: the ones this process
// starts and the orphans it inherits. It never waits for any child (-1),
// which would steal the exit status of commands run with os/exec.
type Reaper struct {
	mu      sync.Mutex
	watched map[int]bool
	exited  map[int]syscall.WaitStatus
	changed chan struct{}
	kick    chan struct{}
}

// StartReaper starts reaping on SIGCHLD; it runs for the life of the
// process.
func StartReaper() *Reaper {
	r := &Reaper{watched: map[int]bool{}, exited: map[int]syscall.WaitStatus{}, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
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

// Watch makes the reaper reap pid, a child of this process now or later
// (an orphan it inherits).
func (r *Reaper) Watch(pid int) {
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

func (r *Reaper) reapWatched() {
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

// Wait waits until pid, which it watches from now on, has exited and has
// been reaped.
func (r *Reaper) Wait(pid int, timeout time.Duration) (syscall.WaitStatus, bool) {
	r.Watch(pid)
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

// ProcStat returns the start time (clock ticks after boot) and the state
// ("R", "S", "Z"...) of process pid, from /proc/PID/stat: a pid and its
// start time name one process, where a pid alone may have been reused.
func ProcStat(pid int) (start, state string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", "", false
	}
	i := bytes.LastIndexByte(b, ')') // the command name may hold anything
	if i < 0 {
		return "", "", false
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3, state
	if len(f) < 20 {
		return "", "", false
	}
	return f[19], f[0], true // field 22, starttime
}

// Children lists this process's children that are still running or not
// yet reaped (none on systems without /proc).
func Children() []int { return procfs.Children(os.Getpid()) }

// CheckNoChildren fails tb if a process is still around once tb's later
// cleanups have run (so register it first); leftovers are killed.
func CheckNoChildren(tb TB, r *Reaper) {
	tb.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			kids := Children()
			if len(kids) == 0 {
				return
			}
			for _, pid := range kids {
				r.Watch(pid) // a zombie not reaped yet is no leak
			}
			if time.Now().After(deadline) {
				tb.Logf("processes left running: %v", kids)
				for _, pid := range kids {
					syscall.Kill(pid, syscall.SIGKILL)
					r.Wait(pid, 10*time.Second)
				}
				tb.Fatalf("%d processes were left running", len(kids))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// A Builder builds the module's commands into Dir, once each.
type Builder struct {
	ModuleRoot string // where go.mod is
	Dir        string // where the binaries go
	Race       bool   // build with the race detector

	builds sync.Map // executable name → *build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Build builds the main package pkg ("./examples/httpserver") and returns
// the executable's path.
func (b *Builder) Build(tb TB, pkg string) string {
	tb.Helper()
	return b.build(tb, pkg, filepath.Base(pkg), "build")
}

// BuildVariant builds the main package pkg as Build does, with more go
// build flags (-ldflags=-X=... to set a variable for a test), into an
// executable called name.
func (b *Builder) BuildVariant(tb TB, pkg, name string, flags ...string) string {
	tb.Helper()
	return b.build(tb, pkg, name, append([]string{"build"}, flags...)...)
}

// testBinaryName names pkg's test binary after its whole path
// ("./cmd/handoff" → "cmd-handoff.test"), so that two packages with one
// base name ("./handoff", "./cmd/handoff") get a binary each.
func testBinaryName(pkg string) string {
	return strings.ReplaceAll(strings.Trim(filepath.ToSlash(filepath.Clean(pkg)), "./"), "/", "-") + ".test"
}

// BuildTest builds the test binary of package pkg ("./handoff"), as
// `go test -c` does, and returns its path: its helper roles can then play
// peers of the real servers.
func (b *Builder) BuildTest(tb TB, pkg string) string {
	tb.Helper()
	return b.build(tb, pkg, testBinaryName(pkg), "test", "-c")
}

func (b *Builder) build(tb TB, pkg, name string, goArgs ...string) string {
	tb.Helper()
	v, _ := b.builds.LoadOrStore(name, &build{})
	bl := v.(*build)
	bl.once.Do(func() {
		bl.path = filepath.Join(b.Dir, name)
		args := append(slices.Clone(goArgs), "-o", bl.path)
		if b.Race {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = b.ModuleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			bl.err = fmt.Errorf("go %s %s: %v\n%s", strings.Join(goArgs, " "), pkg, err, out)
		}
	})
	if bl.err != nil {
		tb.Fatalf("%v", bl.err)
	}
	return bl.path
}

// RunTests is the TestMain of a suite that drives real processes: this
// process becomes a subreaper, reaping starts, and m runs with a Builder
// for the module at moduleRoot whose binaries go to a temporary directory,
// removed afterwards. setup receives the reaper and the builder before
// any test runs. RunTests exits with m's code.
func RunTests(m *testing.M, moduleRoot string, race bool, setup func(*Reaper, *Builder)) {
	if err := BecomeSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	reaper := StartReaper()
	dir, err := os.MkdirTemp("", "handoff-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	setup(reaper, &Builder{ModuleRoot: moduleRoot, Dir: dir, Race: race})
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
