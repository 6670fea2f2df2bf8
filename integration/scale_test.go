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
	rssEmpty := mustRSS(t, pid)

	clients := scaleClients(t, s.Addr, n)
	rssHolding := mustRSS(t, pid)
	t.Logf("%d idle keep-alive connections to process %d (open-file limit %d); its RSS %s with none, %s with them (%s per connection)",
		n, pid, serverLimit, mib(rssEmpty), mib(rssHolding), perConn(rssHolding-rssEmpty, n))

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
	cpuBefore, _ := procfs.CPUTime(pid)
	oldCPU := make(chan time.Duration, 1)
	go func() { // the old process's CPU time, up to its last moment
		last := cpuBefore
		for {
			d, err := procfs.CPUTime(pid)
			if err != nil {
				oldCPU <- last - cpuBefore
				return
			}
			last = d
			time.Sleep(time.Millisecond)
		}
	}()
	hup := time.Now()
	s.Signal(pid, syscall.SIGHUP)
	next := s.WaitPID(0, pid, 60*time.Second)
	ready := time.Now()
	rssReady, _ := procfs.RSS(next) // already adopting, perhaps: a lower bound
	moveCtx, stopMove := context.WithCancel(context.Background())
	during := make(chan *loadgen.Result, 1)
	go func() { during <- loadgen.Run(moveCtx, other) }()
	ws := s.WaitExit(pid, 60*time.Second)
	exited := time.Now()
	stopMove()
	duringMove := <-during
	rssMoved := mustRSS(t, next)
	nextCPU, _ := procfs.CPUTime(next)
	if ws.ExitStatus() != 0 {
		t.Errorf("old process %d exited with %v", pid, ws)
	}
	var load string
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	t.Logf("SIGHUP → successor ready %v; ready → old process exited %v (CPU time: old process %v from SIGHUP to exit, successor %v from its start; load average %s)",
		ready.Sub(hup), exited.Sub(ready), <-oldCPU, nextCPU, load)
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
	forEach(clients, func(c *rawClient) {
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
	})
	t.Logf("%d requests after the restart answered in %v: %d EOF/reset, %d other errors, %d not by the successor %d (first: %v)",
		n, time.Since(sent), eof.Load(), otherErr.Load(), wrong.Load(), next, firstErr.Load())
	if eof.Load()+otherErr.Load()+wrong.Load() > 0 {
		t.Errorf("%d of %d connections lost or not answered by the successor", eof.Load()+otherErr.Load()+wrong.Load(), n)
	}
	rssServed := mustRSS(t, next)
	t.Logf("successor %d's RSS: %s at ready, %s once the old process had exited, %s once every connection was served again: "+
		"%s per moved connection after the move, %s after a request on each (over the first process's %s with no connections)",
		next, mib(rssReady), mib(rssMoved), mib(rssServed), perConn(rssMoved-rssEmpty, n), perConn(rssServed-rssEmpty, n), mib(rssEmpty))
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
	var failed atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+w%16))}}
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					failed.CompareAndSwap(nil, fmt.Sprintf("dial %d: %v", i, err))
					return
				}
				clients[i].conn, clients[i].br = c, bufio.NewReader(c)
				if _, _, err := clients[i].get("/"); err != nil {
					failed.CompareAndSwap(nil, fmt.Sprintf("request %d: %v", i, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c.conn != nil {
				c.conn.Close()
			}
		}
	})
	if f := failed.Load(); f != nil {
		t.Fatal(f)
	}
	return clients
}

// forEach runs f on every client, a few at a time.
func forEach(clients []*rawClient, f func(*rawClient)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(clients); i = int(next.Add(1) - 1) {
				f(clients[i])
			}
		}()
	}
	wg.Wait()
}

// mustRSS is process pid's resident set size, or fails t.
func mustRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := procfs.RSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// perConn is b bytes shared out over n connections, in KiB.
func perConn(b int64, n int) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024/float64(n)) }
