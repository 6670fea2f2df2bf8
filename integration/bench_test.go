//go:build linux

package integration_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke runs `make bench`'s driver (internal/bench) small: every
// scenario, two restarts, keep-alive load, and for tableflip and
// handoff-embedded the rows over TLS, h2c and h2 too. It must finish,
// write its report and plot, and show no failed request for any handoff
// scenario in any protocol (over HTTP/2, a request net/http's Transport
// retried counts as failed), nor for the baseline that restarts nothing;
// with the library, cleartext HTTP/1.1 keep-alive connections move to the
// new process.
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
	header, rows := markdownTable(string(b))
	column := func(name string) int {
		i := slices.Index(header, name)
		if i < 0 {
			t.Fatalf("the report's table has no column %q; its header is %q:\n%s", name, header, b)
		}
		return i
	}
	scenario, protocol, failed, moved := column("scenario"), column("protocol"), column("failed (by kind)"), column("moved (n, p50)")
	seen := map[string]int{} // rows by scenario and protocol
	for _, cells := range rows {
		if len(cells) != len(header) {
			t.Errorf("row %q has %d cells, want the header's %d", cells, len(cells), len(header))
			continue
		}
		switch name := cells[scenario]; {
		case name == "handoff-crash":
			// Rolled back: nothing refused; what the killed process was
			// answering when it died may fail.
			if strings.Contains(cells[failed], "refused") {
				t.Errorf("refused connections in %q", cells)
			}
		case strings.HasPrefix(name, "handoff-") || name == "spawn-only":
			if cells[failed] != "0" {
				t.Errorf("failed requests in %q", cells)
			}
		}
		seen[cells[scenario]+" "+cells[protocol]]++
		library := cells[scenario] == "handoff-embedded" || cells[scenario] == "handoff-takeover"
		if library && cells[protocol] == "http1" && cells[moved] == "—" {
			t.Errorf("no connection moved in %q", cells)
		}
	}
	for _, sc := range []string{"tableflip", "handoff-embedded"} {
		for _, proto := range []string{"tls", "h2c", "h2"} {
			if seen[sc+" "+proto] != 1 {
				t.Errorf("%d rows for %s over %s, want 1 (keep-alive)", seen[sc+" "+proto], sc, proto)
			}
		}
	}
	if len(rows) != 12*2+2*3 { // twelve scenarios in two modes, two of them over three more protocols in one
		t.Errorf("%d table rows, want 12 scenarios in 2 modes and 2 over 3 more protocols:\n%s", len(rows), b)
	}
	if svg, err := os.ReadFile(plot); err != nil || !strings.Contains(string(svg), "</svg>") {
		t.Errorf("plot: %v", err)
	}
}

// markdownTable returns the cells of the first table in a markdown
// document: its header and its rows, without the delimiter row.
func markdownTable(doc string) (header []string, rows [][]string) {
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			if header != nil {
				break // the table has ended
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case header == nil:
			header = cells
		case strings.Trim(cells[0], "-:") == "": // |---|--:|
		default:
			rows = append(rows, cells)
		}
	}
	return header, rows
}
