//go:build linux && amd64

package procfs

import "golang.org/x/sys/unix"

// The older calls that amd64 still has beside their successors.
func init() {
	syscallKinds[unix.SYS_ACCEPT] = onFD
	syscallKinds[unix.SYS_POLL] = onPollFDs
	syscallKinds[unix.SYS_SELECT] = onFDSet
}
