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

// tcpPair returns both ends of a loopback TCP connection, closed at the
// test's end.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// withoutDescriptors runs f with no descriptor free in this process: the
// soft limit lowered to a little above fd, and every number below it
// taken; both are restored after.
func withoutDescriptors(t *testing.T, fd int, f func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(fd) + 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []int
	for range low.Cur { // bounded: every number below the limit, at most
		n, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, n)
	}
	f()
	for _, n := range fill {
		unix.Close(n)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptConnKeepsNonblocking: a descriptor adopted as a connection
// works, and the description it shares with the sender's copy is
// non-blocking again afterwards, on success and on failure.
func TestAdoptConnKeepsNonblocking(t *testing.T) {
	client, server := tcpPair(t)
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
	withoutDescriptors(t, second, func() { _, err = AdoptConn(second) })
	if err == nil {
		t.Fatal("AdoptConn with no descriptor free succeeded")
	}
	if !nonblocking(t, keep) {
		t.Fatalf("a failed AdoptConn (%v) left the shared description blocking", err)
	}
}

// TestTryAdoptConnKeepsFDWhenOut: out of descriptors, TryAdoptConn fails
// and leaves the descriptor open, the caller's to try again with (a
// parked connection has no other copy); with room again it succeeds.
func TestTryAdoptConnKeepsFDWhenOut(t *testing.T) {
	client, server := tcpPair(t)
	fd, err := DupFD(server.(*net.TCPConn))
	server.Close() // fd is the connection's only descriptor now
	if err != nil {
		t.Fatal(err)
	}
	withoutDescriptors(t, fd, func() { _, err = TryAdoptConn(fd) })
	if err == nil {
		t.Fatal("TryAdoptConn with no descriptor free succeeded")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("a failed TryAdoptConn (%v) closed the descriptor", err)
	}
	c, err := TryAdoptConn(fd)
	if err != nil {
		t.Fatalf("TryAdoptConn with room again: %v", err)
	}
	defer c.Close()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("Read on the adopted connection: %d, %v", n, err)
	}
}
