//go:build linux

package integration_test

import (
	"bufio"
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
// process's exit time after its successor was ready.
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

	clients := scaleClients(t, s.Addr, n)
	t.Logf("%d idle keep-alive connections to process %d (open-file limit %d)", n, pid, serverLimit)

	from := s.LogSize()
	cpuBefore, _ := cpuTime(pid)
	oldCPU := make(chan time.Duration, 1)
	go func() { // the old process's CPU time, up to its last moment
		last := cpuBefore
		for {
			d, err := cpuTime(pid)
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
	ws := s.WaitExit(pid, 60*time.Second)
	exited := time.Now()
	nextCPU, _ := cpuTime(next)
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

	var eof, other, wrong atomic.Int64
	var firstErr atomic.Value
	sent := time.Now()
	forEach(clients, func(c *rawClient) {
		body, _, err := c.get("/after")
		switch {
		case err != nil:
			if strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset") {
				eof.Add(1)
			} else {
				other.Add(1)
			}
			firstErr.CompareAndSwap(nil, err.Error())
		case !strings.HasPrefix(body, strconv.Itoa(next)+"\n"):
			wrong.Add(1)
			firstErr.CompareAndSwap(nil, "answered "+strings.SplitN(body, "\n", 2)[0])
		}
	})
	t.Logf("%d requests after the restart answered in %v: %d EOF/reset, %d other errors, %d not by the successor %d (first: %v)",
		n, time.Since(sent), eof.Load(), other.Load(), wrong.Load(), next, firstErr.Load())
	if eof.Load()+other.Load()+wrong.Load() > 0 {
		t.Errorf("%d of %d connections lost or not answered by the successor", eof.Load()+other.Load()+wrong.Load(), n)
	}
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

// cpuTime is the user and system CPU time pid has used, from
// /proc/PID/stat, in clock ticks of 10 ms.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command (in parentheses, which may hold spaces).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}
