//go:build linux

package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// A socket per child generation (the wrapper's default, -socket-mode
// auto): each child gets its own socket, bound to the same address with
// SO_REUSEPORT, and the wrapper steers new connections to the newest
// ready child and stops the old one only once its accept queue is empty.
// The child here, integration/plainshutdown, drains the way most Go
// servers do, with http.Server.Shutdown on SIGTERM and nothing else.

// socketModes is the wrapper's status detail about its sockets.
type socketModes struct {
	Sockets []struct {
		Socket string `json:"socket"`
		Mode   string `json:"mode"`
		Why    string `json:"why"`
	} `json:"socket_modes"`
}

// requireSocketMode fails t unless every socket of the wrapper serving
// s is in mode, as `handoff status` says.
func requireSocketMode(t *testing.T, s *testbed.Service, mode string) {
	t.Helper()
	st, _ := wrapperStatus(t, s)
	var d socketModes
	if err := json.Unmarshal(st.Detail, &d); err != nil || len(d.Sockets) == 0 {
		t.Fatalf("status detail %s: no socket modes (%v)", st.Detail, err)
	}
	for _, m := range d.Sockets {
		if m.Mode != mode {
			t.Fatalf("socket %s is %s (%s), want %s", m.Socket, m.Mode, m.Why, mode)
		}
	}
}

// TestWrapperPlainShutdownReloads: 20 reloads of the plain-Shutdown child
// under new-connection load (8 clients that never retry, each request on
// a connection of its own). With a socket per generation no request
// fails; with -socket-mode shared (every child accepts from one queue
// until its stop signal) the old child takes connections while it shuts
// down and drops their requests: the count is logged, not required,
// since it depends on timing.
func TestWrapperPlainShutdownReloads(t *testing.T) {
	const reloads = 20
	for _, tt := range []struct{ flag, mode string }{{"auto", "per-generation"}, {"shared", "shared"}} {
		t.Run(tt.flag, func(t *testing.T) {
			checkNoChildren(t)
			s := newService(t, binary(t, "./cmd/handoff"))
			wrapper, child := startWrapper(t, s, "-socket-mode", tt.flag, "--", binary(t, "./integration/plainshutdown"))
			requireSocketMode(t, s, tt.mode)
			testbed.WaitServing(t, s.Addr, child)
			stopLoad := testbed.RunLoad(s.Addr, loadgen.NewConn, 8)
			t0 := time.Now()
			for range reloads {
				s.Signal(wrapper, syscall.SIGHUP)
				next := servingChild(t, s, child)
				waitGone(t, child, 30*time.Second)
				child = next
			}
			res := stopLoad()
			t.Logf("-socket-mode %s, %d reloads in %v: %d failed requests of %d (%v)", tt.flag, reloads, time.Since(t0).Round(time.Millisecond), res.FailedCount(), res.Requests, res.Errors)
			if tt.mode == "per-generation" {
				requireNoFailures(t, res)
			}
			stopWrapper(t, s, wrapper, child)
		})
	}
}

// TestWrapperUDPReloads: datagrams sent at a steady rate (one every 2 ms)
// to the plain child's echo socket through 10 reloads: every one is
// answered, by one child or the next.
func TestWrapperUDPReloads(t *testing.T) {
	const reloads = 10
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	wrapper := s.Start("run", "-socket", s.Socket, "-pidfile", s.PIDFile, "-listen", "echo=udp://"+s.Addr,
		"-ready-timeout", "10s", "-drain-timeout", "10s", "--", binary(t, "./integration/plainshutdown"))
	s.WaitPID(wrapper, 0, 30*time.Second)
	child := servingChild(t, s, 0)
	requireSocketMode(t, s, "per-generation")

	c, err := net.Dial("udp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var (
		mu       sync.Mutex
		answered = map[int]bool{}
		pids     = map[string]int{}
	)
	go func() { // until c is closed
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			pid, seq, _ := bytes.Cut(buf[:n], []byte(" "))
			i, err := strconv.Atoi(string(seq))
			if err != nil {
				continue
			}
			mu.Lock()
			answered[i] = true
			pids[string(pid)]++
			mu.Unlock()
		}
	}()
	sent := 0
	stop := make(chan struct{})
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := fmt.Fprintf(c, "%d", sent); err != nil {
				t.Errorf("send: %v", err)
				return
			}
			sent++
		}
	}()
	for range reloads {
		s.Signal(wrapper, syscall.SIGHUP)
		next := servingChild(t, s, child)
		waitGone(t, child, 30*time.Second)
		child = next
	}
	close(stop)
	<-sending
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(answered) }
	deadline := time.Now().Add(5 * time.Second)
	for count() < sent && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	t.Logf("%d reloads: %d datagrams sent, %d answered, by %d children", reloads, sent, len(answered), len(pids))
	if len(answered) != sent {
		t.Errorf("%d of %d datagrams lost", sent-len(answered), sent)
	}
	mu.Unlock()
	stopWrapper(t, s, wrapper, child)
}

// TestWrapperUvicornReloads: uvicorn (Debian's, an ASGI server) takes
// its socket with --fd 3 and drains on SIGTERM; 10 reloads under
// new-connection load (8 clients, no retries): none fails. Keep-alive
// clients are left out: uvicorn closes idle keep-alive connections when
// it stops, which fails a request sent just then (see docs/wrapper.md).
func TestWrapperUvicornReloads(t *testing.T) {
	uvicorn, err := lookPath("uvicorn")
	if err != nil {
		t.Fatalf("uvicorn is not installed (scripts/deps.sh installs it): %v", err)
	}
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	app := `import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"%d\n" % os.getpid()})
`
	if err := os.WriteFile(filepath.Join(s.Dir, "app.py"), []byte(app), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper, child := startWrapper(t, s, "--", uvicorn, "--fd", "3", "--app-dir", s.Dir, "--no-access-log", "app:app")
	requireSocketMode(t, s, "per-generation")
	testbed.WaitServing(t, s.Addr, child)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.NewConn, 8)
	for range 10 {
		s.Signal(wrapper, syscall.SIGHUP)
		next := servingChild(t, s, child)
		waitGone(t, child, 30*time.Second)
		child = next
	}
	res := stopLoad()
	t.Logf("uvicorn, 10 reloads: %d failed requests of %d", res.FailedCount(), res.Requests)
	requireNoFailures(t, res)
	stopWrapper(t, s, wrapper, child)
}
