package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// parked reports how many connections g's listener holds parked.
func (g *httpGeneration) parked() int {
	for _, s := range g.upg.reg.inventory() {
		if s.ln == nil {
			continue
		}
		s.ln.mu.Lock()
		lot := s.ln.lot
		s.ln.mu.Unlock()
		if lot != nil {
			lot.mu.Lock()
			n := len(lot.parked)
			lot.mu.Unlock()
			return n
		}
	}
	return 0
}

// handOverIdle starts old and a successor called name, with one idle
// keep-alive connection on old, and drains old: the connection is the
// successor's, parked until its client sends.
func handOverIdle(t *testing.T, cfg Config, srv *http.Server) (*httpClient, *httpGeneration) {
	t.Helper()
	c, old := oneIdle(t, cfg)
	next := startGeneration(t, cfg, srv, (*HTTPServer).Serve)
	joinDrain(t, old.startDrain(t))
	waitFor(t, "the connection to be parked", func() bool { return next.parked() == 1 })
	return c, next
}

// oneIdle starts a first process, "old", with one idle keep-alive
// connection, which waits for its next request in the gate.
func oneIdle(t *testing.T, cfg Config) (*httpClient, *httpGeneration) {
	t.Helper()
	old := startHTTP(t, cfg, "old", nil)
	c := dialHTTP(t, old.addr)
	if body, _, err := c.get("/1"); err != nil || body != "old /1" {
		t.Fatalf("%q, %v", body, err)
	}
	old.waitConns(t, 1, "the connection to be idle")
	old.waitGated(t)
	return c, old
}

// TestParkedUntilClientSends: an idle connection handed over waits in the
// successor's parking lot, with no net/http goroutine, until its client
// sends; then the successor answers on it.
func TestParkedUntilClientSends(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	c, next := handOverIdle(t, cfg, &http.Server{Handler: answerName("new", nil)})
	next.srv.mu.Lock()
	n := len(next.srv.conns)
	next.srv.mu.Unlock()
	if n != 0 {
		t.Fatalf("the successor's server tracks %d connections while the handed-over one is parked", n)
	}
	if body, closing, err := c.get("/2"); err != nil || body != "new /2" || closing {
		t.Fatalf("after the handover: %q, Connection: close %v, %v", body, closing, err)
	}
	if n := next.parked(); n != 0 {
		t.Fatalf("%d connections still parked after the client sent", n)
	}
	// Empty, the lot has ended: no epoll set, no goroutine.
	waitFor(t, "the empty parking lot to end", func() bool {
		for _, s := range next.upg.reg.inventory() {
			if s.ln != nil {
				s.ln.mu.Lock()
				lot := s.ln.lot
				s.ln.mu.Unlock()
				if lot != nil {
					select {
					case <-lot.done:
					default:
						return false
					}
				}
			}
		}
		return true
	})
}

// TestParkedIdleTimeout: a parked connection whose client stays silent is
// closed at the successor's idle timeout, counted from the handover, as
// net/http closes an idle connection: not before, and not never.
func TestParkedIdleTimeout(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	const idle = 400 * time.Millisecond
	start := time.Now()
	c, next := handOverIdle(t, cfg, &http.Server{Handler: answerName("new", nil), IdleTimeout: idle})
	c.c.SetReadDeadline(time.Now().Add(waitBound))
	n, err := c.c.Read(make([]byte, 1))
	took := time.Since(start)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read on the silent connection: %d bytes, %v; want EOF at the idle timeout", n, err)
	}
	if took < idle {
		t.Fatalf("closed %v after the handover began, before the idle timeout of %v", took, idle)
	}
	if n := next.parked(); n != 0 {
		t.Fatalf("%d connections still parked after the idle timeout", n)
	}
}

// TestParkedGoOnToNextSuccessor: connections still parked when the
// successor hands over in turn go on to its successor, which answers them.
func TestParkedGoOnToNextSuccessor(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	c, mid := handOverIdle(t, cfg, &http.Server{Handler: answerName("mid", nil)})
	startHTTP(t, cfg, "last", nil)
	joinDrain(t, mid.startDrain(t))
	if body, closing, err := c.get("/2"); err != nil || body != "last /2" || closing {
		t.Fatalf("after two handovers: %q, Connection: close %v, %v", body, closing, err)
	}
}

