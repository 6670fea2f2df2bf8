//go:build linux

package ctl

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/handoffd/handoff/internal/wire"

	"golang.org/x/sys/unix"
)

// DescribeSocket says what kind of socket fd is and where it is bound, for
// sockets that arrive without a description (systemd's LISTEN_FDS).
func DescribeSocket(fd int) (wire.Entry, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return wire.Entry{}, os.NewSyscallError("getsockopt(SO_TYPE)", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return wire.Entry{}, os.NewSyscallError("getsockname", err)
	}
	var e wire.Entry
	switch typ {
	case unix.SOCK_STREAM, unix.SOCK_SEQPACKET:
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return wire.Entry{}, os.NewSyscallError("getsockopt(SO_ACCEPTCONN)", err)
		}
		if listening == 0 {
			return wire.Entry{}, fmt.Errorf("socket is not listening")
		}
		e.Kind = wire.KindListener
	case unix.SOCK_DGRAM:
		e.Kind = wire.KindPacket
	default:
		return wire.Entry{}, fmt.Errorf("unsupported socket type %d", typ)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		e.Network = map[wire.Kind]string{wire.KindListener: "tcp4", wire.KindPacket: "udp4"}[e.Kind]
		e.Address = net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(sa.Port))
	case *unix.SockaddrInet6:
		e.Network = map[wire.Kind]string{wire.KindListener: "tcp6", wire.KindPacket: "udp6"}[e.Kind]
		e.Address = net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(sa.Port))
	case *unix.SockaddrUnix:
		e.Network = "unix"
		switch {
		case typ == unix.SOCK_SEQPACKET:
			e.Network = "unixpacket"
		case typ == unix.SOCK_DGRAM:
			e.Network = "unixgram"
		}
		e.Address = sa.Name
	default:
		return wire.Entry{}, fmt.Errorf("unsupported address family %T", sa)
	}
	return e, nil
}

// peerClosed reports whether the peer of c has already closed its end,
// without consuming anything: a last look before committing to a
// successor that may have died right after saying it was ready.
func peerClosed(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		closed = (err == nil && n == 0) || (err != nil && err != unix.EAGAIN && err != unix.EINTR)
	})
	return closed
}

// RemoveSocketFile unlinks path only if it is the file of the socket fd
// is bound to, as far as the kernel can tell: fd's address (getsockname)
// is path, and lstat shows a socket there that belongs to this process's
// user. Anything else (a file a peer named, a path someone else has bound
// since) stays, and the error says why.
func RemoveSocketFile(fd int, path string) error {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	if su, ok := sa.(*unix.SockaddrUnix); !ok || su.Name != path {
		return fmt.Errorf("not removing %s: the socket is not bound there", path)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("not removing %s: not a socket file of uid %d", path, os.Geteuid())
	}
	return os.Remove(path)
}
