package handoff

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// linkPair returns an open successorLink and the successor's end of it.
func linkPair(t *testing.T) (*successorLink, *ctl.Conn) {
	t.Helper()
	server, successor := ctlPair(t)
	link := newSuccessorLink(server, 0, []string{"web"}, wire.CapConns, 10*time.Second)
	link.open(nil)
	t.Cleanup(link.close)
	return link, successor
}

// sessionPairs returns n connected TCP pairs: the clients' ends and the
// server's.
func sessionPairs(t *testing.T, n int) (clients, sessions []net.Conn) {
	t.Helper()
	ln := localListener(t)
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		sessions = append(sessions, acceptOne(t, ln))
	}
	return clients, sessions
}

// receiveConn reads the next connection the link sends, as the successor
// would; the connection is closed at cleanup.
func receiveConn(t *testing.T, successor *ctl.Conn) (wire.Conn, net.Conn) {
	t.Helper()
	m, fds, err := successor.Recv(time.Now().Add(10 * time.Second))
	if err != nil {
		t.Fatalf("successor: %v", err)
	}
	cm, ok := m.(wire.Conn)
	if !ok || len(fds) != 1 {
		ctl.CloseFDs(fds)
		t.Fatalf("successor got %#v with %d fds", m, len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "handed-over")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return cm, c
}

// sendAll starts one link.send per session, each with its index as state.
func sendAll(link *successorLink, sessions []net.Conn) <-chan error {
	errs := make(chan error, len(sessions))
	for i, s := range sessions {
		go func() { errs <- link.send(context.Background(), "web", s.(syscall.Conn), []byte{byte(i)}, false) }()
	}
	return errs
}

// TestLinkPipelines: connections do not wait for each other's ack. The
// successor reads all of them before it acknowledges any, in reverse
// order; every send succeeds, and every descriptor is the client's
// connection.
func TestLinkPipelines(t *testing.T) {
	checkLeaks(t)
	link, successor := linkPair(t)
	clients, sessions := sessionPairs(t, 8)
	errs := sendAll(link, sessions)

	received := make([]net.Conn, len(sessions))
	var ids []uint64
	for range sessions {
		cm, c := receiveConn(t, successor)
		if cm.Key != "web" || len(cm.State) != 1 {
			t.Fatalf("successor got %#v", cm)
		}
		received[cm.State[0]] = c
		ids = append(ids, cm.ID)
	}
	for i := len(ids) - 1; i >= 0; i-- {
		if err := successor.Send(wire.ConnAck{ID: ids[i], OK: true}, nil, time.Now().Add(10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	for range sessions {
		if err := recvWithin(t, errs, "a send to be acknowledged"); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	for i, c := range received {
		echoesThrough(t, clients[i], c, "moved")
	}
}

// TestLinkFails: when the successor goes away, or acknowledges a
// connection it was never sent, every send waiting for an ack returns
// ErrConnUnknown (the successor got those connections and may serve them:
// they are not the caller's any more), and the link takes no more.
func TestLinkFails(t *testing.T) {
	for name, misbehave := range map[string]func(*ctl.Conn) error{
		"exits": func(successor *ctl.Conn) error { return successor.Close() },
		"acks a stranger": func(successor *ctl.Conn) error {
			return successor.Send(wire.ConnAck{ID: 1000, OK: true}, nil, time.Now().Add(10*time.Second))
		},
	} {
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			link, successor := linkPair(t)
			_, sessions := sessionPairs(t, 3)
			errs := sendAll(link, sessions)
			for range sessions {
				_, fds, err := successor.Recv(time.Now().Add(10 * time.Second))
				ctl.CloseFDs(fds)
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := misbehave(successor); err != nil {
				t.Fatal(err)
			}
			for range sessions {
				if err := recvWithin(t, errs, "a send to fail"); !errors.Is(err, ErrConnUnknown) || errors.Is(err, ErrNoSuccessor) {
					t.Fatalf("send = %v, want ErrConnUnknown", err)
				}
			}
			if link.accepts("web") {
				t.Fatal("a failed link still takes connections")
			}
			// The sessions are still the caller's to use.
			if _, err := sessions[0].Write([]byte("x")); err != nil {
				t.Fatalf("session unusable after a failed send: %v", err)
			}
		})
	}
}

// TestHTTPShutdownWaitsForLink: Exit closes a moment before the link to
// the successor opens. Until it has, Shutdown leaves idle connections to
// net/http here, which answers their next request; then each moves to
// the successor without a byte of the request after it.
func TestHTTPShutdownWaitsForLink(t *testing.T) {
	checkLeaks(t)
	g := startHTTP(t, testConfig(t), "old", nil)
	idle := dialHTTP(t, g.addr)
	if body, _, err := idle.get("/1"); err != nil || body != "old /1" {
		t.Fatalf("%q, %v", body, err)
	}
	server, successor := ctlPair(t)
	link := newSuccessorLink(server, 0, g.upg.reg.keys(), wire.CapConns, 10*time.Second)
	t.Cleanup(func() { // a failed test may not have opened it; Close waits for open
		select {
		case <-link.opened:
		default:
			link.open(errors.New("test over"))
		}
	})
	g.upg.mu.Lock()
	g.upg.succ = link
	g.upg.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.srv.Shutdown(ctx) }()
	waitFor(t, "Shutdown to wait for the link", func() bool { return goroutineIn("(*successorLink).waitOpen") })
	if body, closing, err := idle.get("/2"); err != nil || body != "old /2" || closing {
		t.Fatalf("request while the link is not open: %q, Connection: close %v, %v", body, closing, err)
	}

	link.open(nil)
	cm, moved := receiveConn(t, successor)
	if err := successor.Send(wire.ConnAck{ID: cm.ID, OK: true}, nil, time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := recvWithin(t, done, "Shutdown to return once the connection moved"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	echoesThrough(t, idle.c, moved, "GET /3 HTTP/1.1\r\n")
}

// goroutineIn reports whether some goroutine is running fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte(fn))
}

// TestLinkAsyncSettles: sendAsync, which HTTPServer's drain uses, gives
// each connection the outcome send would have returned, from the link's
// finisher: taken (nil), refused (ErrNoSuccessor: still the caller's), or
// sent with no answer within the step timeout (ErrConnUnknown), which
// the finisher settles without a waiting sender; and link.close joins the
// finisher once everything is settled.
func TestLinkAsyncSettles(t *testing.T) {
	checkLeaks(t)
	server, successor := ctlPair(t)
	const step = 300 * time.Millisecond
	link := newSuccessorLink(server, 0, []string{"web"}, wire.CapConns, step)
	link.open(nil)
	_, sessions := sessionPairs(t, 3)
	outcomes := make([]chan error, len(sessions))
	start := time.Now()
	for i, s := range sessions {
		outcomes[i] = make(chan error, 1)
		if err := link.sendAsync("web", s.(syscall.Conn), func(err error) { outcomes[i] <- err }); err != nil {
			t.Fatalf("sendAsync %d: %v", i, err)
		}
	}
	var ids []uint64
	for range sessions {
		cm, _ := receiveConn(t, successor)
		ids = append(ids, cm.ID)
	}
	for i, ok := range []bool{true, false} { // the third is never answered
		if err := successor.Send(wire.ConnAck{ID: ids[i], OK: ok, Reason: "full"}, nil, time.Now().Add(waitBound)); err != nil {
			t.Fatal(err)
		}
	}
	if err := recvWithin(t, outcomes[0], "the taken connection's outcome"); err != nil {
		t.Fatalf("taken: %v", err)
	}
	if err := recvWithin(t, outcomes[1], "the refused connection's outcome"); !errors.Is(err, ErrNoSuccessor) || errors.Is(err, ErrConnUnknown) {
		t.Fatalf("refused: %v, want ErrNoSuccessor", err)
	}
	err := recvWithin(t, outcomes[2], "the unanswered connection's outcome")
	if took := time.Since(start); !errors.Is(err, ErrConnUnknown) || took < step {
		t.Fatalf("unanswered: %v after %v, want ErrConnUnknown after the step timeout of %v", err, took, step)
	}
	link.close() // joins the finisher: checkLeaks counts goroutines
}
