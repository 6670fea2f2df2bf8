package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withoutHandoff runs the rest of the test as on a platform that cannot
// pass sockets (every one but Linux), through the very code path New
// takes there. Tests that use it cannot run in parallel.
func withoutHandoff(t *testing.T) {
	saved := handoffSupport
	handoffSupport = func() error { return fmt.Errorf("%w (playing another platform)", ErrNotSupported) }
	t.Cleanup(func() { handoffSupport = saved })
}

// TestServesWithoutHandoff: where sockets cannot be passed, New still
// returns an Upgrader that serves: Listen binds, HTTPServer answers,
// Ready writes the pid file, Status says why there is no handoff, and
// Stop and Shutdown drain as anywhere. Only Upgrade fails, with
// ErrNotSupported, and the process serves on. No control socket is
// bound: a second process of the same service is not a successor, and
// gets "address in use" for the same port.
func TestServesWithoutHandoff(t *testing.T) {
	checkLeaks(t)
	withoutHandoff(t)
	cfg := testConfig(t)
	cfg.PIDFile = filepath.Join(filepath.Dir(cfg.Socket), "app.pid")
	u := newUpgrader(t, cfg)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &HTTPServer{Server: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "solo") })}, Upgrader: u}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := u.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // Shutdown need not wait out idle ones
	get := func() string {
		t.Helper()
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); got != "solo" {
		t.Fatalf("GET: %q", got)
	}
	if b, err := os.ReadFile(cfg.PIDFile); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(os.Getpid()) {
		t.Fatalf("pid file: %q, %v", b, err)
	}
	if _, err := os.Stat(cfg.Socket); !os.IsNotExist(err) {
		t.Fatalf("a control socket exists at %s: %v", cfg.Socket, err)
	}
	if st := u.Status(); st.State != "serving" || st.Generation != 1 || !strings.Contains(st.NoHandoff, "not supported") || len(st.Sockets) != 1 {
		t.Fatalf("Status = %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if err := u.Upgrade(ctx); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Upgrade = %v, want ErrNotSupported", err)
	}
	if got := get(); got != "solo" {
		t.Fatalf("GET after the failed Upgrade: %q", got)
	}
	other, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("a second New: %v", err)
	}
	if _, err := other.Listen("tcp", ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("the second process's Listen on the same port: %v, want address already in use", err)
	}
	other.Close()
	select {
	case <-u.Exit():
		t.Fatal("Exit closed without a successor")
	default:
	}
	u.Stop()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := recvWithin(t, served, "Serve to return"); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	u.Close()
	if _, err := os.Stat(cfg.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after Close: %v", err)
	}

}
