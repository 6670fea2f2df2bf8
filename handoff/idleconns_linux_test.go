//go:build linux

package handoff

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// notYet is how long a test watches AcceptConn return nothing for a
// connection that must still be parked: a negative can only be watched
// for a while, and a parked connection never comes by itself.
const notYet = 200 * time.Millisecond

// idleHandedOver starts a successor of old (which serves ln) and hands it
// one connection to ln, with SendIdleConn and state "state", once old is
// told to drain. It returns the client's end and the successor.
func idleHandedOver(t *testing.T, cfg Config, old *Upgrader, ln net.Listener) (net.Conn, *Upgrader) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	session := acceptOne(t, ln)
	echoesThrough(t, client, session, "before")
	next := newUpgrader(t, cfg)
	if _, err := next.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		<-old.Exit()
		sent <- old.SendIdleConn(context.Background(), session, []byte("state"))
	}()
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := recvWithin(t, sent, "SendIdleConn to the successor"); err != nil {
		t.Fatalf("SendIdleConn: %v", err)
	}
	return client, next
}

// stillParked fails t unless AcceptConn on u returns nothing for notYet:
// the connection must still wait for its client.
func stillParked(t *testing.T, u *Upgrader, what string) {
	t.Helper()
	if c, _, err := acceptConnWithin(u, notYet); !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("%s: AcceptConn before the client sent = %v, want the connection still parked (and no io.EOF: it is to come)", what, err)
	}
}

// acceptConnWithin is AcceptConn bounded by d.
func acceptConnWithin(u *Upgrader, d time.Duration) (net.Conn, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return u.AcceptConn(ctx)
}

// TestIdleConnParkedUntilClientSends: a connection handed over with
// SendIdleConn is held in the successor, unadopted, until its client
// sends; then AcceptConn returns it with its state and the byte the client
// sent, and io.EOF only after that, once the predecessor is gone.
func TestIdleConnParkedUntilClientSends(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, ln := readyUpgrader(t, cfg)
	client, next := idleHandedOver(t, cfg, old, ln)
	old.Close()
	stillParked(t, next, "the successor")
	if _, err := client.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	c, state, err := acceptConnWithin(next, waitBound)
	if err != nil || string(state) != "state" {
		t.Fatalf("AcceptConn once the client sent = %q, %v", state, err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(waitBound))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "after" {
		t.Fatalf("read %q, %v from the adopted connection; want after", buf, err)
	}
	if _, _, err := acceptConnWithin(next, waitBound); !errors.Is(err, io.EOF) {
		t.Fatalf("AcceptConn once everything was accepted = %v, want io.EOF", err)
	}
}

// TestIdleConnGoesOnAtHandover: an idle connection still parked when its
// process hands over goes on to the next one as it is, state and all,
// and the process's AcceptConn ends with io.EOF rather than wait for it.
func TestIdleConnGoesOnAtHandover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	gen1, ln := readyUpgrader(t, cfg)
	client, gen2 := idleHandedOver(t, cfg, gen1, ln)
	gen1.Close()
	eof := make(chan error, 1)
	go func() {
		_, _, err := acceptConnWithin(gen2, waitBound)
		eof <- err
	}()
	gen3, _ := readyUpgrader(t, cfg)
	if err := recvWithin(t, eof, "gen2's AcceptConn"); !errors.Is(err, io.EOF) {
		t.Fatalf("gen2's AcceptConn after its handover = %v, want io.EOF", err)
	}
	stillParked(t, gen3, "gen3")
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c, state, err := acceptConnWithin(gen3, waitBound)
	if err != nil || string(state) != "state" {
		t.Fatalf("gen3's AcceptConn = %q, %v", state, err)
	}
	c.Close()
}

// TestIdleConnsReturnedOnStop: when the process holding parked idle
// connections is told to stop, AcceptConn returns each at once, for the
// program to close its way (a WebSocket server with 1001 going away).
func TestIdleConnsReturnedOnStop(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, ln := readyUpgrader(t, cfg)
	_, next := idleHandedOver(t, cfg, old, ln)
	old.Close()
	next.Stop()
	c, state, err := acceptConnWithin(next, waitBound)
	if err != nil || string(state) != "state" {
		t.Fatalf("AcceptConn after Stop = %q, %v; want the parked connection", state, err)
	}
	c.Close()
	if _, _, err := acceptConnWithin(next, waitBound); !errors.Is(err, io.EOF) {
		t.Fatalf("AcceptConn after that = %v, want io.EOF", err)
	}
}

// TestIdleConnClosedOnClose: Close closes a parked idle connection, which
// nobody will serve: its client reads EOF, and no descriptor is left.
func TestIdleConnClosedOnClose(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, ln := readyUpgrader(t, cfg)
	client, next := idleHandedOver(t, cfg, old, ln)
	old.Close()
	next.Close()
	client.SetReadDeadline(time.Now().Add(waitBound))
	if n, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the client of a parked connection read %d bytes, %v after Close; want EOF", n, err)
	}
}

// TestIdleConnToSuccessorWithoutIt: a successor that does not say
// CapIdleConns gets an idle connection as SendConn's: AcceptConn returns
// it at once.
func TestIdleConnToSuccessorWithoutIt(t *testing.T) {
	checkLeaks(t)
	saved := speaks
	t.Cleanup(func() { speaks = saved }) // after the Upgraders' Close: registered first
	speaks.caps &^= wire.CapIdleConns
	cfg := testConfig(t)
	old, ln := readyUpgrader(t, cfg)
	_, next := idleHandedOver(t, cfg, old, ln)
	c, state, err := acceptConnWithin(next, waitBound)
	if err != nil || string(state) != "state" {
		t.Fatalf("AcceptConn = %q, %v; want the connection at once", state, err)
	}
	c.Close()
}
