//go:build linux

package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// The runs below: 20 SIGHUP upgrades under load, with the canary window
// off so that each old process drains at once (the window only delays the
// drain; see canary_test.go). wrk's run of wrkSeconds has an upgrade
// every upgradeGap after the previous one is ready; each h2load run of a
// second is upgraded h2loadLead into it.
const (
	upgrades   = 20
	wrkSeconds = 12
	upgradeGap = 300 * time.Millisecond
	h2loadLead = 300 * time.Millisecond
)

// singleGoAway builds examples/httpserver with net/http's single GOAWAY
// instead of the two-phase drain: the behaviour before it, measured
// beside it.
func singleGoAway(t *testing.T) string {
	return builder.BuildVariant(t, "./examples/httpserver", "httpserver-goaway",
		"-ldflags=-X=github.com/handoffd/handoff/handoff.http2Drain=goaway")
}

// lookTool returns the path of an independent client that deps.sh
// installs, or skips t.
func lookTool(t *testing.T, name, pkg string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian %s; scripts/deps.sh installs it)", name, pkg)
	}
	return path
}

// upgrading is a service under test that upgrades with SIGHUP, and
// measures how long each old process takes to exit after its successor is
// ready.
type upgrading struct {
	t      *testing.T
	s      *testbed.Service
	pid    int
	url    string
	exits  chan exited
	nExits int
}

type exited struct {
	pid   int
	after time.Duration
	ws    syscall.WaitStatus
	ok    bool
}

// startUpgrading starts bin with the service's flags and extra, serving
// URLs with scheme.
func startUpgrading(t *testing.T, bin, scheme string, extra []string) *upgrading {
	t.Helper()
	s := newService(t, bin)
	pid := s.Start(append(s.DefaultArgs(), extra...)...)
	s.WaitPID(pid, 0, 30*time.Second)
	waitListening(t, s.Addr)
	return &upgrading{t: t, s: s, pid: pid, url: scheme + "://" + s.Addr + "/", exits: make(chan exited, upgrades)}
}

// upgrade sends SIGHUP and waits until the successor is ready.
func (u *upgrading) upgrade() {
	u.t.Helper()
	u.s.Signal(u.pid, syscall.SIGHUP)
	old := u.pid
	u.pid = u.s.WaitPID(0, old, 30*time.Second)
	ready := time.Now()
	u.nExits++
	go func() {
		ws, ok := reaper.Wait(old, 60*time.Second)
		u.exits <- exited{old, time.Since(ready), ws, ok}
	}()
}

// stop stops the last process and returns, for each old process, its
// exit time after its successor was ready; every one must exit 0.
func (u *upgrading) stop() []time.Duration {
	u.t.Helper()
	var after []time.Duration
	for range u.nExits {
		e := <-u.exits // each bounded by reaper.Wait's timeout
		switch {
		case !e.ok:
			u.t.Errorf("old process %d still running 60s after its successor was ready", e.pid)
		case e.ws.ExitStatus() != 0:
			u.t.Errorf("old process %d exited with %v", e.pid, e.ws)
		}
		after = append(after, e.after)
	}
	u.s.Signal(u.pid, syscall.SIGTERM)
	if ws := u.s.WaitExit(u.pid, 60*time.Second); ws.ExitStatus() != 0 {
		u.t.Errorf("last process exited with %v after SIGTERM", ws)
	}
	return after
}

// tool is a load tool running as a process of the test.
type tool struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startTool runs path with args, "URL" among them replaced by url. It is
// killed if it runs past two minutes.
func startTool(t *testing.T, url, path string, args ...string) *tool {
	t.Helper()
	args = append([]string(nil), args...)
	for i, a := range args {
		if a == "URL" {
			args[i] = url
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tl := &tool{cmd: exec.CommandContext(ctx, path, args...), done: make(chan error, 1)}
	tl.cmd.Stdout, tl.cmd.Stderr = &tl.out, &tl.out
	if err := tl.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer cancel()
		tl.done <- tl.cmd.Wait()
	}()
	return tl
}

// running waits d and reports whether the tool still runs by then.
func (tl *tool) running(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case err := <-tl.done:
		tl.done <- err
		return false
	}
}

// wait waits for the tool to end (at most the two minutes startTool
// allows) and returns its output.
func (tl *tool) wait(t *testing.T) string {
	t.Helper()
	if err := <-tl.done; err != nil {
		t.Errorf("%s: %v\n%s", tl.cmd.Path, err, tl.out.String())
	}
	return tl.out.String()
}

// waitListening waits until addr accepts a TCP connection.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept connections: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// h2loadResult is h2load's request line, and how many of the failed
// requests h2load never sent.
type h2loadResult struct {
	total, succeeded, failed, errored, timeout int
	unsent                                     int
}

// countUnsent reads h2load's --log-file (start time in µs, status, time
// taken: a line a request) and counts the failed requests (status -1)
// that never left: start time 0.
func (r *h2loadResult) countUnsent(t *testing.T, log string) {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "0" && f[1] == "-1" {
			r.unsent++
		}
	}
}

