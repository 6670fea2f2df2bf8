//go:build !linux

package ctl

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// Passing sockets needs SOCK_SEQPACKET unix sockets and SO_PEERCRED, which
// this package only implements for Linux.

func notSupported() error { return fmt.Errorf("%w (%s)", ErrNotSupported, runtime.GOOS) }

func oobSpace(int) int { return 0 }

func writeMsg(*net.UnixConn, []byte, []int) error { return notSupported() }

func readMsg(*net.UnixConn, []byte, []byte, bool) (wire.Message, []int, bool, error) {
	return nil, nil, false, notSupported()
}

// CloseFDs closes each of fds.
func CloseFDs([]int) {}

// Socketpair returns a connected pair of SOCK_SEQPACKET sockets.
func Socketpair() (*net.UnixConn, *os.File, error) { return nil, nil, notSupported() }

// Pidfd refers to one process.
type Pidfd struct{}

// OpenPidfd opens a pidfd for pid.
func OpenPidfd(int) (*Pidfd, error) { return nil, notSupported() }

// Exited waits up to d for the process to exit and reports whether it
// has.
func (*Pidfd) Exited(time.Duration) bool { return false }

// Signal sends sig to the process.
func (*Pidfd) Signal(syscall.Signal) error { return notSupported() }

// Close closes the pidfd.
func (*Pidfd) Close() error { return nil }

// AdoptConn turns fd, a connected socket received from another process,
// into a net.Conn.
func AdoptConn(int) (net.Conn, error) { return nil, notSupported() }

// TryAdoptConn is AdoptConn that leaves fd to the caller on failure.
func TryAdoptConn(int) (net.Conn, error) { return nil, notSupported() }

// UnixConnFromFD turns a SOCK_SEQPACKET unix socket into a *net.UnixConn.
func UnixConnFromFD(int) (*net.UnixConn, error) { return nil, notSupported() }

// ListenControlSocket binds a SOCK_SEQPACKET listener at path.
func ListenControlSocket(string) (*net.UnixListener, error) { return nil, notSupported() }

func peerCred(*net.UnixConn) (Cred, error) { return Cred{}, notSupported() }

// IsConnRefused reports whether err says nothing listens at a unix path.
func IsConnRefused(error) bool { return false }

// IsNotExist reports whether err says the path does not exist.
func IsNotExist(err error) bool { return os.IsNotExist(err) }

// DescribeSocket says what kind of socket fd is and where it is bound.
func DescribeSocket(int) (wire.Entry, error) { return wire.Entry{}, notSupported() }

func peerClosed(*net.UnixConn) bool { return false }

// Supported reports whether this platform can pass sockets.
func Supported() error { return notSupported() }

// SocketID identifies a socket whatever descriptor refers to it.
type SocketID struct{}

// Identify returns the identity of the socket fd refers to.
func Identify(int) (SocketID, error) { return SocketID{}, notSupported() }

// RemoveSocketFile removes path if it is the socket bound to fd.
func RemoveSocketFile(int, string) error { return notSupported() }
