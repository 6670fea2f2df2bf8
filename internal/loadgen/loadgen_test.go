package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunCountsSuccess(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("close") != "" {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprint(w, "4242\nhello\n")
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	for _, mode := range []Mode{KeepAlive, NewConn, Mixed} {
		t.Run(mode.String(), func(t *testing.T) {
			r := Run(context.Background(), Config{Addr: addr, Mode: mode, Workers: 2, MaxRequests: 200})
			if r.Requests != 200 || r.OK != 200 || r.FailedCount() != 0 || r.PIDs[4242] != 200 {
				t.Fatalf("%v (%v)", r, r.Errors)
			}
			bounds := map[Mode][2]int64{KeepAlive: {2, 2}, NewConn: {200, 200}, Mixed: {2, 199}}[mode]
			if lo, hi := bounds[0], bounds[1]; r.Conns < lo || r.Conns > hi {
				t.Errorf("%d connections, want %d to %d", r.Conns, lo, hi)
			}
		})
	}
	t.Run("server closes", func(t *testing.T) {
		r := Run(context.Background(), Config{Addr: addr, Workers: 1, MaxRequests: 10, Path: "/?close=1"})
		if r.OK != 10 || r.Conns != 10 {
			t.Fatalf("%v, %d conns: a Connection: close answer must end the connection, not fail", r, r.Conns)
		}
	})
}

// TestRunMoved: a response from another pid on a connection kept open
// counts as a move; on a new connection it does not.
func TestRunMoved(t *testing.T) {
	for _, tc := range []struct {
		mode  Mode
		moved int64
	}{{KeepAlive, 1}, {NewConn, 0}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			var served atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				pid := 1 + served.Add(1)/6 // 1 for five requests, then 2
				fmt.Fprintf(w, "%d\n", pid)
			}))
			defer srv.Close()
			r := Run(context.Background(), Config{Addr: srv.Listener.Addr().String(), Mode: tc.mode, Workers: 1, MaxRequests: 10})
			if r.OK != 10 || len(r.PIDs) != 2 {
				t.Fatalf("%v (%v)", r, r.Errors)
			}
			if n := r.Moved.Count(); n != tc.moved {
				t.Fatalf("%d moves seen, want %d", n, tc.moved)
			}
		})
	}
}

// misbehave runs a raw TCP server that treats every connection with fn.
func misbehave(t *testing.T, fn func(c *net.TCPConn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			fn(c.(*net.TCPConn))
		}
	}()
	return ln.Addr().String()
}

func TestRunClassifiesFailures(t *testing.T) {
	refusing := refusingAddr(t)

	tests := []struct {
		name string
		addr string
		want Kind
	}{
		{"refused", refusing, Refused},
		{"reset", misbehave(t, func(c *net.TCPConn) { c.SetLinger(0); c.Close() }), Reset},
		{"eof", misbehave(t, func(c *net.TCPConn) { c.Close() }), EOF},
		{"status", misbehave(t, func(c *net.TCPConn) {
			fmt.Fprint(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
			c.Close()
		}), Status},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Config{Addr: tt.addr, Workers: 1, MaxRequests: 3})
			if r.Failures[tt.want] != 3 || r.OK != 0 {
				t.Fatalf("%v, want 3 %s failures (%v)", r, tt.want, r.Errors)
			}
		})
	}
}

// TestRunPaced: with an Interval, a client starts a request at most every
// Interval, even against a server that refuses at once.
func TestRunPaced(t *testing.T) {
	refusing := refusingAddr(t)
	const run, interval = 300 * time.Millisecond, 20 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	r := Run(ctx, Config{Addr: refusing, Workers: 2, Interval: interval})
	if most := 2 * (int64(run/interval) + 1); r.Requests > most || r.Requests < 2 {
		t.Fatalf("%d requests in %v from 2 clients paced at %v, want 2 to %d", r.Requests, run, interval, most)
	}
	if r.Failures[Refused] != r.Requests {
		t.Fatalf("%v, want every request refused", r)
	}
}

// refusingAddr returns a loopback address where nothing listens.
func refusingAddr(t testing.TB) string {
	t.Helper()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	return closed.Addr().String()
}
