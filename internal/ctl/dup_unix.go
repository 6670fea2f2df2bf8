//go:build unix

package ctl

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DupFD returns a close-on-exec duplicate of the socket behind sc, which the
// caller must close. It goes through SyscallConn().Control rather than
// File() or Fd(), which would switch the socket to blocking mode for every
// process that shares it.
func DupFD(sc syscall.Conn) (int, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	err = rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3) // never 0-2, which stand for stdio
	})
	if err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", derr)
	}
	return nfd, nil
}
