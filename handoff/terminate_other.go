//go:build !unix

package handoff

import "os"

// terminate stops p: without signals, only by killing it.
func terminate(p *os.Process) { p.Kill() }
