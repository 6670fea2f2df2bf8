//go:build linux

package main

import (
	"net"
	"os"
	"testing"
)

// TestNotifySocket: a message counts for the pid the kernel says sent it
// (SCM_CREDENTIALS): this process's READY=1 makes no child ready, and a
// child's makes only that child ready.
func TestNotifySocket(t *testing.T) {
	ns := serveNotify(t)

	changed := ns.changed()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("STATUS=warming up")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	recv(t, "the notify socket to see STATUS=", changed)
	if st := ns.state(os.Getpid()); !st.spoke || st.ready {
		t.Fatalf("after STATUS=: %+v, want spoke and not ready", st)
	}

	sp := newTestSpawner(t)
	child := startHelper(t, sp, "notify", []string{"NOTIFY_SOCKET=" + ns.path}, testPipe(t), testPipe(t))
	waitUntil(t, "the child's READY=1 arrives", func() bool { return ns.state(child.pid).ready })
	if ns.state(os.Getpid()).ready {
		t.Fatal("the child's READY=1 counted for this process")
	}
	ns.forget(child.pid)
	if ns.state(child.pid).spoke {
		t.Fatal("forget kept the child's state")
	}
}
