package handoff

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// TLS connections cannot move to a successor: HTTPServer drains them. The
// next request on each is answered in full with "Connection: close", the
// connection is closed only after that response, and one that stays idle
// is closed at half the drain deadline (HTTPServer's doc, README,
// docs/http2.md). These tests hold it to that with a client that writes
// HTTP/1.1 by hand over TLS and never retries.

// startHTTPS is startHTTP over TLS, as examples/httpserver serves it:
// ServeTLS with HTTP/1.1 and HTTP/2 offered by ALPN (the clients below
// choose HTTP/1.1).
func startHTTPS(t testing.TB, cfg Config, name string, handler http.HandlerFunc) *httpGeneration {
	t.Helper()
	srv := &http.Server{
		Handler:   answerName(name, handler),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{testbed.SelfSigned(t)}},
	}
	return startGeneration(t, cfg, srv, func(s *HTTPServer, ln net.Listener) error { return s.ServeTLS(ln, "", "") })
}

// dialHTTPS is dialHTTP over TLS, HTTP/1.1 by ALPN, handshake done.
func dialHTTPS(t testing.TB, addr string) *httpClient {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: waitBound}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("ALPN chose %q, not http/1.1", p)
	}
	return &httpClient{c: c, br: bufio.NewReader(c)}
}

// closedBy waits until the server closes h's connection, at the latest
// by, and returns when the client saw it. Anything but a clean end
// (io.EOF after TLS's close_notify) fails the test.
func (h *httpClient) closedBy(t testing.TB, by time.Time, what string) time.Time {
	t.Helper()
	h.c.SetReadDeadline(by)
	b, err := h.br.ReadByte()
	switch {
	case err == io.EOF:
		return time.Now()
	case err != nil:
		t.Fatalf("%s: waiting for the server to close the connection: %v", what, err)
	default:
		t.Fatalf("%s: the server sent %q after its last response instead of closing", what, b)
	}
	panic("unreachable")
}

// tlsDrains are the two drains a TLS connection meets: a plain stop with
// no successor, and a handover to a successor that takes cleartext
// connections but cannot take TLS ones. start begins the drain of old,
// with a shutdown deadline of d, beside the test.
var tlsDrains = []struct {
	name  string
	start func(t *testing.T, cfg Config, old *httpGeneration, d time.Duration) <-chan drainResult
}{
	{"stop", func(t *testing.T, _ Config, old *httpGeneration, d time.Duration) <-chan drainResult {
		old.upg.Stop()
		return inBackground(t, func(ctx context.Context) (time.Duration, error) {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return old.shutdown(ctx)
		})
	}},
	{"successor", func(t *testing.T, cfg Config, old *httpGeneration, d time.Duration) <-chan drainResult {
		startHTTP(t, cfg, "new", nil)
		return inBackground(t, func(ctx context.Context) (time.Duration, error) { return old.drainWithin(ctx, d) })
	}},
}

// notMoved fails the test if g handed a connection to a successor: none
// of its connections could go.
func notMoved(t testing.TB, g *httpGeneration) {
	t.Helper()
	if n := g.srv.moved.Load(); n != 0 {
		t.Fatalf("%d TLS connections handed over", n)
	}
}

// closedThenDrained checks the end of a drain whose last connection, c,
// was just answered with "Connection: close": the server closes c, and
// Shutdown then returns without waiting for half its deadline (waitBound),
// having handed nothing to the successor.
func closedThenDrained(t testing.TB, old *httpGeneration, c *httpClient, drained <-chan drainResult) {
	t.Helper()
	c.closedBy(t, time.Now().Add(waitBound), "after Connection: close")
	if took := joinDrain(t, drained); took >= waitBound/2 {
		t.Fatalf("Shutdown took %v: it waited for the closed connection until half its deadline", took)
	}
	notMoved(t, old)
}

// TestHTTPTLSIdleConnDrains: a request sent on an idle keep-alive TLS
// connection once the drain began is answered in full, by this process,
// with "Connection: close"; then the server closes the connection, and
// Shutdown returns without waiting for half its deadline.
func TestHTTPTLSIdleConnDrains(t *testing.T) {
	for _, drain := range tlsDrains {
		t.Run(drain.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := testConfig(t)
			old := startHTTPS(t, cfg, "old", nil)
			idle := dialHTTPS(t, old.addr)
			if body, closing, err := idle.get("/1"); err != nil || body != "old /1" || closing {
				t.Fatalf("before the drain: %q, Connection: close %v, %v", body, closing, err)
			}
			drained := drain.start(t, cfg, old, waitBound)
			waitFor(t, "the drain to start", old.srv.draining.Load)

			if body, closing, err := idle.get("/2"); err != nil || body != "old /2" || !closing {
				t.Fatalf("request during the drain: %q, Connection: close %v, %v", body, closing, err)
			}
			closedThenDrained(t, old, idle, drained)
		})
	}
}

