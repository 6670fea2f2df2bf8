//go:build unix

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// envRestartDir is the directory where the restart-serve role marks that
// it is stopping and waits to be released.
const envRestartDir = "HANDOFF_TEST_RESTART_DIR"

// envRestartCrash, set, makes the restart-serve role exit 3 after its
// first connection.
const envRestartCrash = "HANDOFF_TEST_RESTART_CRASH"

// The restart-serve role serves fd 3: to every connection it writes its
// pid, LISTEN_PID and LISTEN_FDS, then closes it. At SIGTERM it stops
// accepting, creates stopping-PID in $HANDOFF_TEST_RESTART_DIR, and exits
// once a file "release" is there (or after 10s). With
// $HANDOFF_TEST_RESTART_CRASH set it exits 3 after its first connection.
func init() {
	helpers["restart-serve"] = func() int {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		ln, err := net.FileListener(os.NewFile(3, "socket"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "restart-serve:", err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%d %s %s\n", os.Getpid(), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"))
				c.Close()
				if os.Getenv(envRestartCrash) != "" {
					os.Exit(3)
				}
			}
		}()
		<-stop
		ln.Close() // the wrapper's socket stays open: only this child stops accepting
		dir := os.Getenv(envRestartDir)
		if err := os.WriteFile(filepath.Join(dir, "stopping-"+strconv.Itoa(os.Getpid())), nil, 0o600); err != nil {
			return 1
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(filepath.Join(dir, "release")); err == nil {
				return 0
			}
		}
		return 2
	}
}

// syncWriter is an io.Writer the wrapper logs to while the test reads it.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// restartRun is a restarting wrapper running in the test, its children
// the test binary in the restart-serve role, on a unix socket.
type restartRun struct {
	dir, sock string
	sigs      chan os.Signal
	log       *syncWriter
	code      chan int
}

func startRestartWrapper(t *testing.T, drain time.Duration) *restartRun {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envHelper, "restart-serve")
	t.Setenv(envRestartDir, dir)
	r := &restartRun{dir: dir, sock: filepath.Join(dir, "app.sock"), sigs: make(chan os.Signal, 4), log: &syncWriter{}, code: make(chan int, 1)}
	cfg := restartConfig{
		listen: []listenSpec{{name: "web", network: "unix", address: r.sock}},
		socket: filepath.Join(dir, "ctl.sock"), name: "restart-test", pidfile: filepath.Join(dir, "pid"),
		drainTimeout: drain, stopSignal: syscall.SIGTERM, path: self, argv: []string{self},
	}
	go func() {
		code, err := restartWrapper(cfg, r.sigs, r.log)
		if err != nil {
			t.Errorf("restartWrapper: %v", err)
		}
		r.code <- code
	}()
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(dir, "release"), nil, 0o600)
		select {
		case r.sigs <- syscall.SIGTERM:
		default:
		}
		recv(t, "the wrapper to stop", r.code)
		if t.Failed() {
			t.Logf("wrapper log:\n%s", r.log)
		}
	})
	return r
}

// get connects and reads what the serving child says: its pid, its
// LISTEN_PID and LISTEN_FDS. The connection is made (queued in the
// socket's backlog) before get waits for the answer.
func (r *restartRun) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", r.sock, 10*time.Second)
	if err != nil {
		t.Fatalf("connect: %v (refused while the child restarts?)", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func answer(t *testing.T, c net.Conn) []string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		t.Fatalf("answer %q", line)
	}
	return f
}

// serving waits until the socket exists and answers; it returns the pid.
func (r *restartRun) serving(t *testing.T) string {
	t.Helper()
	waitUntil(t, "the wrapper binds "+r.sock, func() bool { _, err := os.Stat(r.sock); return err == nil })
	f := answer(t, r.dial(t))
	if f[0] != f[1] || f[2] != "1" {
		t.Errorf("child pid %s got LISTEN_PID=%s LISTEN_FDS=%s, want its own pid and 1", f[0], f[1], f[2])
	}
	return f[0]
}

