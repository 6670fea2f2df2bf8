//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// plainFrom is the count above which TestWebSocketsMoveAtScale runs the
// example built without the race detector: a race-enabled binary dies at
// 8,128 live goroutines, and the example runs one per WebSocket.
const plainFrom = 4000

// TestWebSocketsMoveAtScale: WS_SCALE_CONNS (1,000; `make scale` runs
// 18,000) idle WebSockets, from several loopback source addresses so
// that ephemeral ports suffice, each asked one question; one SIGHUP; once
// the old process has exited, each is asked again. None is closed, every
// one is answered by the successor with its counter continued, and the
// old process's log says it moved all of them. Other requests (the page,
// each on a new connection, from clients that never retry) go on through
// the move, and none may fail. It logs the time from the successor's
// ready to the old process's exit, both processes' CPU time, the other
// requests' latency before and during the move, and the successor's RSS
// per moved WebSocket.
func TestWebSocketsMoveAtScale(t *testing.T) {
	n := envInt(t, "WS_SCALE_CONNS", 1000)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if uint64(n)+200 > lim.Max {
		t.Fatalf("%d WebSockets need %d descriptors in this process; the limit is %d", n, n+200, lim.Max)
	}
	if lim.Cur < uint64(n)+200 { // the example's processes inherit it
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	b := builder
	if n > plainFrom {
		dir := t.TempDir()
		b = &testbed.Builder{ModuleRoot: ".", Dir: dir}
	}
	testbed.CheckNoChildren(t, reaper)
	s := testbed.NewService(t, reaper, b.Build(t, "../websocket"))
	pid := s.Start(append(s.DefaultArgs(), "-canary-window=-1s")...)
	s.WaitPID(pid, 0, 30*time.Second)
	rssEmpty := testbed.RSS(t, pid)

	clients := make([]*wsClient, n)
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	})
	began := time.Now()
	if err := testbed.ForEach(n, func(w, i int) error {
		c, err := dialFrom(s.Addr, net.IPv4(127, 0, 1, byte(1+w%16)))
		if err != nil {
			return fmt.Errorf("WebSocket %d: %w", i, err)
		}
		clients[i] = c
		if a, err := c.ask("before"); err != nil || a.pid != pid || a.count != 1 {
			return fmt.Errorf("WebSocket %d before the restart: %+v, %v", i, a, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rssHolding := testbed.RSS(t, pid)
	t.Logf("%d WebSockets open and answered by process %d in %v; its RSS %s with none, %s with them (%s each)",
		n, pid, time.Since(began), testbed.MiB(rssEmpty), testbed.MiB(rssHolding), testbed.PerConn(rssHolding-rssEmpty, n))

	other := loadgen.Config{Addr: s.Addr, Mode: loadgen.NewConn, Workers: 2, Interval: 2 * time.Millisecond, Timeout: 10 * time.Second}
	steadyCtx, stopSteady := context.WithTimeout(context.Background(), time.Second)
	steady := loadgen.Run(steadyCtx, other)
	stopSteady()
	moveCtx, stopMove := context.WithCancel(context.Background())
	defer stopMove() // if the move fails the test: the load ends with it
	during := make(chan *loadgen.Result, 1)
	m := testbed.MoveOnce(t, s, pid, 2*time.Minute, func(int) {
		go func() { during <- loadgen.Run(moveCtx, other) }()
	})
	stopMove()
	duringMove := <-during
	for what, r := range map[string]*loadgen.Result{"before the restart": steady, "during the move": duringMove} {
		if r.OK != r.Requests || r.OK == 0 {
			t.Errorf("other requests %s: %v", what, r)
		}
	}
	t.Logf("other requests (the page, a new connection each, %d clients every %v): before the restart p50 %v p99 %v max %v (%d); "+
		"from ready until the old process exited p50 %v p99 %v max %v (%d)",
		other.Workers, other.Interval,
		steady.Latency.Quantile(0.5), steady.Latency.Quantile(0.99), steady.Latency.Max(), steady.Latency.Count(),
		duringMove.Latency.Quantile(0.5), duringMove.Latency.Quantile(0.99), duringMove.Latency.Max(), duringMove.Latency.Count())
	next := m.Next
	rssMoved := testbed.RSS(t, next)
	if m.Status.ExitStatus() != 0 {
		t.Errorf("old process %d exited with %v", pid, m.Status)
	}
	t.Log(m)
	drains := drainsInLog(t, s)
	if len(drains) != 1 || drains[0].moved != n || drains[0].closed != 0 {
		t.Errorf("drains in the log: %+v; want one that moved %d and closed none", drains, n)
	} else {
		t.Logf("the old process's drain: moved %d, closed %d, took %v", drains[0].moved, drains[0].closed, drains[0].took)
	}

	var failed atomic.Int64
	var first atomic.Value
	asked := time.Now()
	testbed.ForEach(n, func(_, i int) error {
		if a, err := clients[i].ask("after"); err != nil || a.pid != next || a.count != 2 {
			failed.Add(1)
			first.CompareAndSwap(nil, fmt.Sprintf("WebSocket %d: %+v, %v", i, a, err))
		}
		return nil
	})
	t.Logf("%d WebSockets asked again in %v: %d not answered by the successor %d with the count continued (first: %v)",
		n, time.Since(asked), failed.Load(), next, first.Load())
	if failed.Load() > 0 {
		t.Errorf("%d of %d WebSockets lost or not answered by the successor", failed.Load(), n)
	}
	t.Logf("successor %d's RSS: %s once the old process had exited (%s per moved WebSocket over the first process's %s with none)",
		next, testbed.MiB(rssMoved), testbed.PerConn(rssMoved-rssEmpty, n), testbed.MiB(rssEmpty))
	for _, c := range clients {
		c.conn.Close()
	}
	s.Signal(next, syscall.SIGTERM)
	s.WaitExit(next, time.Minute)
}

// dialFrom opens a WebSocket to addr from the loopback address src,
// with a small read buffer: thousands of them share this process.
func dialFrom(addr string, src net.IP) (*wsClient, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
	d := ws.Dialer{NetDial: nd.DialContext, ReadBufferSize: 512}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/ws")
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, 512)
	}
	return &wsClient{conn: conn, br: br}, nil
}
