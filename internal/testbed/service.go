//go:build unix

package testbed

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
)

// A Service is one service under test, run the way examples/httpserver
// is: its processes share a control socket, a pid file, an address, and
// one log they all append to.
type Service struct {
	Bin     string   // executable Start runs
	Dir     string   // private directory: working directory, socket, pid file, log
	Addr    string   // loopback address it serves on
	Socket  string   // control socket
	PIDFile string   // pid file
	Env     []string // added to the environment of the processes Start starts
	// SysProcAttr, when set, is that of the processes Start starts (a
	// network namespace of their own, say).
	SysProcAttr *syscall.SysProcAttr

	tb     TB
	reaper *Reaper
	log    *os.File
	known  map[int]string // every pid seen, to reap and, at the end, kill: its start time
}

// NewService prepares a service; its processes are killed, and its
// directory removed, when tb's cleanups run.
func NewService(tb TB, r *Reaper, bin string) *Service {
	tb.Helper()
	dir, err := os.MkdirTemp("", "svc")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	log, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	s := &Service{Bin: bin, Dir: dir, Addr: FreePort(tb), Socket: filepath.Join(dir, "ctl.sock"),
		PIDFile: filepath.Join(dir, "pid"), tb: tb, reaper: r, log: log, known: map[int]string{}}
	tb.Cleanup(func() {
		s.KillAll()
		log.Close()
		if tb.Failed() {
			b, _ := os.ReadFile(log.Name())
			if w := Matching(b, "level=WARN", "level=ERROR"); len(w) > 0 {
				tb.Logf("service log, its warnings and errors:\n%s", Head(w, 40))
			}
			tb.Logf("service log:\n%s", Tail(b, 60))
			if d := os.Getenv("HANDOFF_TEST_LOGS"); d != "" { // the whole log, to read after
				f, err := os.CreateTemp(d, "service-*.log")
				if err == nil {
					f.Write(b)
					f.Close()
					tb.Logf("whole service log: %s", f.Name())
				}
			}
		}
		os.RemoveAll(dir)
	})
	return s
}

// Matching returns the lines of b that contain any of subs.
func Matching(b []byte, subs ...string) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		for _, sub := range subs {
			if bytes.Contains(l, []byte(sub)) {
				out = append(out, l)
				break
			}
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// Head returns the first lines of b.
func Head(b []byte, lines int) []byte {
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[:lines]
	}
	return bytes.Join(parts, []byte("\n"))
}

// Tail returns the last lines of b.
func Tail(b []byte, lines int) []byte {
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return bytes.Join(parts, []byte("\n"))
}