var h2loadRequests = regexp.MustCompile(`requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)

func parseH2load(t *testing.T, out string) h2loadResult {
	t.Helper()
	m := h2loadRequests.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no requests line in h2load's output:\n%s", out)
	}
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	return h2loadResult{total: n(1), succeeded: n(2), failed: n(3), errored: n(4), timeout: n(5)}
}

func (r *h2loadResult) add(o h2loadResult) {
	r.total += o.total
	r.succeeded += o.succeeded
	r.failed += o.failed
	r.errored += o.errored
	r.timeout += o.timeout
	r.unsent += o.unsent
}

func (r h2loadResult) String() string {
	return fmt.Sprintf("%d requests, %d succeeded, %d failed, %d errored, %d timeout (failed: %d never sent by h2load, %d sent)",
		r.total, r.succeeded, r.failed, r.errored, r.timeout, r.unsent, r.failed-r.unsent)
}

// TestH2loadUpgradesH2C: h2load (nghttp2's load generator, which never
// retries a request) against examples/httpserver over h2c, 8 connections
// with 32 streams each in flight, through 20 SIGHUP upgrades: no stream
// that h2load sent fails. h2load does not reconnect after a GOAWAY (its
// connection ends once its streams are done), so each upgrade gets an
// h2load run of its own, upgraded in its middle. The same runs against a
// build with net/http's single GOAWAY are logged beside them: there,
// streams on their way when the GOAWAY left are refused.
//
// h2load's own failed and errored counts also hold streams it never sent:
// ones its nghttp2 session queued in the same read that brought the first
// GOAWAY, which it then does not start (RFC 9113 §6.8: no new stream after
// a GOAWAY), and h2load does not retry. Its --log-file tells them apart (a
// start time of 0); the test requires every failure to be one of those.
func TestH2loadUpgradesH2C(t *testing.T) { h2loadUpgrades(t, "h2c", "http") }

// TestH2loadUpgradesTLS is TestH2loadUpgradesH2C over TLS (ALPN h2).
func TestH2loadUpgradesTLS(t *testing.T) { h2loadUpgrades(t, "tls", "https") }

func h2loadUpgrades(t *testing.T, name, scheme string) {
	h2load := lookTool(t, "h2load", "nghttp2-client")
	checkNoChildren(t)
	extra := []string{"-canary-window=-1s", "-h2c"}
	if scheme == "https" {
		cert, key := testbed.WriteSelfSigned(t, t.TempDir())
		extra = []string{"-canary-window=-1s", "-tls-cert", cert, "-tls-key", key}
	}
	run := func(bin string) (h2loadResult, []time.Duration) {
		u := startUpgrading(t, bin, scheme, extra)
		var sum h2loadResult
		for i := range upgrades {
			log := filepath.Join(t.TempDir(), "requests")
			tl := startTool(t, u.url, h2load, "-c", "8", "-m", "32", "-D", "1", "--log-file="+log, "URL")
			if !tl.running(h2loadLead) {
				t.Fatalf("h2load ended before upgrade %d:\n%s", i+1, tl.wait(t))
			}
			u.upgrade()
			r := parseH2load(t, tl.wait(t))
			r.countUnsent(t, log)
			sum.add(r)
		}
		return sum, u.stop()
	}
	two, twoExit := run(binary(t, "./examples/httpserver"))
	one, oneExit := run(singleGoAway(t))
	t.Logf("h2load %s, %d upgrades: two-phase GOAWAY: %v; old process exit after ready: median %v, max %v", name, upgrades, two, testbed.Median(twoExit), slicesMax(twoExit))
	t.Logf("h2load %s, %d upgrades: net/http's single GOAWAY: %v; old process exit after ready: median %v, max %v", name, upgrades, one, testbed.Median(oneExit), slicesMax(oneExit))
	if sent := two.failed - two.unsent; sent != 0 || two.timeout != 0 || two.succeeded == 0 {
		t.Errorf("two-phase drain: %v: %d sent streams failed; want none failed or timed out", two, sent)
	}
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// TestWrkTLSUpgrades: wrk over https (HTTP/1.1: wrk offers no ALPN), which
// never retries, through 20 SIGHUP upgrades: no socket error and no
// failed response. TLS connections cannot move to the successor; the old
// process answers its next request on each with Connection: close. It
// logs how long each old process took to exit after its successor was
// ready.
func TestWrkTLSUpgrades(t *testing.T) {
	wrk := lookTool(t, "wrk", "wrk")
	checkNoChildren(t)
	cert, key := testbed.WriteSelfSigned(t, t.TempDir())
	u := startUpgrading(t, binary(t, "./examples/httpserver"), "https",
		[]string{"-canary-window=-1s", "-tls-cert", cert, "-tls-key", key})
	tl := startTool(t, u.url, wrk, "-t", "2", "-c", "16", "-d", strconv.Itoa(wrkSeconds)+"s", "--timeout", "10s", "URL")
	for i := range upgrades {
		if !tl.running(upgradeGap) {
			t.Fatalf("wrk ended after %d of %d upgrades: make its run longer\n%s", i, upgrades, tl.wait(t))
		}
		u.upgrade()
	}
	out := tl.wait(t)
	exits := u.stop()
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no request count in wrk's output:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n == 0 {
		t.Errorf("wrk sent no request:\n%s", out)
	}
	if m := wrkSocket.FindString(out); m != "" {
		t.Errorf("wrk: %s", m)
	}
	if m := wrkNon2xx.FindString(out); m != "" {
		t.Errorf("wrk: %s", m)
	}
	t.Logf("wrk https, %d upgrades: %s requests, no error; old process exit after its successor's ready: median %v, max %v",
		upgrades, m[1], testbed.Median(exits), slicesMax(exits))
}
