//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/procfs"
	"github.com/handoffd/handoff/internal/testbed"
)

// envScaleConns sets how many idle keep-alive connections
// TestIdleConnectionsMoveAtScale holds; the default keeps CI quick, and
// `make scale` runs the full 18,000.
const envScaleConns = "HANDOFF_SCALE_CONNS"

// plainBuilder builds without the race detector: a race-enabled binary
// dies at 8,128 live goroutines, and net/http runs one per connection.
var plainBuilder struct {
	once sync.Once
	b    *testbed.Builder
}

func plainBinary(t testing.TB, pkg string) string {
	plainBuilder.once.Do(func() {
		dir, err := os.MkdirTemp("", "handoff-plain")
		if err != nil {
			t.Fatal(err)
		}
		plainBuilder.b = &testbed.Builder{ModuleRoot: "..", Dir: dir}
	})
	return plainBuilder.b.Build(t, pkg)
}

// TestIdleConnectionsMoveAtScale: n idle keep-alive connections (2,000,
// or HANDOFF_SCALE_CONNS) on examples/httpserver, whose processes run
// with an open-file limit of n + n/2 + 500 (at most the machine's 20,000):
// room for every connection once, not twice. One SIGHUP; once the old
// process has exited, every connection sends a request: none gets EOF or
// a reset, and the successor answers every one. It logs the old
// process's exit time after its successor was ready, both processes' CPU
// time, the successor's RSS per moved connection, and the latency of
// other requests (new connections from clients that never retry, none of
// which may fail) while the successor adopts the connections, beside
// their steady latency before the restart.
func TestIdleConnectionsMoveAtScale(t *testing.T) {
	n := 2000
	if v := os.Getenv(envScaleConns); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive count", envScaleConns, v)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if uint64(n)+200 > lim.Max {
		t.Fatalf("%d connections need %d descriptors in this process; the limit is %d", n, n+200, lim.Max)
	}
	if lim.Cur < uint64(n)+200 {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	serverLimit := min(uint64(n+n/2+500), lim.Max)

	checkNoChildren(t)
	s := newService(t, plainBinary(t, "./examples/httpserver"))
	start := func() int {
		args := append([]string{"-c", `ulimit -n "$0" && exec "$@"`, strconv.FormatUint(serverLimit, 10), s.Bin},
			append(s.DefaultArgs(), "-canary-window", "-1s")...)
		return s.StartProgram("/bin/sh", args...)
	}
	pid := start()
	s.WaitPID(pid, 0, 30*time.Second)
	testbed.WaitServing(t, s.Addr, pid)
	rssEmpty := testbed.RSS(t, pid)

	clients := scaleClients(t, s.Addr, n)
	rssHolding := testbed.RSS(t, pid)
	t.Logf("%d idle keep-alive connections to process %d (open-file limit %d); its RSS %s with none, %s with them (%s per connection)",
		n, pid, serverLimit, testbed.MiB(rssEmpty), testbed.MiB(rssHolding), testbed.PerConn(rssHolding-rssEmpty, n))

	// Other requests, each on a new connection, from clients that never
	// retry: a steady second of them before the restart, then from the
	// successor's ready until the old process has exited (the new
	// connections all go to the successor while it adopts the old ones).
	other := loadgen.Config{Addr: s.Addr, Mode: loadgen.NewConn, Workers: 2, Interval: 2 * time.Millisecond, Timeout: 10 * time.Second}
	steadyCtx, stopSteady := context.WithTimeout(context.Background(), time.Second)
	steady := loadgen.Run(steadyCtx, other)
	stopSteady()
	requireNoFailures(t, steady)

	from := s.LogSize()
	moveCtx, stopMove := context.WithCancel(context.Background())
	defer stopMove() // if the move fails the test: the load ends with it
	during := make(chan *loadgen.Result, 1)
	var rssReady int64
	m := testbed.MoveOnce(t, s, pid, time.Minute, func(next int) {
		rssReady, _ = procfs.RSS(next) // already adopting, perhaps: a lower bound
		go func() { during <- loadgen.Run(moveCtx, other) }()
	})
	stopMove()
	duringMove := <-during
	next := m.Next
	rssMoved := testbed.RSS(t, next)
	if m.Status.ExitStatus() != 0 {
		t.Errorf("old process %d exited with %v", pid, m.Status)
	}
	t.Log(m)
	failures := 0
	for _, line := range strings.Split(string(s.LogFrom(from)), "\n") {
		switch {
		case strings.Contains(line, "handed over"):
			t.Log(line)
		case strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR"):
			if failures++; failures <= 3 {
				t.Log(line)
			}
		}
	}
	t.Logf("%d warnings in the log", failures)
	requireNoFailures(t, duringMove)
	t.Logf("other requests (new connections, %d clients every %v): steady before the restart p50 %v p99 %v max %v (%d); "+
		"from ready until the old process exited p50 %v p99 %v max %v (%d, answered by %v)",
		other.Workers, other.Interval,
		steady.Latency.Quantile(0.5), steady.Latency.Quantile(0.99), steady.Latency.Max(), steady.Latency.Count(),
		duringMove.Latency.Quantile(0.5), duringMove.Latency.Quantile(0.99), duringMove.Latency.Max(), duringMove.Latency.Count(), duringMove.PIDs)

	var eof, otherErr, wrong atomic.Int64
	var firstErr atomic.Value
	sent := time.Now()
	testbed.ForEach(len(clients), func(_, i int) error {
		c := clients[i]
		body, _, err := c.get("/after")
		switch {
		case err != nil:
			if strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset") {
				eof.Add(1)
			} else {
				otherErr.Add(1)
			}
			firstErr.CompareAndSwap(nil, err.Error())
		case !strings.HasPrefix(body, strconv.Itoa(next)+"\n"):
			wrong.Add(1)
			firstErr.CompareAndSwap(nil, "answered "+strings.SplitN(body, "\n", 2)[0])
		}
		return nil
	})
	t.Logf("%d requests after the restart answered in %v: %d EOF/reset, %d other errors, %d not by the successor %d (first: %v)",
		n, time.Since(sent), eof.Load(), otherErr.Load(), wrong.Load(), next, firstErr.Load())
	if eof.Load()+otherErr.Load()+wrong.Load() > 0 {
		t.Errorf("%d of %d connections lost or not answered by the successor", eof.Load()+otherErr.Load()+wrong.Load(), n)
	}
	rssServed := testbed.RSS(t, next)
	t.Logf("successor %d's RSS: %s at ready, %s once the old process had exited, %s once every connection was served again: "+
		"%s per moved connection after the move, %s after a request on each (over the first process's %s with no connections)",
		next, testbed.MiB(rssReady), testbed.MiB(rssMoved), testbed.MiB(rssServed), testbed.PerConn(rssMoved-rssEmpty, n), testbed.PerConn(rssServed-rssEmpty, n), testbed.MiB(rssEmpty))
	for _, c := range clients {
		c.conn.Close()
	}
	s.Signal(next, syscall.SIGTERM)
	s.WaitExit(next, time.Minute)
}

// scaleClients opens n keep-alive connections from several loopback
// source addresses (so that ephemeral ports suffice), sends one request
// on each, and leaves them idle. A few workers do it, not a goroutine per
// connection.
func scaleClients(t *testing.T, addr string, n int) []*rawClient {
	t.Helper()
	clients := make([]*rawClient, n)
	for i := range clients {
		clients[i] = &rawClient{}
	}
	err := testbed.ForEach(n, func(w, i int) error {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+w%16))}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("dial %d: %w", i, err)
		}
		clients[i].conn, clients[i].br = c, bufio.NewReader(c)
		if _, _, err := clients[i].get("/"); err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range clients {
			if c.conn != nil {
				c.conn.Close()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return clients
}
