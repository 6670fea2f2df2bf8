package handoff

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// acceptOne accepts one connection from ln, with a deadline.
func acceptOne(t testing.TB, ln net.Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection to accept")
		return nil
	}
}

// connFromElsewhere returns both ends of a TCP connection made to a
// listener of its own, to hand to a listener as a predecessor would; the
// test cleans both up.
func connFromElsewhere(t testing.TB) (client, server net.Conn) {
	t.Helper()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	client, err = net.Dial("tcp", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server = acceptOne(t, other)
	return client, server
}

// echoesThrough checks that what the client sends arrives on server.
func echoesThrough(t testing.TB, client, server net.Conn, msg string) {
	t.Helper()
	if _, err := client.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != msg {
		t.Fatalf("server read %q, %v; want %q", buf, err, msg)
	}
}

// TestSendConn: the general API hands a connection and its state to the
// successor, which resumes it; the client keeps its connection.
func TestSendConn(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, ln := readyUpgrader(t, cfg)
	if err := old.SendConn(context.Background(), nil, nil); err == nil {
		t.Fatal("SendConn of nil succeeded")
	}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	session := acceptOne(t, ln)
	echoesThrough(t, client, session, "before")
	if err := old.SendConn(context.Background(), session, []byte("state")); !errors.Is(err, ErrNoSuccessor) {
		t.Fatalf("SendConn before a handover = %v, want ErrNoSuccessor", err)
	}

	next := newUpgrader(t, cfg)
	if _, err := next.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		<-old.Exit() // right away: the successor may still be finishing Ready
		sent <- old.SendConn(context.Background(), session, []byte("state"))
	}()
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := recvWithin(t, sent, "SendConn to the successor"); err != nil {
		t.Fatalf("SendConn: %v", err)
	}
	c, state, err := next.AcceptConn(context.Background())
	if err != nil || string(state) != "state" {
		t.Fatalf("AcceptConn = %q, %v", state, err)
	}
	defer c.Close()
	echoesThrough(t, client, c, "after")
	old.Close()
	if _, _, err := next.AcceptConn(context.Background()); !errors.Is(err, io.EOF) {
		t.Fatalf("AcceptConn once the predecessor is gone = %v, want io.EOF", err)
	}
}

// TestConnsFollowTheChain: a connection handed over to a process that has
// itself handed over goes on to its successor, whether it arrives after
// that handover or was still queued for Accept.
func TestConnsFollowTheChain(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	gen1, ln1 := readyUpgrader(t, cfg)
	addr := ln1.Addr().String()
	var clients, sessions []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		sessions = append(sessions, acceptOne(t, ln1))
	}
	key := "tcp|127.0.0.1:0"
	send := func(i int) {
		t.Helper()
		if err := gen1.successor().send(context.Background(), key, sessions[i].(syscall.Conn), nil, false); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}

	readyUpgrader(t, cfg) // gen2
	send(0)               // queued in gen2's listener; gen2 never accepts it

	_, ln3 := readyUpgrader(t, cfg) // gen3
	send(1)                         // reaches gen2 after its handover

	// The queued connection goes on once gen2 has confirmed its own
	// handover, so the two may reach gen3 in either order.
	got := map[string]bool{}
	for i, client := range clients {
		if _, err := client.Write([]byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	for range clients {
		c := acceptOne(t, ln3)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("gen3 read: %v", err)
		}
		got[string(b)] = true
	}
	if !got["a"] || !got["b"] {
		t.Fatalf("gen3 got the connections of %v, want a and b", got)
	}
}
