//go:build unix

package handoff

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockPollInterval is how often a contended lock is retried.
var lockPollInterval = 5 * time.Millisecond

// lockFile takes an exclusive flock on path, creating it if needed, and
// returns the function that releases it. The lock is only ever held for
// the few milliseconds it takes to decide who owns the control socket.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	for {
		var ferr error
		if err := rc.Control(func(fd uintptr) { ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB) }); err != nil {
			f.Close()
			return nil, err
		}
		if ferr == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if ferr != unix.EWOULDBLOCK && ferr != unix.EINTR {
			f.Close()
			return nil, os.NewSyscallError("flock", ferr)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(lockPollInterval):
		}
	}
}
