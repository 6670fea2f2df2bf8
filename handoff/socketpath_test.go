package handoff

import (
	"path/filepath"
	"testing"
)

// TestSocketPath: the path a client derives from the service name is the
// one an Upgrader with that name and no Socket binds.
func TestSocketPath(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", socketDir(t))
	got, err := SocketPath("api")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Name, cfg.Socket = "api", ""
	u := newUpgrader(t, cfg)
	if want := u.cfg.Socket; got != want {
		t.Errorf("SocketPath(api) = %q, the Upgrader binds %q", got, want)
	}
	if filepath.Base(got) != "api.sock" {
		t.Errorf("SocketPath(api) = %q, want a file named api.sock", got)
	}
	if _, err := SocketPath("a/b"); err == nil {
		t.Error("SocketPath accepted a name with a slash")
	}
}
