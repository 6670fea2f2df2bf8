//go:build linux

package ctl

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/handoffd/handoff/internal/wire"

	"golang.org/x/sys/unix"
)

// oobSpace is the control-buffer size that holds n descriptors.
func oobSpace(n int) int { return unix.CmsgSpace(n * 4) }

// fdCapacity is how many descriptors fit in oob.
func fdCapacity(oob []byte) int { return max(0, (len(oob)-unix.CmsgSpace(0))/4) }

// writeMsg sends the encoded message b on c with fds attached as
// SCM_RIGHTS. The fds stay owned by the caller.
func writeMsg(c *net.UnixConn, b []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix(b, oob, nil)
	return err
}

// readMsg receives one message from c into buf and oob. Descriptors that
// arrive with it are close-on-exec (ReadMsgUnix uses MSG_CMSG_CLOEXEC on
// Linux) and owned by the caller; on any error every one of them has
// already been closed. Truncated control data (MSG_CTRUNC) is an error
// unless allowCut: then the message comes back with the descriptors that
// arrived and cut set. The kernel installs a message's descriptors in
// order and stops at the first it cannot (EMFILE, or no room in oob),
// closing the rest, so those that arrived are the first ones sent.
func readMsg(c *net.UnixConn, buf, oob []byte, allowCut bool) (wire.Message, []int, bool, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	fds, _, perr := ParseControl(oob[:oobn])
	cut := flags&unix.MSG_CTRUNC != 0
	fail := func(err error) (wire.Message, []int, bool, error) {
		CloseFDs(fds)
		return nil, nil, false, err
	}
	switch {
	case err != nil:
		return fail(fmt.Errorf("receive: %w", err))
	case perr != nil:
		return fail(fmt.Errorf("%w: bad control message: %w", wire.ErrProtocol, perr))
	case cut && !allowCut:
		return fail(fmt.Errorf("%w: control data truncated: more than %d descriptors, or out of descriptors", wire.ErrProtocol, fdCapacity(oob)))
	case flags&unix.MSG_TRUNC != 0:
		return fail(fmt.Errorf("%w: message larger than %d bytes", wire.ErrProtocol, len(buf)))
	case n == 0:
		return fail(io.EOF)
	}
	m, err := wire.Decode(buf[:n])
	if err != nil {
		return fail(err)
	}
	return m, fds, cut, nil
}

// ParseControl returns every descriptor (SCM_RIGHTS) in a message's
// ancillary data oob, and the sender's credentials (SCM_CREDENTIALS) if
// it carried them. It keeps going past a bad control message so that
// whatever did arrive can be closed; the caller owns the descriptors.
func ParseControl(oob []byte) (fds []int, cred *unix.Ucred, err error) {
	if len(oob) == 0 {
		return nil, nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET {
			continue
		}
		var perr error
		switch msgs[i].Header.Type {
		case unix.SCM_RIGHTS:
			var rights []int
			rights, perr = unix.ParseUnixRights(&msgs[i])
			fds = append(fds, rights...)
		case unix.SCM_CREDENTIALS:
			cred, perr = unix.ParseUnixCredentials(&msgs[i])
		}
		if perr != nil && err == nil {
			err = perr
		}
	}
	return fds, cred, err
}

// CloseFDs closes each of fds.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Socketpair returns a connected pair of SOCK_SEQPACKET sockets: one for
// this process and one, as a file, for a child to inherit.
func Socketpair() (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("Socketpair", err)
	}
	c, err := UnixConnFromFD(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "handoff-successor"), nil
}

// UnixConnFromFD turns a SOCK_SEQPACKET unix socket into a *net.UnixConn,
// taking ownership of fd (it is closed on every path).
func UnixConnFromFD(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "handoff-control")
	defer f.Close()
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt(SO_TYPE)", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("%w: fd %d is not a SOCK_SEQPACKET socket", wire.ErrProtocol, fd)
	}
	unix.CloseOnExec(fd)
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%w: fd %d is not a unix socket", wire.ErrProtocol, fd)
	}
	return uc, nil
}

// TryAdoptConn is AdoptConn for a connection nobody else holds (the
// sender let go of it): on failure (out of descriptors, most likely) fd
// is still open and the caller's, to try again later. It costs a
// descriptor and two system calls more than AdoptConn.
func TryAdoptConn(fd int) (net.Conn, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	c, err := AdoptConn(dup)
	if err != nil {
		return nil, err
	}
	unix.Close(fd)
	return c, nil
}

// AdoptConn turns fd, a connected socket received from another process,
// into a net.Conn, taking ownership of fd (it is closed on every path).
//
// The received descriptor shares its open file description, O_NONBLOCK
// included, with the sender's copy. It is made blocking for the moment
// net.FileConn takes to duplicate it (which makes the description
// non-blocking again), so that os.NewFile does not register it with the
// netpoller only for the Close right after to remove it: two epoll_ctl
// calls a connection fewer, which counts when thousands arrive at once.
// On failure the description is left non-blocking, as the sender, which
// keeps serving the connection, needs it.
func AdoptConn(fd int) (net.Conn, error) {
	blocking := unix.SetNonblock(fd, false) == nil
	f := os.NewFile(uintptr(fd), "handed-over")
	c, err := net.FileConn(f)
	if err != nil && blocking {
		unix.SetNonblock(fd, true)
	}
	f.Close()
	return c, err
}

// ListenControlSocket binds a SOCK_SEQPACKET listener at path with mode
// 0600 from the start: fchmod on the socket before bind sets the mode the
// kernel gives the new inode, so the path is never reachable by others.
func ListenControlSocket(path string) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, os.NewSyscallError("fchmod", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, &net.OpError{Op: "listen", Net: "unixpacket", Addr: &net.UnixAddr{Name: path, Net: "unixpacket"}, Err: os.NewSyscallError("bind", err)}
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, os.NewSyscallError("listen", err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // the path outlives this process's copy
	return ul, nil
}

// IsConnRefused reports whether err says nothing listens at a unix path
// that exists (a stale socket file).
func IsConnRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }

// IsNotExist reports whether err says the path does not exist.
func IsNotExist(err error) bool { return errors.Is(err, unix.ENOENT) }

// Supported reports whether this platform can pass sockets.
func Supported() error { return nil }
