//go:build linux

package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// The runs below: 20 SIGHUP upgrades during a load of loadSeconds, one
// every upgradeGap after the previous one is ready, with the canary window
// off so that each old process drains at once (the window only delays
// the drain; see canary_test.go).
const (
	upgrades    = 20
	loadSeconds = 12
	upgradeGap  = 150 * time.Millisecond
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

// upgradeRun is what one run under upgrades saw.
type upgradeRun struct {
	out            string          // the load tool's output
	exitAfterReady []time.Duration // each old process: from its successor's ready to its exit
}

// runUnderUpgrades starts bin with the service's flags and extra, runs
// the load tool (tool, with args; "URL" in args is the service's URL with
// scheme), upgrades it upgrades times with SIGHUP while the tool runs,
// stops the last process, and returns what it saw. Every old process must
// exit 0.
func runUnderUpgrades(t *testing.T, bin, scheme string, extra []string, tool string, args ...string) upgradeRun {
	t.Helper()
	s := newService(t, bin)
	pid := s.Start(append(s.DefaultArgs(), extra...)...)
	s.WaitPID(pid, 0, 30*time.Second)
	waitListening(t, s.Addr)

	url := scheme + "://" + s.Addr + "/"
	for i, a := range args {
		if a == "URL" {
			args[i] = url
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	type exit struct {
		pid   int
		after time.Duration
		ws    syscall.WaitStatus
		ok    bool
	}
	exits := make(chan exit, upgrades)
	for i := range upgrades {
		select {
		case <-time.After(upgradeGap):
		case err := <-done:
			t.Fatalf("%s ended after %d of %d upgrades (%v): make the load longer\n%s", tool, i, upgrades, err, out.String())
		}
		s.Signal(pid, syscall.SIGHUP)
		old := pid
		pid = s.WaitPID(0, old, 30*time.Second)
		ready := time.Now()
		go func() {
			ws, ok := reaper.Wait(old, 60*time.Second)
			exits <- exit{old, time.Since(ready), ws, ok}
		}()
	}
	var run upgradeRun
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", tool, err)
		}
	case <-ctx.Done():
		<-done // CommandContext killed it
		t.Fatalf("%s did not end in time\n%s", tool, out.String())
	}
	run.out = out.String()
	for range upgrades {
		e := <-exits // each bounded by reaper.Wait's timeout
		switch {
		case !e.ok:
			t.Errorf("old process %d still running 60s after its successor was ready", e.pid)
		case e.ws.ExitStatus() != 0:
			t.Errorf("old process %d exited with %v", e.pid, e.ws)
		}
		run.exitAfterReady = append(run.exitAfterReady, e.after)
	}
	s.Signal(pid, syscall.SIGTERM)
	if ws := s.WaitExit(pid, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("last process exited with %v after SIGTERM", ws)
	}
	return run
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

// h2loadResult is h2load's request line.
type h2loadResult struct {
	total, succeeded, failed, errored, timeout int
}

var h2loadRequests = regexp.MustCompile(`requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)

func parseH2load(t *testing.T, out string) h2loadResult {
	t.Helper()
	m := h2loadRequests.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no requests line in h2load's output:\n%s", out)
	}
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	return h2loadResult{n(1), n(2), n(3), n(4), n(5)}
}

func (r h2loadResult) String() string {
	return fmt.Sprintf("%d requests, %d succeeded, %d failed, %d errored, %d timeout", r.total, r.succeeded, r.failed, r.errored, r.timeout)
}

// TestH2loadUpgrades: h2load (nghttp2's load generator, which never
// retries a request) against examples/httpserver over h2c and over TLS
// (ALPN h2), 8 connections with up to 32 streams each, through 20 SIGHUP
// upgrades: no stream fails or errors. The same run against a build with
// net/http's single GOAWAY is logged beside it: there, streams on their
// way when the GOAWAY left are refused.
func TestH2loadUpgrades(t *testing.T) {
	h2load := lookTool(t, "h2load", "nghttp2-client")
	for _, tt := range []struct{ name, scheme string }{{"h2c", "http"}, {"tls", "https"}} {
		t.Run(tt.name, func(t *testing.T) {
			checkNoChildren(t)
			extra := []string{"-canary-window=-1s", "-h2c"}
			if tt.scheme == "https" {
				cert, key := testbed.WriteSelfSigned(t, t.TempDir())
				extra = []string{"-canary-window=-1s", "-tls-cert", cert, "-tls-key", key}
			}
			args := []string{"-c", "8", "-m", "32", "-D", strconv.Itoa(loadSeconds), "URL"}
			twoRun := runUnderUpgrades(t, binary(t, "./examples/httpserver"), tt.scheme, extra, h2load, slicesClone(args)...)
			oneRun := runUnderUpgrades(t, singleGoAway(t), tt.scheme, extra, h2load, slicesClone(args)...)
			two, one := parseH2load(t, twoRun.out), parseH2load(t, oneRun.out)
			t.Logf("h2load %s, %d upgrades: two-phase GOAWAY: %v, old process exit after ready median %v, max %v; net/http's single GOAWAY: %v, exit median %v, max %v",
				tt.name, upgrades, two, testbed.Median(twoRun.exitAfterReady), slicesMax(twoRun.exitAfterReady),
				one, testbed.Median(oneRun.exitAfterReady), slicesMax(oneRun.exitAfterReady))
			if two.failed != 0 || two.errored != 0 || two.timeout != 0 || two.succeeded == 0 {
				t.Errorf("two-phase drain: %v; want no failed, errored or timed-out request", two)
			}
		})
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

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
	run := runUnderUpgrades(t, binary(t, "./examples/httpserver"), "https",
		[]string{"-canary-window=-1s", "-tls-cert", cert, "-tls-key", key},
		wrk, "-t", "2", "-c", "16", "-d", strconv.Itoa(loadSeconds)+"s", "--timeout", "10s", "URL")
	m := wrkRequests.FindStringSubmatch(run.out)
	if m == nil {
		t.Fatalf("no request count in wrk's output:\n%s", run.out)
	}
	if n, _ := strconv.Atoi(m[1]); n == 0 {
		t.Errorf("wrk sent no request:\n%s", run.out)
	}
	if m := wrkSocket.FindString(run.out); m != "" {
		t.Errorf("wrk: %s", m)
	}
	if m := wrkNon2xx.FindString(run.out); m != "" {
		t.Errorf("wrk: %s", m)
	}
	t.Logf("wrk https, %d upgrades: %s requests, no error; old process exit after its successor's ready: median %v, max %v",
		upgrades, m[1], testbed.Median(run.exitAfterReady), slicesMax(run.exitAfterReady))
}
