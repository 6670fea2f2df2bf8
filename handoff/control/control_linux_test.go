package control_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
)

// serve starts a ready Upgrader named "api" with its default control
// socket in a private $RUNTIME_DIRECTORY, and returns it.
func serve(t *testing.T, ready bool) *handoff.Upgrader {
	t.Helper()
	dir, err := os.MkdirTemp("", "hoc") // short: sun_path holds 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("RUNTIME_DIRECTORY", dir)
	u, err := handoff.New(context.Background(), handoff.Config{Name: "api", CanaryWindow: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if ready {
		if err := u.Ready(); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// TestSocketPathAndStatus: the path a client derives from the service
// name is the one an Upgrader with that name and no Socket binds, and
// Status over it says what the Upgrader says.
func TestSocketPathAndStatus(t *testing.T) {
	u := serve(t, true)
	if _, err := u.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	socket, err := control.SocketPath("api")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(socket) != "api.sock" || filepath.Dir(socket) != os.Getenv("RUNTIME_DIRECTORY") {
		t.Errorf("SocketPath(api) = %q, want api.sock in $RUNTIME_DIRECTORY", socket)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := control.Status(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	want := u.Status()
	if st.PID != os.Getpid() || st.Service != "api" || st.State != "serving" || st.Generation != 1 ||
		len(st.Sockets) != 1 || st.Sockets[0] != want.Sockets[0] {
		t.Errorf("control.Status = %+v, Upgrader.Status = %+v", st, want)
	}
	if _, err := control.SocketPath("a/b"); err == nil {
		t.Error("SocketPath accepted a name with a slash")
	}
}

// TestReloadNotReady: a reload of a process that has not called Ready is
// refused at once with ErrNotReady, in the serving process's words; one
// with nobody serving fails and says where it tried.
func TestReloadNotReady(t *testing.T) {
	serve(t, false)
	socket, err := control.SocketPath("api")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = control.Reload(ctx, socket, nil)
	var refused *handoff.RefusedError
	if !errors.Is(err, handoff.ErrNotReady) || !errors.As(err, &refused) || refused.Reason == "" {
		t.Errorf("Reload before Ready = %v, want a refusal matching ErrNotReady", err)
	}
	if err := control.Reload(ctx, filepath.Join(t.TempDir(), "none.sock"), nil); err == nil {
		t.Error("Reload with nobody serving succeeded")
	}
}
