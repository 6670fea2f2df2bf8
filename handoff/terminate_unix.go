//go:build unix

package handoff

import (
	"os"
	"syscall"

	"github.com/handoffd/handoff/internal/ctl"
)

// terminate asks p to stop the way service managers do: SIGTERM, and
// SIGCONT in case it is stopped, so that it gets to handle the SIGTERM.
func terminate(p *os.Process) {
	p.Signal(syscall.SIGTERM)
	p.Signal(syscall.SIGCONT)
}

// terminatePeer is terminate for a process this one did not start,
// known by its pidfd.
func terminatePeer(p *ctl.Pidfd) {
	p.Signal(syscall.SIGTERM)
	p.Signal(syscall.SIGCONT)
}