// TestHTTPTLSInFlightRequestDrains: a request in flight on a TLS
// connection when the drain begins is not cut: it completes in full, and
// Shutdown does not return before. Its response does not say
// "Connection: close" (HTTPServer decides that when the handler starts,
// before the drain here); the next request on the connection is
// answered with it, and then the server closes the connection, and
// Shutdown waits for that and no longer.
func TestHTTPTLSInFlightRequestDrains(t *testing.T) {
	for _, drain := range tlsDrains {
		t.Run(drain.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := testConfig(t)
			handler, entered, release := slowPath("old")
			old := startHTTPS(t, cfg, "old", handler)
			inflight := dialHTTPS(t, old.addr)
			inflight.c.SetDeadline(time.Now().Add(waitBound))
			fmt.Fprintf(inflight.c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
			recvWithin(t, entered, "the slow request to reach its handler")

			drained := drain.start(t, cfg, old, waitBound)
			waitFor(t, "the drain to start", old.srv.draining.Load)
			select {
			case r := <-drained:
				t.Fatalf("the drain ended (%v, %v) with a request in flight", r.took, r.err)
			default:
			}
			close(release)
			body, closing, err := inflight.read()
			if err != nil || body != "old /slow" {
				t.Fatalf("in-flight request: %q, %v", body, err)
			}
			if !closing {
				if body, closing, err := inflight.get("/next"); err != nil || body != "old /next" || !closing {
					t.Fatalf("the request after the in-flight one: %q, Connection: close %v, %v", body, closing, err)
				}
			}
			closedThenDrained(t, old, inflight, drained)
		})
	}
}

// TestHTTPTLSIdleConnClosedAtHalfDeadline: a TLS connection that sends
// nothing during the drain, whether it has been answered before or has
// only done its handshake, is closed no earlier than half the drain
// deadline (it may be about to send) and before the deadline; Shutdown
// returns within its deadline, without error.
func TestHTTPTLSIdleConnClosedAtHalfDeadline(t *testing.T) {
	const deadline = 4 * time.Second
	for _, drain := range tlsDrains {
		for _, tt := range []struct {
			name     string
			answered bool // the connection had a request answered before the drain
		}{
			{"answered_before", true},
			{"handshake_only", false},
		} {
			answered := tt.answered
			t.Run(drain.name+"/"+tt.name, func(t *testing.T) {
				checkLeaks(t)
				cfg := testConfig(t)
				old := startHTTPS(t, cfg, "old", nil)
				idle := dialHTTPS(t, old.addr)
				if answered {
					if body, closing, err := idle.get("/1"); err != nil || body != "old /1" || closing {
						t.Fatalf("before the drain: %q, Connection: close %v, %v", body, closing, err)
					}
				}
				old.waitConns(t, 1, "the connection to be served")

				start := time.Now() // no later than the drain deadline's start
				drained := drain.start(t, cfg, old, deadline)
				closed := idle.closedBy(t, start.Add(deadline+waitBound), "idle through the drain")
				if at := closed.Sub(start); at < deadline/2 || at >= deadline {
					t.Errorf("idle connection closed %v into a drain of %v: want from half the deadline, before the deadline", at, deadline)
				}
				r := recvWithin(t, drained, "Shutdown to return")
				if r.err != nil || r.took > deadline {
					t.Errorf("Shutdown took %v and returned %v: want nil within %v", r.took, r.err, deadline)
				}
				notMoved(t, old)
			})
		}
	}
}

// TestHTTPTLSDrainLosesNoRequest: keep-alive TLS clients send requests
// back to back while the drain begins. Every request sent is answered in
// full by this process; each client's last answer carries "Connection:
// close", and only then does the server close its connection.
func TestHTTPTLSDrainLosesNoRequest(t *testing.T) {
	for _, drain := range tlsDrains {
		t.Run(drain.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := testConfig(t)
			old := startHTTPS(t, cfg, "old", nil)
			const clients = 4
			var (
				wg       sync.WaitGroup
				requests atomic.Int64
			)
			errs := make(chan error, clients)
			for i := range clients {
				c := dialHTTPS(t, old.addr)
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- c.untilClose(fmt.Sprintf("/c%d/", i), "old", &requests)
				}()
			}
			waitFor(t, "requests to flow", func() bool { return requests.Load() > 4*clients || len(errs) > 0 })
			drained := drain.start(t, cfg, old, waitBound)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			joinDrain(t, drained)
			notMoved(t, old)
			t.Logf("%d requests over %d TLS connections", requests.Load(), clients)
		})
	}
}

// untilClose sends requests for prefix+N back to back until one is
// answered with "Connection: close", then waits for the server to close
// the connection. Each answer must be name's, for its own path. It counts
// the requests answered in n, and gives up after 100,000 or waitBound.
func (h *httpClient) untilClose(prefix, name string, n *atomic.Int64) error {
	end := time.Now().Add(waitBound)
	for i := 0; i < 100_000 && time.Now().Before(end); i++ {
		path := fmt.Sprint(prefix, i)
		body, closing, err := h.get(path)
		if err == nil && body != name+" "+path {
			err = fmt.Errorf("answer %q", body)
		}
		if err != nil {
			return fmt.Errorf("request %s: %w", path, err)
		}
		n.Add(1)
		if closing {
			h.c.SetReadDeadline(end)
			if b, err := h.br.ReadByte(); err != io.EOF {
				return fmt.Errorf("after Connection: close on %s: read %q, %v; want the connection closed", path, b, err)
			}
			return nil
		}
	}
	return fmt.Errorf("%sN: no Connection: close in %v", prefix, waitBound)
}
