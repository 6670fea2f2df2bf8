//go:build linux

package handoff

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// gateReads says whether HTTPServer reads an idle connection's next
// request through the gate (httpConn.gatedRead), so that it can hand the
// connection over without waking net/http: where connections are handed
// over.
const gateReads = true

// readFD is one non-blocking read(2) of fd.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), p)
		if err != unix.EINTR {
			return max(n, 0), err
		}
	}
}

// errAgain is what readFD returns while nothing has arrived.
const errAgain = syscall.EAGAIN
