//go:build !unix

package main

import (
	"fmt"
	"io"
	"runtime"
)

// The wrapper needs a unix: on Linux it hands over (run_linux.go),
// elsewhere it restarts (run_other.go); here it refuses. `handoff reload` and `handoff status` build everywhere, and
// report what the library says. docs/platforms.md says what works where.

func cmdRun(_ []string, _, stderr io.Writer) int {
	return report(stderr, "run", fmt.Errorf("the wrapper needs Linux (or, reloading by restart, macOS or a BSD), and this is %s: run the server itself here (a server that embeds the library serves on %s, without the handoff: restart it by stopping and starting); see docs/platforms.md", runtime.GOOS, runtime.GOOS))
}

func runShim(_ []string, stderr io.Writer) int {
	return report(stderr, shimCommand, fmt.Errorf("not supported on %s", runtime.GOOS))
}