// TestParkedClosedOnClose: closing the successor closes what it holds
// parked (checkLeaks counts the descriptors), and the client sees the end.
func TestParkedClosedOnClose(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	c, next := handOverIdle(t, cfg, &http.Server{Handler: answerName("new", nil)})
	next.srv.Close()
	next.upg.Close()
	c.c.SetReadDeadline(time.Now().Add(waitBound))
	if n, err := c.c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("read after the successor closed: %d bytes, %v; want the end of the connection", n, err)
	}
}

// TestParkingLotRetries: a parked connection that becomes readable but
// cannot be adopted (deliver reports false, as the listener's does when
// the process is out of descriptors) stays the lot's and is offered again
// after parkRetry, never dropped; stop returns what is still parked.
func TestParkingLotRetries(t *testing.T) {
	checkLeaks(t)
	clients, sessions := sessionPairs(t, 2)
	tries := make(chan time.Time, 8)
	n := 0 // only the lot's goroutine calls deliver
	lot, err := newParkingLot(0, func(pc parkedConn) bool {
		tries <- time.Now()
		if n++; n == 1 {
			return false // out of descriptors, say
		}
		syscall.Close(pc.fd)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		fd, err := dupFD(s)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := lot.park(fd, nil); !ok {
			t.Fatal("park refused a connection")
		}
	}
	clients[0].Write([]byte("GET"))
	first := recvWithin(t, tries, "the first try")
	if again := recvWithin(t, tries, "the retry"); again.Sub(first) < parkRetry {
		t.Fatalf("retried after %v, want %v", again.Sub(first), parkRetry)
	}
	rest := lot.stop()
	if len(rest) != 1 {
		t.Fatalf("stop returned %d parked connections, want the silent one", len(rest))
	}
	syscall.Close(rest[0].fd)
}

// dupFD returns a duplicate of c's descriptor, as a received one would be.
func dupFD(c net.Conn) (int, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = syscall.Dup(int(s)) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// TestParkedServedOnShutdown: a connection still parked when the
// successor's server shuts down (with no successor of its own) is not
// closed with the listener: its client may be sending. It is served like
// any idle connection during a drain: its next request is answered, with
// "Connection: close", and Shutdown waits for it.
func TestParkedServedOnShutdown(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	c, next := handOverIdle(t, cfg, &http.Server{Handler: answerName("new", nil)})
	drained := inBackground(t, next.shutdown)
	next.waitConns(t, 1, "the parked connection to be served by the draining server")
	body, closing, err := c.get("/2")
	if err != nil || body != "new /2" || !closing {
		t.Fatalf("request on the parked connection during the drain: %q, Connection: close %v, %v; want an answer and Connection: close", body, closing, err)
	}
	joinDrain(t, drained)
}

// TestForwardedBeforeClose: a successor that hands over in turn while it
// holds parked connections, and whose program closes its Upgrader as
// soon as Exit fires (nothing of its own to drain), still passes every one
// of them on: Close waits for the forward instead of cutting it, and the
// last process answers each.
func TestForwardedBeforeClose(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	const n = 64
	old := startHTTP(t, cfg, "old", nil)
	var cs []*httpClient
	for i := range n {
		c := dialHTTP(t, old.addr)
		if body, _, err := c.get(fmt.Sprint("/", i)); err != nil || body != fmt.Sprint("old /", i) {
			t.Fatalf("%q, %v", body, err)
		}
		cs = append(cs, c)
	}
	old.waitConns(t, n, "the connections to be idle")
	mid := startHTTP(t, cfg, "mid", nil)
	joinDrain(t, old.startDrain(t))
	waitFor(t, "the connections to be parked", func() bool { return mid.parked() == n })

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		select {
		case <-mid.upg.Exit():
		case <-time.After(waitBound):
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitBound)
		defer cancel()
		mid.shutdown(ctx)
		mid.upg.Close()
	}()
	startHTTP(t, cfg, "last", nil)
	recvWithin(t, closed, "the middle process to close")
	for i, c := range cs {
		if body, closing, err := c.get("/again"); err != nil || body != "last /again" || closing {
			t.Errorf("connection %d after the middle process closed: %q, Connection: close %v, %v", i, body, closing, err)
		}
	}
}

// TestClosedInCanaryWindowForwards: a process that is closed while its
// successor's canary window runs leaves that successor to serve alone,
// and passes on what it still holds for it (here, parked connections its
// predecessor handed over) rather than close it.
func TestClosedInCanaryWindowForwards(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := startHTTP(t, cfg, "old", nil)
	c := dialHTTP(t, old.addr)
	if body, _, err := c.get("/1"); err != nil || body != "old /1" {
		t.Fatalf("%q, %v", body, err)
	}
	old.waitConns(t, 1, "the connection to be idle")
	canary := cfg
	canary.CanaryWindow = time.Minute // for the middle process's successor
	mid := startGeneration(t, canary, &http.Server{Handler: answerName("mid", nil)}, (*HTTPServer).Serve)
	joinDrain(t, old.startDrain(t))
	waitFor(t, "the connection to be parked", func() bool { return mid.parked() == 1 })
	startHTTP(t, cfg, "last", nil)
	waitFor(t, "the canary window", func() bool { return mid.upg.Status().State == "canary" })
	mid.upg.Close() // the program's server, still serving nothing, is closed at cleanup
	if body, closing, err := c.get("/2"); err != nil || body != "last /2" || closing {
		t.Fatalf("after the middle process closed in the canary window: %q, Connection: close %v, %v", body, closing, err)
	}
}

// TestHeldFD: a parked connection held for passing on gives the link its
// descriptor while open, never after Close (whose number another file
// may have by then), and Close waits for a Control under way.
func TestHeldFD(t *testing.T) {
	checkLeaks(t)
	_, sessions := sessionPairs(t, 1)
	fd, err := dupFD(sessions[0])
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := holdFD(fd)
	rc, err := hc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	inside, release := make(chan struct{}), make(chan struct{})
	controlled := make(chan error, 1)
	go func() {
		controlled <- rc.Control(func(got uintptr) {
			if int(got) != fd {
				t.Errorf("Control gave descriptor %d, want %d", got, fd)
			}
			close(inside)
			<-release
		})
	}()
	recvWithin(t, inside, "Control to run")
	closed := make(chan error, 1)
	go func() { closed <- hc.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while Control was under way")
	case <-time.After(50 * time.Millisecond): // a bound for the negative only
	}
	close(release)
	if err := recvWithin(t, controlled, "Control to return"); err != nil {
		t.Fatal(err)
	}
	if err := recvWithin(t, closed, "Close to return"); err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(uintptr) { t.Error("Control ran after Close") }); err == nil {
		t.Fatal("Control after Close: no error")
	}
}

