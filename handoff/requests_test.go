package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/hooks"
)

func TestRequestStatus(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	u := newUpgrader(t, cfg)
	u.wrap(hooks.Wrapper{StatusDetail: func() any { return map[string]int{"children": 2} }})
	ln, err := u.ListenNamed("web", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	st, err := askStatus(context.Background(), cfg.Socket)
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

// TestRequestReload: a reload request runs the wrapper's reload, passes its
// progress on, and reports its outcome; only one runs at a time.
func TestRequestReload(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	entered, release := make(chan struct{}), make(chan error)
	own := func(ctx context.Context, progress func(string), _ bool) error {
		progress("step one")
		select {
		case entered <- struct{}{}:
		case <-ctx.Done(): // the test failed and closed u
			return ctx.Err()
		}
		select {
		case err := <-release:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	u := newUpgrader(t, cfg)
	w := u.wrap(hooks.Wrapper{Reload: own})
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
			done <- askReload(context.Background(), cfg.Socket, func(l string) {
				mu.Lock()
				lines = append(lines, l)
				mu.Unlock()
			})
		}()
		recvWithin(t, entered, "the reload to start")
		if err := askReload(context.Background(), cfg.Socket, nil); !errors.Is(err, ErrInProgress) {
			t.Fatalf("concurrent reload = %v, want ErrInProgress", err)
		}
		if err := w.Reload(context.Background()); !errors.Is(err, ErrInProgress) {
			t.Fatalf("concurrent Reload = %v, want ErrInProgress", err)
		}
		release <- outcome
		err := recvWithin(t, done, "the reload request to be answered")
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
	if _, err := askStatus(context.Background(), cfg.Socket); err == nil {
		t.Error("status with nobody serving succeeded")
	}
}

// TestRequestContextDone: a request whose context has expired or been
// canceled fails with the context's error and never reaches the serving
// process, which a request with a live context reaches.
func TestRequestContextDone(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	var reloads atomic.Int32
	u := newUpgrader(t, cfg)
	u.wrap(hooks.Wrapper{Reload: func(context.Context, func(string), bool) error { reloads.Add(1); return nil }})
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := askReload(context.Background(), cfg.Socket, nil); err != nil || reloads.Load() != 1 {
		t.Fatalf("reload with a live context = %v after %d reloads, want it to run once", err, reloads.Load())
	}

	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"an expired", expired, context.DeadlineExceeded},
		{"a canceled", canceled, context.Canceled},
	} {
		if err := askReload(tt.ctx, cfg.Socket, nil); !errors.Is(err, tt.want) {
			t.Errorf("reload with %s context = %v, want %v", tt.name, err, tt.want)
		}
		if _, err := askStatus(tt.ctx, cfg.Socket); !errors.Is(err, tt.want) {
			t.Errorf("status with %s context = %v, want %v", tt.name, err, tt.want)
		}
	}
	if n := reloads.Load(); n != 1 {
		t.Errorf("%d reloads ran, want only the one with a live context", n)
	}
	if st, err := askStatus(context.Background(), cfg.Socket); err != nil || st.State != "serving" {
		t.Errorf("status afterwards = %+v, %v; want serving", st, err)
	}
}

// askStatus and askReload are control.Status and control.Reload, which
// this package's tests cannot import.
func askStatus(ctx context.Context, socket string) (Status, error) {
	var st Status
	r, err := roundTrip(ctx, socket, hooks.StatusRequest, nil)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(r.Data, &st)
}

func askReload(ctx context.Context, socket string, progress func(string)) error {
	_, err := roundTrip(ctx, socket, hooks.ReloadRequest, progress)
	return err
}
