//go:build linux

package integration_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// The guarantees at the edges, through the real binaries.

// TestTwoInstancesOfOneBinary: examples/httpserver started a second time
// on another port but the same control socket (as two instances with the
// default socket would be) is another instance, not a successor: it exits
// with an error that says so and how to run both, and the first instance
// keeps serving its port.
func TestTwoInstancesOfOneBinary(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./examples/httpserver"))
	first := s.Start()
	s.WaitPID(first, 0, 30*time.Second)
	testbed.WaitServing(t, s.Addr, first)

	from := s.LogSize()
	other := testbed.FreePort(t)
	second := s.Start("-addr", other, "-socket", s.Socket)
	if ws := s.WaitExit(second, 30*time.Second); ws.ExitStatus() == 0 {
		t.Fatalf("the second instance exited with %v, want a failure", ws)
	}
	log := string(s.LogFrom(from))
	for _, want := range []string{"another instance", "Config.Name or Config.Socket"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the second instance's log does not say %q:\n%s", want, log)
		}
	}
	testbed.WaitServing(t, s.Addr, first)
	if pid := s.PID(); pid != first {
		t.Fatalf("pid file names %d, want the first instance %d", pid, first)
	}
	s.Signal(first, syscall.SIGTERM)
	if ws := s.WaitExit(first, 30*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("first instance exited with %v", ws)
	}
}

// TestWrapperFailedTakeoverKeepsUnixSocket: a wrapper serving a unix
// socket, and a second wrapper that takes over with a child that fails at
// once: the second gives up, and the first goes on serving the same
// socket file, which nobody removed.
func TestWrapperFailedTakeoverKeepsUnixSocket(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	activated := binary(t, "./examples/activated")
	path := filepath.Join(s.Dir, "app.sock")
	args := []string{"run", "-name", "app", "-socket", s.Socket, "-pidfile", s.PIDFile, "-listen", "web=unix://" + path, "-ready-timeout", "10s", "-drain-timeout", "10s", "--"}
	first := s.Start(append(args, activated)...)
	s.WaitPID(first, 0, 30*time.Second)
	get := func() (string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		}}
		resp, err := c.Get("http://app/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if _, err := get(); err != nil {
		t.Fatalf("first wrapper over %s: %v", path, err)
	}

	second := s.Start(append(args, "/bin/false")...)
	if ws := s.WaitExit(second, 60*time.Second); ws.ExitStatus() == 0 {
		t.Fatalf("the wrapper whose child fails exited with %v, want a failure", ws)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the unix socket file after the failed takeover: %v", err)
	}
	for i := range 20 {
		if _, err := get(); err != nil {
			t.Fatalf("request %d after the failed takeover: %v", i, err)
		}
	}
	if pid := s.PID(); pid != first {
		t.Fatalf("pid file names %d, want the first wrapper %d", pid, first)
	}
	s.Signal(first, syscall.SIGTERM)
	if ws := s.WaitExit(first, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("first wrapper exited with %v", ws)
	}
}
