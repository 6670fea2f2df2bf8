//go:build linux

package main

import (
	"net"
	"runtime"
	"syscall"
	"testing"

	"github.com/handoffd/handoff/internal/ctl"
	"golang.org/x/sys/unix"
)

// TestSpawnChildEnvironment: a child gets the socket as fd 3, LISTEN_FDS,
// LISTEN_FDNAMES and its own pid in LISTEN_PID (set by the shim), and
// handing it a Go listener's socket leaves O_NONBLOCK as it was.
func TestSpawnChildEnvironment(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := ctl.DupFD(ln.(syscall.Conn))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	before, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	sp := newTestSpawner(t)
	c := startHelper(t, sp, "env", []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web"}, fd)
	waitExit(t, c)
	if c.describe() != "exit status 0" {
		t.Fatalf("child saw the wrong environment: %s", c.describe())
	}
	after, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if before&unix.O_NONBLOCK == 0 || after != before {
		t.Fatalf("socket flags %#o before starting the child, %#o after; want O_NONBLOCK kept", before, after)
	}
}

// TestSpawnerSurvivesThreadExits: the parent-death signal follows the
// thread that forked. A child forked from a thread that then exits is
// killed at once (the trap, shown first); one forked by the spawner
// outlives any other thread's exit.
func TestSpawnerSurvivesThreadExits(t *testing.T) {
	sock, _ := testSocket(t)
	self := "/proc/self/exe" // the test binary: the helper roles
	forked := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		pid, err := syscall.ForkExec(self, []string{self}, &syscall.ProcAttr{
			Env:   []string{envHelper + "=hold"},
			Files: []uintptr{0, 1, 2, uintptr(sock), uintptr(testPipe(t))},
			Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
		})
		if err != nil {
			t.Error(err)
		}
		forked <- pid
	}()
	doomed, err := watchChild(recv(t, "the forked child's pid", forked), 1)
	if err != nil {
		t.Fatal(err)
	}
	waitExit(t, doomed)
	if !doomed.status.Signaled() || doomed.status.Signal() != syscall.SIGKILL {
		t.Fatalf("child of an exited thread: %s, want killed by SIGKILL", doomed.describe())
	}

	sp := newTestSpawner(t)
	c := startHelper(t, sp, "hold", nil, sock, testPipe(t))
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread() // this thread exits too
		close(exited)
	}()
	recv(t, "the locked thread to exit", exited)
	waitUntil(t, "the spawner's child blocks reading fd 4", func() bool { return inRead(c.pid, 4) })
	if c.exited() {
		t.Fatalf("the spawner's child died when another thread exited: %s", c.describe())
	}
}
