//go:build linux

package main

import (
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/handoffd/handoff/internal/procfs"
)

// TestChildGroupDiesWithIt: a child whose main process is killed leaves no
// worker behind to accept on the shared socket.
func TestChildGroupDiesWithIt(t *testing.T) {
	sock, ino := testSocket(t)
	sp := newTestSpawner(t)
	c := startHelper(t, sp, "fork-accept", nil, sock, testPipe(t))
	waitUntil(t, "the worker accepts", func() bool { ok, _ := procfs.Accepting(c.pid, map[uint64]bool{ino: true}); return ok })
	tree := procfs.Tree(c.pid)
	if len(tree) != 2 {
		t.Fatalf("process tree %v, want the child and its worker", tree)
	}
	worker := tree[1]
	c.signal(syscall.SIGKILL)
	waitExit(t, c)
	waitUntil(t, "the worker is gone", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(worker) + "/stat")
		return err != nil || zombie(b)
	})
}

// zombie reports whether a /proc/PID/stat line is a zombie's (exited,
// waiting for its new parent to reap it).
func zombie(stat []byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == 'Z'
		}
	}
	return false
}