// TestPassedOnAfterHandover: connections that reach a process after it
// has handed over in turn (its predecessor drains only once released,
// when this process's own successor is ready) go on down the line
// unadopted, and the last process answers them.
func TestPassedOnAfterHandover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	canary := cfg
	canary.CanaryWindow = time.Minute // old waits for mid to hand over in turn
	old := startGeneration(t, canary, &http.Server{Handler: answerName("old", nil)}, (*HTTPServer).Serve)
	const n = 8
	var cs []*httpClient
	for i := range n {
		c := dialHTTP(t, old.addr)
		if body, _, err := c.get(fmt.Sprint("/", i)); err != nil || body != fmt.Sprint("old /", i) {
			t.Fatalf("%q, %v", body, err)
		}
		cs = append(cs, c)
	}
	old.waitConns(t, n, "the connections to be idle")
	drained := old.startDrain(t) // waits for Exit: mid's release
	mid := startHTTP(t, cfg, "mid", nil)
	waitFor(t, "the canary window", func() bool { return old.upg.Status().State == "canary" })
	midDrained := mid.startDrain(t)
	startHTTP(t, cfg, "last", nil) // mid hands over; old, released, drains into mid
	joinDrain(t, drained)
	joinDrain(t, midDrained)
	for i, c := range cs {
		if body, closing, err := c.get("/again"); err != nil || body != "last /again" || closing {
			t.Errorf("connection %d: %q, Connection: close %v, %v", i, body, closing, err)
		}
	}
}

