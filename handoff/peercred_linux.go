//go:build linux

package handoff

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the pid and uid of the process at the other end of c,
// as the kernel recorded them when it connected (SO_PEERCRED).
func peerCred(c *net.UnixConn) (pid int, uid int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, os.NewSyscallError("getsockopt(SO_PEERCRED)", cerr)
	}
	return int(cred.Pid), int(cred.Uid), nil
}
