//go:build linux

package ctl

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the credentials SO_PEERCRED recorded for c's peer.
func peerCred(c *net.UnixConn) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if cerr != nil {
		return Cred{}, os.NewSyscallError("getsockopt(SO_PEERCRED)", cerr)
	}
	return Cred{PID: int(cred.Pid), UID: int(cred.Uid)}, nil
}

// SocketID identifies a socket whatever descriptor refers to it.
type SocketID struct{ dev, ino uint64 }

// Identify returns the identity of the socket fd refers to.
func Identify(fd int) (SocketID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return SocketID{}, os.NewSyscallError("fstat", err)
	}
	return SocketID{dev: st.Dev, ino: st.Ino}, nil
}
