//go:build linux

package testbed

import (
	"os"

	"golang.org/x/sys/unix"
)

// BecomeSubreaper makes this process inherit its orphaned descendants:
// a server's successor, once the server that started it has exited.
func BecomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
	}
	return nil
}
