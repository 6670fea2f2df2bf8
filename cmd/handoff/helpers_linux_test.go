//go:build linux

package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/handoffd/handoff/internal/testenv"
)

// Helper roles: children that wait on the socket passed as fd 3 in one of
// the ways servers do, or check what they were given. A pipe passed as
// fd 4 lets the "hold" role block somewhere else.
func init() {
	// Each role waits again when a signal interrupts it: the Go runtime
	// signals its threads now and then.
	helpers["hold"] = func() int { // holds the socket, waits on fd 4
		retry(func() error { _, err := unix.Read(4, make([]byte, 1)); return err })
		return 0
	}
	helpers["accept"] = func() int { // blocks in accept
		retry(func() error { _, _, err := unix.Accept(3); return err })
		return 0
	}
	helpers["poll"] = func() int {
		retry(func() error {
			_, err := unix.Poll([]unix.PollFd{{Fd: 4, Events: unix.POLLIN}, {Fd: 3, Events: unix.POLLIN}}, -1)
			return err
		})
		return 0
	}
	helpers["select"] = func() int {
		retry(func() error {
			var set unix.FdSet
			set.Set(3)
			set.Set(4)
			_, err := unix.Select(5, &set, nil, nil, nil)
			return err
		})
		return 0
	}
	helpers["epoll"] = func() int {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return 1
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, 3, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 3}); err != nil {
			return 1
		}
		retry(func() error { _, err := unix.EpollWait(ep, make([]unix.EpollEvent, 1), -1); return err })
		return 0
	}
	helpers["fork-accept"] = func() int { // a worker process accepts, as gunicorn's do
		cmd := exec.Command("/proc/self/exe")
		cmd.Env = append(os.Environ(), envHelper+"=accept")
		cmd.ExtraFiles = []*os.File{os.NewFile(3, "socket")} // already blocking: the test made it so
		if err := cmd.Run(); err != nil {
			return 1
		}
		return 0
	}
	helpers["env"] = func() int { // checks what the wrapper promises a child
		want := map[string]string{"LISTEN_PID": strconv.Itoa(os.Getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
		for k, v := range want {
			if got := os.Getenv(k); got != v {
				fmt.Fprintf(os.Stderr, "%s=%q, want %q\n", k, got, v)
				return 1
			}
		}
		if on, err := unix.GetsockoptInt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on != 1 {
			fmt.Fprintf(os.Stderr, "fd 3 is not a listening socket: %v\n", err)
			return 1
		}
		return 0
	}
	// canary-crash: a build that crashes soon after it began to serve
	// (integration/wrapper_canary_test.go installs this binary as the
	// command): it watches fd 3 in an epoll set, so -ready accepting
	// sees it ready; then, as testenv.CrashAfter says, it exits 3 that
	// long after it started, having accepted nothing, or it panics on
	// the first connection it accepts.
	helpers["canary-crash"] = func() int {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return 1
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, 3, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 3}); err != nil {
			return 1
		}
		after := os.Getenv(testenv.CrashAfter)
		if after == testenv.CrashOnFirstConn {
			retry(func() error { _, err := unix.EpollWait(ep, make([]unix.EpollEvent, 1), -1); return err })
			fd, _, err := unix.Accept(3)
			panic(fmt.Sprintf("canary-crash: the first connection (fd %d, accept: %v)", fd, err))
		}
		d, err := time.ParseDuration(after)
		if err != nil {
			fmt.Fprintf(os.Stderr, "canary-crash: %s=%q: want a duration or %q\n", testenv.CrashAfter, after, testenv.CrashOnFirstConn)
			return 1
		}
		time.Sleep(d) // the crash comes this long after start: the test's subject
		return 3
	}
	helpers["notify"] = func() int {
		if _, err := daemon.SdNotify(false, "STATUS=starting\nREADY=1"); err != nil {
			return 1
		}
		retry(func() error { _, err := unix.Read(4, make([]byte, 1)); return err })
		return 0
	}
}

// retry calls wait again while a signal interrupts it.
func retry(wait func() error) {
	for wait() == unix.EINTR {
	}
}

// serveNotify is a notify socket, served until cleanup.
func serveNotify(t *testing.T) *notifySocket {
	t.Helper()
	ns, err := listenNotify(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- ns.serve() }()
	t.Cleanup(func() {
		ns.close()
		if err := recv(t, "the notify socket to stop serving", served); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// testSocket is a blocking TCP listening socket on loopback, as a raw
// descriptor (the roles block in accept on it), and its inode.
func testSocket(t *testing.T) (int, uint64) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return fd, st.Ino
}

// testPipe returns a pipe whose read end a helper blocks on; the write
// end is closed at cleanup, which ends the helper's wait.
func testPipe(t *testing.T) int {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[1]) })
	t.Cleanup(func() { unix.Close(p[0]) })
	return p[0]
}

// startHelper starts the test binary in role through a spawner, as the
// wrapper starts a child, with files as fds 3... The child is killed and
// reaped at cleanup.
func startHelper(t *testing.T, sp *spawner, role string, env []string, files ...int) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fds := make([]uintptr, len(files))
	for i, fd := range files {
		fds[i] = uintptr(fd)
	}
	exe, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	pid, err := sp.start(exe, []string{self}, append(append(os.Environ(), envHelper+"="+role), env...), fds)
	if err != nil {
		t.Fatal(err)
	}
	c, err := watchChild(pid, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.kill)
	return c
}

// newTestSpawner is a spawner closed at cleanup, after the children (the
// cleanups registered later run first).
func newTestSpawner(t *testing.T) *spawner {
	sp := newSpawner()
	t.Cleanup(sp.close)
	return sp
}

// waitExit waits until c has exited and been reaped.
func waitExit(t *testing.T, c *child) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("child %d still runs after 10s", c.pid)
	}
}
