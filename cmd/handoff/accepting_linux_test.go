//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/handoffd/handoff/internal/procfs"

	"golang.org/x/sys/unix"
)

// TestAccepting: each way a server waits for connections is seen from
// /proc, without the server's help, in the process itself or in one it
// forked.
func TestAccepting(t *testing.T) {
	for _, role := range []string{"accept", "poll", "select", "epoll", "fork-accept"} {
		t.Run(role, func(t *testing.T) {
			sock, ino := testSocket(t)
			sp := newTestSpawner(t)
			c := startHelper(t, sp, role, nil, sock, testPipe(t))
			waitUntil(t, role+" is seen accepting", func() bool {
				ok, err := procfs.Accepting(c.pid, map[uint64]bool{ino: true})
				if err != nil {
					t.Fatal(err)
				}
				return ok
			})
		})
	}
}

// TestAcceptingNotHolding: a process that holds the socket but waits on
// something else (the old child's socket, a new child busy starting) is
// not accepting.
func TestAcceptingNotHolding(t *testing.T) {
	sock, ino := testSocket(t)
	sp := newTestSpawner(t)
	c := startHelper(t, sp, "hold", nil, sock, testPipe(t))
	waitUntil(t, "the helper blocks reading fd 4", func() bool { return inRead(c.pid, 4) })
	for range 3 {
		ok, err := procfs.Accepting(c.pid, map[uint64]bool{ino: true})
		if err != nil || ok {
			t.Fatalf("accepting = %v, %v for a process that never waits on the socket", ok, err)
		}
	}
	// Two sockets, one watched: not ready until every socket is.
	other, otherIno := testSocket(t)
	c2 := startHelper(t, sp, "epoll", nil, sock, other)
	waitUntil(t, "the helper waits in epoll", func() bool { ok, _ := procfs.Accepting(c2.pid, map[uint64]bool{ino: true}); return ok })
	if ok, _ := procfs.Accepting(c2.pid, map[uint64]bool{ino: true, otherIno: true}); ok {
		t.Fatal("accepting on one of two sockets counted as accepting on both")
	}
}

// inRead reports whether a thread of pid is blocked in read(fd).
func inRead(pid, fd int) bool {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
		f := strings.Fields(string(b))
		if len(f) > 1 && f[0] == strconv.Itoa(unix.SYS_READ) && f[1] == fmt.Sprintf("0x%x", fd) {
			return true
		}
	}
	return false
}