// inPlace reports how many connections g's server handed over in place
// and still holds a copy of.
func (g *httpGeneration) inPlace() int {
	g.srv.mu.Lock()
	defer g.srv.mu.Unlock()
	return len(g.srv.inPlace)
}

// waitGated waits until every connection g serves waits for its next
// request in the gate, where a move in place takes it.
func (g *httpGeneration) waitGated(t *testing.T) {
	t.Helper()
	waitFor(t, "the connections to wait in the gate", func() bool {
		g.srv.mu.Lock()
		defer g.srv.mu.Unlock()
		for _, tr := range g.srv.conns {
			if tr.hc == nil {
				return false
			}
			tr.hc.mu.Lock()
			in := tr.hc.inGate
			tr.hc.mu.Unlock()
			if !in {
				return false
			}
		}
		return true
	})
}

// moveOneInPlace starts old and a successor serving srv, with one idle
// keep-alive connection on old waiting in the gate, and drains old: the
// connection moves in place, and old keeps its copy.
func moveOneInPlace(t *testing.T, cfg Config, srv *http.Server) (*httpClient, *httpGeneration) {
	t.Helper()
	c, old := oneIdle(t, cfg)
	startGeneration(t, cfg, srv, (*HTTPServer).Serve)
	joinDrain(t, old.startDrain(t))
	if n := old.inPlace(); n != 1 {
		t.Fatalf("the old process holds %d connections moved in place, want 1", n)
	}
	return c, old
}

// TestMovedInPlace: the old process hands an idle connection over while
// net/http's goroutine for it stays parked in the gate (it is not woken,
// and keeps its copy); when the client sends, the successor answers the
// whole request (the old process read none of it), and the old process's
// goroutine lets go and closes its copy.
func TestMovedInPlace(t *testing.T) {
	checkLeaks(t)
	c, old := moveOneInPlace(t, testConfig(t), &http.Server{Handler: answerName("new", nil)})
	if body, closing, err := c.get("/2"); err != nil || body != "new /2" || closing {
		t.Fatalf("after the move: %q, Connection: close %v, %v", body, closing, err)
	}
	waitFor(t, "the old process to let go of its copy", func() bool { return old.inPlace() == 0 })
	if body, _, err := c.get("/3"); err != nil || body != "new /3" {
		t.Fatalf("once the old process let go: %q, %v", body, err)
	}
}

// TestMovedInPlaceClosedOnClose: HTTPServer.Close closes the copies of
// connections moved in place, and ends net/http's goroutines parked on
// them (checkLeaks counts both); the successor serves on.
func TestMovedInPlaceClosedOnClose(t *testing.T) {
	checkLeaks(t)
	c, old := moveOneInPlace(t, testConfig(t), &http.Server{Handler: answerName("new", nil)})
	old.srv.Close()
	if n := old.inPlace(); n != 0 {
		t.Fatalf("%d connections moved in place still held after Close", n)
	}
	if body, _, err := c.get("/2"); err != nil || body != "new /2" {
		t.Fatalf("after the old server closed: %q, %v", body, err)
	}
}

// TestHandedInShutDownOnClose: a successor that closes a connection it
// received (its idle timeout here) while the old process still holds a
// copy (moved in place, process not exited) shuts it down first: the
// client sees the end at once, not when the old process exits.
func TestHandedInShutDownOnClose(t *testing.T) {
	checkLeaks(t)
	const idle = 300 * time.Millisecond
	c, _ := moveOneInPlace(t, testConfig(t), &http.Server{Handler: answerName("new", nil), IdleTimeout: idle})
	c.c.SetReadDeadline(time.Now().Add(waitBound))
	n, err := c.c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read on the idle connection: %d bytes, %v; want EOF at the successor's idle timeout", n, err)
	}
}
