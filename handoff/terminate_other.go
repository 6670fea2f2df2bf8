//go:build !unix

package handoff

import (
	"os"

	"github.com/handoffd/handoff/internal/ctl"
)

// terminate stops p: without signals, only by killing it.
func terminate(p *os.Process) { p.Kill() }

// terminatePeer is terminate for a process this one did not start; where
// there is no handoff there is no such process.
func terminatePeer(*ctl.Pidfd) {}
