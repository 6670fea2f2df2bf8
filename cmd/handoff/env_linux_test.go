package main

import (
	"strings"
	"testing"
)

// TestChildEnv: what systemd (or a predecessor) meant for the wrapper
// never reaches a child; the child gets its own sockets' variables.
func TestChildEnv(t *testing.T) {
	meant := []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID", "NOTIFY_SOCKET",
		"WATCHDOG_PID", "WATCHDOG_USEC", "FDSTORE", "HANDOFF_FD", "HANDOFF_PPID"}
	if len(meant) != len(wrapperOnlyEnv) {
		t.Fatalf("the test lists %d variables, the wrapper drops %d: %v", len(meant), len(wrapperOnlyEnv), wrapperOnlyEnv)
	}
	for _, name := range meant {
		t.Setenv(name, "for-the-wrapper")
	}
	t.Setenv("APP_SETTING", "kept")
	env := childEnv(&wrapperSockets{}, nil)
	got := map[string]string{}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		got[name] = value
	}
	for _, name := range meant {
		if got[name] == "for-the-wrapper" {
			t.Errorf("%s leaked to the child", name)
		}
	}
	if got["APP_SETTING"] != "kept" || got["LISTEN_FDS"] != "0" {
		t.Errorf("child environment %v", env)
	}
}
