//go:build linux

package handoff

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// describeSocket says what kind of socket fd is and where it is bound, for
// sockets that arrive without a description (systemd's LISTEN_FDS).
func describeSocket(fd int) (entry, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return entry{}, os.NewSyscallError("getsockopt(SO_TYPE)", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return entry{}, os.NewSyscallError("getsockname", err)
	}
	var e entry
	switch typ {
	case unix.SOCK_STREAM, unix.SOCK_SEQPACKET:
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return entry{}, os.NewSyscallError("getsockopt(SO_ACCEPTCONN)", err)
		}
		if listening == 0 {
			return entry{}, fmt.Errorf("socket is not listening")
		}
		e.Kind = kindListener
	case unix.SOCK_DGRAM:
		e.Kind = kindPacket
	default:
		return entry{}, fmt.Errorf("unsupported socket type %d", typ)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		e.Network = map[sockKind]string{kindListener: "tcp4", kindPacket: "udp4"}[e.Kind]
		e.Address = net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(sa.Port))
	case *unix.SockaddrInet6:
		e.Network = map[sockKind]string{kindListener: "tcp6", kindPacket: "udp6"}[e.Kind]
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
		return entry{}, fmt.Errorf("unsupported address family %T", sa)
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
