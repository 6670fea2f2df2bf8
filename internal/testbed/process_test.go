//go:build unix

package testbed

import "testing"

// TestTestBinaryName: packages that share a base name get test binaries
// of their own; before, ./cmd/handoff's test binary was ./handoff's.
func TestTestBinaryName(t *testing.T) {
	for pkg, want := range map[string]string{"./handoff": "handoff.test", "./cmd/handoff": "cmd-handoff.test", "internal/wire": "internal-wire.test"} {
		if got := testBinaryName(pkg); got != want {
			t.Errorf("testBinaryName(%q) = %q, want %q", pkg, got, want)
		}
	}
}
