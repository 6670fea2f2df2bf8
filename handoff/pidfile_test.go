package handoff

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPassPIDFile: after the handover the old process points the pid
// file at its successor, unless it no longer names the old process: the
// successor, or a successor of its own, wrote it already.
func TestPassPIDFile(t *testing.T) {
	cfg := testConfig(t)
	cfg.PIDFile = filepath.Join(socketDir(t), "pid")
	u := newUpgrader(t, cfg)
	succ, next := u.pid+1, u.pid+2
	names := func(pid int) {
		t.Helper()
		b, err := os.ReadFile(cfg.PIDFile)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(pid) {
			t.Fatalf("pid file names %s, want %d", got, pid)
		}
	}

	u.writePIDFile(u.pid)
	u.passPIDFile(succ)
	names(succ)
	u.writePIDFile(next) // the successor's successor
	u.passPIDFile(succ)
	names(next)
}
