//go:build linux

package integration_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke runs `make bench`'s driver (internal/bench) small: every
// scenario, two restarts, keep-alive load. It must finish, write its report
// and plot, and show no failed request for any handoff scenario, nor for
// the baseline that restarts nothing; with the library, keep-alive
// connections move to the new process.
func TestBenchSmoke(t *testing.T) {
	checkNoChildren(t)
	dir := t.TempDir()
	report, plot := filepath.Join(dir, "bench.md"), filepath.Join(dir, "bench.svg")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./internal/bench", "-restarts", "2", "-period", "50ms", "-steady", "200ms",
		"-modes", "keepalive,mixed", "-out", report, "-svg", plot)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) < 5 || !strings.HasPrefix(cells[0], "| ") {
			continue
		}
		rows++
		lossless := strings.HasPrefix(cells[0], "| handoff-") || cells[0] == "| spawn-only"
		if lossless && cells[4] != "0" {
			t.Errorf("failed requests in %s", line)
		}
		library := cells[0] == "| handoff-embedded" || cells[0] == "| handoff-takeover"
		if library && cells[12] == "—" {
			t.Errorf("no connection moved in %s", line)
		}
	}
	if rows != 1+7*2 { // the header, and seven scenarios in two modes
		t.Errorf("%d table rows, want the header and 7 scenarios in 2 modes:\n%s", rows, b)
	}
	if svg, err := os.ReadFile(plot); err != nil || !strings.Contains(string(svg), "</svg>") {
		t.Errorf("plot: %v", err)
	}
}
