//go:build !linux

package main

import (
	"fmt"
	"io"
	"runtime"
)

// The wrapper needs Linux: parent-death signals, SO_PASSCRED and /proc.
// `handoff reload` and `handoff status` build everywhere, and report what
// the library says.

func cmdRun(_ []string, _, stderr io.Writer) int {
	return report(stderr, "run", fmt.Errorf("not supported on %s", runtime.GOOS))
}

func runShim(_ []string, stderr io.Writer) int {
	return report(stderr, shimCommand, fmt.Errorf("not supported on %s", runtime.GOOS))
}
