package handoff

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRequestStatus(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	cfg.StatusDetail = func() any { return map[string]int{"children": 2} }
	u := newUpgrader(t, cfg)
	ln, err := u.ListenNamed("web", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	st, err := RequestStatus(context.Background(), cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != u.pid || st.Generation != 1 || st.State != "serving" || st.Service != "test" {
		t.Errorf("status %+v", st)
	}
	if len(st.Sockets) != 1 || st.Sockets[0].Name != "web" || st.Sockets[0].Address != ln.Addr().String() {
		t.Errorf("sockets %+v", st.Sockets)
	}
	if string(st.Detail) != `{"children":2}` {
		t.Errorf("detail %s", st.Detail)
	}
}

// TestRequestReload: a reload request runs Config.Reload, passes its
// progress on, and reports its outcome; only one runs at a time.
func TestRequestReload(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	entered, release := make(chan struct{}), make(chan error)
	cfg.Reload = func(ctx context.Context, progress func(string)) error {
		progress("step one")
		entered <- struct{}{}
		return <-release
	}
	u := newUpgrader(t, cfg)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	for _, outcome := range []error{nil, errors.New("child exited with status 3")} {
		var (
			mu    sync.Mutex
			lines []string
		)
		done := make(chan error, 1)
		go func() {
			done <- RequestReload(context.Background(), cfg.Socket, func(l string) {
				mu.Lock()
				lines = append(lines, l)
				mu.Unlock()
			})
		}()
		<-entered
		if err := RequestReload(context.Background(), cfg.Socket, nil); !errors.Is(err, ErrInProgress) {
			t.Fatalf("concurrent reload = %v, want ErrInProgress", err)
		}
		if err := u.Reload(context.Background()); !errors.Is(err, ErrInProgress) {
			t.Fatalf("concurrent Reload = %v, want ErrInProgress", err)
		}
		release <- outcome
		err := <-done
		switch {
		case outcome == nil && err != nil:
			t.Fatalf("reload: %v", err)
		case outcome != nil && (err == nil || !strings.Contains(err.Error(), outcome.Error())):
			t.Fatalf("failed reload reported %v, want %q", err, outcome)
		}
		mu.Lock()
		if len(lines) != 1 || lines[0] != "step one" {
			t.Errorf("progress %q", lines)
		}
		mu.Unlock()
		st := u.Status()
		if st.LastReload == nil || st.State != "serving" || (outcome != nil) != (st.LastReload.Error != "") {
			t.Errorf("status after reload: %+v, last %+v", st, st.LastReload)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	u := newUpgrader(t, cfg)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	_, err := roundTrip(context.Background(), cfg.Socket, "dance", nil)
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("unknown request = %v, want ErrProtocol", err)
	}
	u.Close()
	if _, err := RequestStatus(context.Background(), cfg.Socket); err == nil {
		t.Error("status with nobody serving succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	if err := RequestReload(ctx, cfg.Socket, nil); err == nil {
		t.Error("reload with an expired context succeeded")
	}
}
