//go:build linux

package integration_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// TestHostilePeersUnderLoad: hostile clients of a real httpserver's
// control socket, each a separate process (the handoff package's test
// binary in the role hostile-peer), while clients keep sending requests.
// Each attack is refused with the right reason, no request fails, the
// serving process leaks no descriptor, and a real upgrade succeeds after
// it.
func TestHostilePeersUnderLoad(t *testing.T) {
	checkNoChildren(t)
	c := newChaosService(t)
	tests := []struct {
		name     string
		attack   string // hostile-peer's HANDOFF_TEST_HOSTILE
		conns    int
		want     handoff.RefusalCode
		otherUID bool
	}{
		{"random bytes", "random-bytes", 1, handoff.RefusedProtocol, false},
		{"valid header with a huge length", "huge-length", 1, handoff.RefusedProtocol, false},
		{"message cut in the middle", "cut-message", 1, handoff.RefusedProtocol, false},
		{"wrong protocol version", "wrong-version", 1, handoff.RefusedVersion, false},
		{"wrong service name", "wrong-name", 1, handoff.RefusedName, false},
		{"slowloris", "silence", 1, handoff.RefusedTimeout, false},
		{"1000 connections at once", "silence", 1000, handoff.RefusedTimeout, false},
		{"unrequested descriptors", "unrequested-fds", 1, handoff.RefusedProtocol, false},
		{"peer of another uid", "valid-hello", 1, handoff.RefusedPermission, true},
	}
	pid := c.start(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.otherUID && os.Geteuid() != 0 {
				t.Skip("needs root to run a peer as another user")
			}
			before := c.fds(t, pid)
			stop := testbed.RunLoad(c.Addr, loadgen.Mixed, 8)
			codes := c.hostilePeer(t, tt.attack, tt.conns, tt.otherUID)
			if len(codes) != tt.conns {
				t.Errorf("%d refusals for %d connections", len(codes), tt.conns)
			}
			for _, code := range codes {
				if code != tt.want {
					t.Fatalf("refused with %q, want %q", code, tt.want)
				}
			}
			testbed.WaitServing(t, c.Addr, pid)
			requireNoFailures(t, stop())
			testbed.WaitFDs(t, pid, before, 10*time.Second)
			pid = c.upgrade(t, pid)
		})
	}
	c.stopService(t, pid)
}

// hostilePeer runs the attack on conns connections at once from a
// separate process, as another user when otherUID is set, and returns
// the refusal code of each.
func (c *chaosService) hostilePeer(t *testing.T, attack string, conns int, otherUID bool) []handoff.RefusalCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin := c.peer
	if otherUID {
		// Let the other user reach the socket and the binary, so that only
		// the credential check stands in its way.
		bin = filepath.Join(c.Dir, "peer.test")
		install(t, c.peer, bin)
		for path, mode := range map[string]os.FileMode{c.Dir: 0o755, c.Socket: 0o666} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(path, fi.Mode().Perm())
		}
	}
	cmd := exec.CommandContext(ctx, bin, "-socket", c.Socket)
	cmd.Env = append(os.Environ(), envHelper+"=hostile-peer", testenv.Hostile+"="+attack,
		testenv.Conns+"="+strconv.Itoa(conns), testenv.Service+"=httpserver", "GORACE=atexit_sleep_ms=20")
	if otherUID {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hostile peer (%s): %v\n%s", attack, err, stderr.String())
	}
	var codes []handoff.RefusalCode
	for _, f := range strings.Fields(string(out)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("hostile peer said %q", out)
		}
		codes = append(codes, handoff.RefusalCode(n))
	}
	return codes
}
