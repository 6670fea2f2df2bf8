//go:build unix

package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockPollInterval is how often a contended lock is retried.
var lockPollInterval = 5 * time.Millisecond

// LockFile takes an exclusive flock on path, creating it if needed, and
// returns the function that releases it. The lock is only ever held for
// the few milliseconds it takes to decide who owns the control socket, so
// a lock held until ctx ends means that something else holds it on
// purpose: the error then says so. path must not be a symbolic link
// (O_NOFOLLOW) and must belong to this process's user, so that nobody
// else can keep the service from starting, or make it create a file
// where a link points.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	for {
		f, err := openLock(path)
		if err != nil {
			return nil, err
		}
		if err := flockWait(ctx, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// RemoveLock may have unlinked the file while this process waited
		// for it: then the lock is on an orphan, and the file at path (if
		// any) is the one to lock.
		if same, err := isFileAt(f, path); err != nil || !same {
			f.Close()
			if err != nil && !errors.Is(err, unix.ENOENT) {
				return nil, err
			}
			continue
		}
		return func() { f.Close() }, nil // closing releases the lock
	}
}

// RemoveLock removes the lock file at path, under the lock, so that a
// process waiting for it at that moment notices and takes a new one.
func RemoveLock(ctx context.Context, path string) error {
	unlock, err := LockFile(ctx, path)
	if err != nil {
		return err
	}
	defer unlock()
	return os.Remove(path)
}

// openLock opens (creating) the lock file without following a link, and
// checks that it is a regular file of this user's.
func openLock(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("lock file %s is a symbolic link: refusing to follow it", path)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, fmt.Errorf("lock file %s is not a regular file", path)
	}
	if int(st.Uid) != os.Geteuid() {
		f.Close()
		return nil, fmt.Errorf("lock file %s belongs to uid %d, not to this process's uid %d: remove it, or keep the control socket in a directory only this user can write to", path, st.Uid, os.Geteuid())
	}
	return f, nil
}

// flockWait takes the flock on f, retrying until ctx ends.
func flockWait(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	start := time.Now()
	for {
		var ferr error
		if err := rc.Control(func(fd uintptr) { ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB) }); err != nil {
			return err
		}
		if ferr == nil {
			return nil
		}
		if ferr != unix.EWOULDBLOCK && ferr != unix.EINTR {
			return os.NewSyscallError("flock", ferr)
		}
		timer := time.NewTimer(lockPollInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("another process has held it for %s (the lock is only ever held for milliseconds: %s): %w",
				time.Since(start).Round(time.Millisecond), "is something holding it on purpose?", ctx.Err())
		case <-timer.C:
		}
	}
}

// isFileAt reports whether f is the file at path now.
func isFileAt(f *os.File, path string) (bool, error) {
	var have, now unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &have); err != nil {
		return false, os.NewSyscallError("fstat", err)
	}
	if err := unix.Lstat(path, &now); err != nil {
		return false, err
	}
	return have.Dev == now.Dev && have.Ino == now.Ino, nil
}