// TestRestartReload: SIGHUP stops the child and starts a new one on the
// same socket; a connection made while no child accepts (the old one
// stopping) waits in the queue and the new child serves it.
func TestRestartReload(t *testing.T) {
	r := startRestartWrapper(t, 10*time.Second)
	old := r.serving(t)
	waitUntil(t, "the pid file names the wrapper", func() bool {
		b, _ := os.ReadFile(filepath.Join(r.dir, "pid"))
		return strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid())
	})
	r.sigs <- syscall.SIGHUP
	waitUntil(t, "the old child stops accepting", func() bool {
		_, err := os.Stat(filepath.Join(r.dir, "stopping-"+old))
		return err == nil
	})
	during := r.dial(t) // nobody accepts now
	if err := os.WriteFile(filepath.Join(r.dir, "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f := answer(t, during)
	if f[0] == old {
		t.Fatalf("the connection made during the restart was served by the old child %s", old)
	}
	if f[0] != f[1] {
		t.Errorf("new child pid %s got LISTEN_PID=%s", f[0], f[1])
	}
	waitUntil(t, "the wrapper logs the restart", func() bool { return strings.Contains(r.log.String(), restartReason) })
	r.sigs <- syscall.SIGTERM
	if code := recv(t, "the wrapper to stop", r.code); code != 0 {
		t.Errorf("exit code %d, want 0 (the child ended by the stop signal)", code)
	}
	r.code <- 0 // for the cleanup
}

// TestRestartDrainTimeout: an old child that does not exit within
// -drain-timeout is killed, and a new one serves; at a stop, the wrapper
// exits with the status of its child, killed the same way.
func TestRestartDrainTimeout(t *testing.T) {
	r := startRestartWrapper(t, 200*time.Millisecond)
	old := r.serving(t)
	r.sigs <- syscall.SIGHUP // the old child waits for a release that never comes
	waitUntil(t, "the old child stops accepting", func() bool {
		_, err := os.Stat(filepath.Join(r.dir, "stopping-"+old))
		return err == nil
	})
	during := r.dial(t)
	if f := answer(t, during); f[0] == old {
		t.Fatalf("served by the old child %s", old)
	}
	waitUntil(t, "the wrapper logs the kill", func() bool {
		return strings.Contains(r.log.String(), "child did not stop within the drain timeout; killed")
	})
	// Stopped, the wrapper exits with its child's status: this one too
	// ignores the stop signal, and is killed.
	r.sigs <- syscall.SIGTERM
	if code := recv(t, "the wrapper to stop", r.code); code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code %d, want %d (the child killed by SIGKILL)", code, 128+int(syscall.SIGKILL))
	}
	r.code <- 0 // for the cleanup
}

func TestParseRestartRun(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // in the error; "" for none
	}{
		{[]string{"-listen", "tcp://127.0.0.1:0", "-ready", "1s", "-pidfile", "/tmp/x", "--", "true"}, ""},
		{[]string{"-listen", "tcp://127.0.0.1:0", "-canary-window", "5s", "--", "true"}, "-canary-window needs the handoff, which needs Linux"},
		{[]string{"-listen", "tcp://127.0.0.1:0", "-socket-mode", "shared", "--", "true"}, "-socket-mode needs the handoff"},
		{[]string{"-listen", "tcp://127.0.0.1:0", "-ready", "notify", "--", "true"}, "notify, accepting and probes need Linux"},
		{[]string{"--", "true"}, "no -listen"},
	} {
		_, err := parseRestartRun(tt.args, io.Discard)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v", tt.args, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: error %v, want one saying %q", tt.args, err, tt.want)
		}
	}
}

// TestRestartAfterCrash: a child that exits on its own is restarted on
// the same socket; a connection made before the restart waits for it.
func TestRestartAfterCrash(t *testing.T) {
	t.Setenv(envRestartCrash, "1")
	r := startRestartWrapper(t, 10*time.Second)
	first := r.serving(t) // and exits 3
	f := answer(t, r.dial(t))
	if f[0] == first {
		t.Fatalf("served by the child %s that exited", first)
	}
	waitUntil(t, "the wrapper logs the crash", func() bool {
		return strings.Contains(r.log.String(), "child exited on its own; restarting")
	})
}
