//go:build !linux

package handoff

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
)

// Passing sockets needs SOCK_SEQPACKET unix sockets and SO_PEERCRED, which
// this package only implements for Linux.

func notSupported() error { return fmt.Errorf("%w (%s)", ErrNotSupported, runtime.GOOS) }

func oobSpace(int) int { return 0 }

func writeMsg(*net.UnixConn, message, []int) error { return notSupported() }

func readMsg(*net.UnixConn, []byte, []byte) (message, []int, error) {
	return nil, nil, notSupported()
}

func closeFDs([]int) {}

func dupFD(syscall.Conn) (int, error) { return -1, notSupported() }

func socketpair() (*net.UnixConn, *os.File, error) { return nil, nil, notSupported() }

func unixConnFromFD(int) (*net.UnixConn, error) { return nil, notSupported() }

func listenControlSocket(string) (*net.UnixListener, error) { return nil, notSupported() }

func peerCred(*net.UnixConn) (int, int, error) { return 0, 0, notSupported() }

func isConnRefused(error) bool { return false }

func isNotExist(err error) bool { return os.IsNotExist(err) }

func describeSocket(int) (entry, error) { return entry{}, notSupported() }

func peerClosed(*net.UnixConn) bool { return false }

func platformSupported() error { return notSupported() }
