package handoff

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestShutdownClosesNoHandedConn: a connection a predecessor hands over
// just as Shutdown closes the listener (a predecessor still draining, or
// one unparked because its client sent a request) is refused, and stays
// with the predecessor, or is served: closing the listener must not close
// it, for its client may be sending. Shutdown collects what the listener
// holds, then closes it; the connection arrives in between.
func TestShutdownClosesNoHandedConn(t *testing.T) {
	checkLeaks(t)
	u, ln := readyUpgrader(t, testConfig(t))
	srv := &HTTPServer{Upgrader: u, Server: &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}}
	client, handed := connFromElsewhere(t)
	taken := make(chan bool, 1)
	srv.testHookClose = func() {
		ok := ln.(*listener).inject(handed)
		if ok { // its client sends at once, before the listener closes
			fmt.Fprint(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		taken <- ok
	}
	served := startServing(t, srv, ln)
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	if !recvWithin(t, taken, "Shutdown to close the listener") {
		handed.Close() // refused: still the predecessor's, here the test's
	} else {
		client.SetReadDeadline(time.Now().Add(waitBound))
		resp, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			t.Fatalf("a connection the listener took as Shutdown closed it: %v", err)
		}
		resp.Body.Close()
	}
	if err := recvWithin(t, shut, "Shutdown"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	recvWithin(t, served, "Serve to return")
}

// TestExitClosesNoHandedConn: a program that closes its listener as soon
// as Exit is closed closes none of the connections its predecessor handed
// over that it had not accepted yet: they go on to the successor.
func TestExitClosesNoHandedConn(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	u1 := newUpgrader(t, cfg)
	ln1, err := u1.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u1.testHookExit = func() { ln1.Close() } // as a program that acts on Exit
	if err := u1.Ready(); err != nil {
		t.Fatal(err)
	}
	client, handed := connFromElsewhere(t)
	if !ln1.(*listener).inject(handed) {
		t.Fatal("inject refused")
	}

	u2 := newUpgrader(t, cfg)
	ln2, err := u2.Listen("tcp", "127.0.0.1:0") // the same key: the same socket
	if err != nil {
		t.Fatal(err)
	}
	if err := u2.Ready(); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, u1.Exit(), "the old generation's Exit")
	echoesThrough(t, client, acceptOne(t, ln2), "after the handover")
}
