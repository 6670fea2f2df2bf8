package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// h2loadRun is one run of h2load: when it began, what it counted.
type h2loadRun struct {
	start                                  time.Time
	total, succeeded, failed, errored, ok2 int64
	err                                    error
	out                                    []byte
}

var h2loadCounts = regexp.MustCompile(`requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, \d+ timeout\s+status codes: (\d+) 2xx`)

// runH2load sends Get calls with h2load (nghttp2): 4 connections, 8
// streams at a time on each, 100 calls per connection. The body is one
// gRPC message, an empty protobuf: the 5-byte frame header alone.
func runH2load(addr, body string) h2loadRun {
	r := h2loadRun{start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.out, r.err = exec.CommandContext(ctx, "h2load", "-c", "4", "-m", "8", "-n", "400", "-d", body,
		"-H", "content-type:application/grpc", "-H", "te:trailers", "http://"+addr+getMethod).CombinedOutput()
	m := h2loadCounts.FindSubmatch(r.out)
	if m == nil {
		if r.err == nil {
			r.err = errNoCounts
		}
		return r
	}
	n := make([]int64, 5)
	for i := range n {
		n[i], _ = strconv.ParseInt(string(m[i+1]), 10, 64)
	}
	r.total, r.succeeded, r.failed, r.errored, r.ok2 = n[0], n[1], n[2], n[3], n[4]
	return r
}

var errNoCounts = errors.New("h2load printed no counts")

// TestH2LoadRestarts drives the server at the HTTP/2 layer with h2load,
// which never retries, while it is upgraded 20 times: runs of h2load one
// after another, each on new connections (4, 100 calls each). The
// processes must have answered exactly as many Get calls as h2load saw
// succeed: h2load reads the HTTP status, 200, not grpc-status, and a call
// the application answered but whose answer was cut would show there.
//
// h2load cannot keep a connection across a drain: it does not open a new
// connection after GOAWAY (only HTTP/1.1's Connection: close makes it
// reconnect), and nghttp2 refuses to start a stream once a GOAWAY has
// arrived, which h2load counts as errored; the rest of that connection's
// requests it counts as failed, though none was sent. Hence two cases:
//   - with the canary window (the default), an old process drains only
//     when the next upgrade releases it, long after h2load's short
//     connections on it have ended: every request must succeed;
//   - without it, an old process drains the moment its successor is
//     ready, and GOAWAY lands on h2load's open connections: requests
//     h2load then gives up on are logged, not failed, but every stream
//     that reached the application must still be answered (with Stop in
//     place of GracefulStop it is not).
func TestH2LoadRestarts(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		t.Skip("h2load is not installed: scripts/deps.sh installs nghttp2-client")
	}
	body := filepath.Join(t.TempDir(), "empty.grpc")
	if err := os.WriteFile(body, make([]byte, 5), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		flags     []string
		allFinish bool // every request h2load starts succeeds
	}{
		{name: "canary window", allFinish: true},
		{name: "no canary window", flags: []string{"-canary-window", "-1s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sum, answered := h2loadRestarts(t, body, 20, tt.flags...)
			t.Logf("h2load: %d requests, %d succeeded, %d failed, %d errored, %d 2xx; the servers answered %d",
				sum.total, sum.succeeded, sum.failed, sum.errored, sum.ok2, answered)
			if sum.ok2 == 0 {
				t.Errorf("h2load: no request succeeded")
			}
			if tt.allFinish && (sum.failed != 0 || sum.errored != 0 || sum.ok2 != sum.total) {
				t.Errorf("h2load: %d of %d requests failed, %d errored, %d answered 2xx", sum.failed, sum.total, sum.errored, sum.ok2)
			}
			if answered != sum.ok2 {
				t.Errorf("the servers answered %d Get calls, h2load saw %d succeed", answered, sum.ok2)
			}
		})
	}
}

// h2loadRestarts runs h2load, run after run, across restarts upgrades of
// a server started with flags, and returns h2load's counts summed, and
// how many of h2load's calls the servers answered.
func h2loadRestarts(t *testing.T, body string, restarts int, flags ...string) (sum h2loadRun, answered int64) {
	svc, _, pid := startService(t, flags...)
	pids := []int{pid}
	a := new(attempts)
	var probes tally
	probe(t, svc.Addr, a, &probes, pid)

	runs := newBoard[h2loadRun]()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			runs.add(runH2load(svc.Addr, body))
		}
	}()
	for range restarts {
		old := pid
		svc.Signal(old, syscall.SIGHUP)
		pid = svc.WaitPID(0, old, 30*time.Second)
		pids = append(pids, pid)
		readyAt := time.Now()
		// h2load's next run has the successor to itself.
		runs.wait(t, "an h2load run after the restart", 30*time.Second, func(rs []h2loadRun) bool {
			return len(rs) > 0 && rs[len(rs)-1].start.After(readyAt)
		})
	}
	stop.Store(true)
	wg.Wait()
	svc.Signal(pid, syscall.SIGTERM)
	waitExits(t, svc, pids)

	for _, r := range runs.events {
		if r.err != nil {
			t.Fatalf("h2load: %v\n%s", r.err, r.out)
		}
		sum.total += r.total
		sum.succeeded += r.succeeded
		sum.failed += r.failed
		sum.errored += r.errored
		sum.ok2 += r.ok2
	}
	unary, _, _ := served(t, svc)
	return sum, unary - int64(probes.ok)
}
