package ctl

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// nonblocking reports whether fd's open file description has O_NONBLOCK.
func nonblocking(t *testing.T, fd int) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.O_NONBLOCK != 0
}

// TestAdoptConnKeepsNonblocking: a descriptor adopted as a connection
// works, and the description it shares with the sender's copy is
// non-blocking again afterwards, on success and on failure.
func TestAdoptConnKeepsNonblocking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	sent, err := DupFD(server.(*net.TCPConn)) // what the sender passes
	if err != nil {
		t.Fatal(err)
	}
	keep, err := unix.Dup(sent) // the sender's copy of the same description
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(keep)
	c, err := AdoptConn(sent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !nonblocking(t, keep) {
		t.Fatal("the shared description is blocking after AdoptConn")
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read on the adopted connection: %d, %v", n, err)
	}

	// Out of descriptors: net.FileConn's duplicate fails (EMFILE) after
	// the description was made blocking, and before net.FileConn would
	// make it non-blocking again; AdoptConn does.
	second, err := DupFD(server.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(second) + 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []int
	for range low.Cur { // bounded: every number below the limit, at most
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	_, err = AdoptConn(second)
	for _, fd := range fill {
		unix.Close(fd)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		t.Fatal("AdoptConn with no descriptor free succeeded")
	}
	if !nonblocking(t, keep) {
		t.Fatalf("a failed AdoptConn (%v) left the shared description blocking", err)
	}
}