// FreePort returns a loopback address nothing listens on right now.
func FreePort(tb TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// DefaultArgs are httpserver's flags for this service.
func (s *Service) DefaultArgs() []string {
	return []string{"-addr", s.Addr, "-socket", s.Socket, "-pidfile", s.PIDFile}
}

// Start starts one more process of the service (the first, or an
// independent successor) with args, or DefaultArgs, and returns its pid.
func (s *Service) Start(args ...string) int {
	s.tb.Helper()
	if len(args) == 0 {
		args = s.DefaultArgs()
	}
	return s.StartProgram(s.Bin, args...)
}

// StartProgram starts bin, another program that plays a part in the
// service (a successor, a peer on its control socket), with args, the
// service's directory, environment and log, and returns its pid.
func (s *Service) StartProgram(bin string, args ...string) int {
	s.tb.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = s.Dir
	// A race-enabled binary sleeps a second before exiting, for late
	// reports; that would hide how fast a drained process exits. A data
	// race still fails it: exit status 66, checked by the tests.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=20")
	cmd.Env = append(cmd.Env, s.Env...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = s.SysProcAttr
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start %s: %v", bin, err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release() // the reaper reaps it
	s.Remember(pid)
	return pid
}

// Remember records pid as a process of this service: the reaper reaps it
// and KillAll kills it if it is still running. Its start time is recorded
// too: pids are reused, and a pid that names another process by the time
// it is signalled is left alone.
func (s *Service) Remember(pid int) {
	if _, seen := s.known[pid]; !seen {
		start, _, _ := ProcStat(pid)
		s.known[pid] = start
	}
	s.reaper.Watch(pid)
}

// same reports whether pid still names the process Remember recorded.
func (s *Service) same(pid int) bool {
	start, _, ok := ProcStat(pid)
	return ok && start == s.known[pid] && start != ""
}

// PID reads the pid file (0 if there is none).
func (s *Service) PID() int {
	b, err := os.ReadFile(s.PIDFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// WaitPID waits until the pid file names pid, or, when pid is 0, any
// process but not, and returns it.
func (s *Service) WaitPID(pid, not int, timeout time.Duration) int {
	s.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.PID()
		if got != 0 && (got == pid || (pid == 0 && got != not)) {
			s.Remember(got)
			return got
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("pid file says %d after %v, want %d (not %d)", got, timeout, pid, not)
		}
		time.Sleep(time.Millisecond)
	}
}

// LogSize is the current length of the shared log, to wait for lines
// written after it.
func (s *Service) LogSize() int64 {
	fi, err := s.log.Stat()
	if err != nil {
		s.tb.Fatalf("%v", err)
	}
	return fi.Size()
}

// LogFrom returns what the log holds past offset from.
func (s *Service) LogFrom(from int64) []byte {
	b, _ := os.ReadFile(s.log.Name())
	if int64(len(b)) <= from {
		return nil
	}
	return b[from:]
}

// WaitLog waits until the log, past offset from, contains substr.
func (s *Service) WaitLog(from int64, substr string, timeout time.Duration) {
	s.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if bytes.Contains(s.LogFrom(from), []byte(substr)) {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("log has no %q after %v", substr, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Signal sends sig to pid, which must be a process of this service.
func (s *Service) Signal(pid int, sig syscall.Signal) {
	s.tb.Helper()
	if _, ok := s.known[pid]; !ok {
		s.tb.Fatalf("refusing to signal %d: not a process of this service", pid)
	}
	if !s.same(pid) {
		s.tb.Fatalf("refusing to signal %d: the process this service knew by that pid is gone", pid)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		s.tb.Fatalf("kill -%v %d: %v", sig, pid, err)
	}
}

// WaitExit waits until pid has exited and returns its status.
func (s *Service) WaitExit(pid int, timeout time.Duration) syscall.WaitStatus {
	s.tb.Helper()
	ws, ok := s.reaper.Wait(pid, timeout)
	if !ok {
		s.tb.Fatalf("process %d still running after %v", pid, timeout)
	}
	return ws
}

// KillAll kills whatever of the service's processes is still running.
func (s *Service) KillAll() {
	for pid := range s.known {
		if s.same(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			s.reaper.Wait(pid, 10*time.Second)
		}
	}
}

// RunLoad sends load to addr until the returned stop is called, which
// returns the result. The load ends by itself after ten minutes.
func RunLoad(addr string, mode loadgen.Mode, workers int) (stop func() *loadgen.Result) {
	return RunLoadConfig(loadgen.Config{Addr: addr, Mode: mode, Workers: workers, Timeout: 10 * time.Second})
}

// RunLoadConfig is RunLoad for any load: it runs until the returned stop
// is called, or ten minutes.
func RunLoadConfig(cfg loadgen.Config) (stop func() *loadgen.Result) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	done := make(chan *loadgen.Result, 1)
	go func() {
		done <- loadgen.Run(ctx, cfg)
	}()
	return func() *loadgen.Result {
		cancel()
		return <-done
	}
}

// WaitServing waits until addr answers with pid.
func WaitServing(tb TB, addr string, pid int) {
	tb.Helper()
	WaitServingConfig(tb, loadgen.Config{Addr: addr}, pid)
}

// WaitServingConfig waits until pid answers a request to load's address
// in load's protocol (and TLS configuration).
func WaitServingConfig(tb TB, load loadgen.Config, pid int) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	probe := loadgen.Config{Addr: load.Addr, Protocol: load.Protocol, TLSConfig: load.TLSConfig,
		Mode: loadgen.NewConn, Workers: 1, MaxRequests: 1, Timeout: time.Second}
	for {
		r := loadgen.Run(context.Background(), probe)
		if r.PIDs[pid] == 1 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s (%s) not served by %d: %v %v", load.Addr, load.Protocol, pid, r, r.Errors)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Median returns the middle of ds.
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
