package ctl

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Pidfd refers to one process by a pidfd, which, unlike its pid, the
// kernel never gives to another process once it has exited. It serves a
// process that is not this one's child, which cannot be waited for.
type Pidfd struct{ fd int }

// OpenPidfd opens a pidfd for pid. An error matching os.ErrProcessDone
// means that no process has that pid now.
func OpenPidfd(pid int) (*Pidfd, error) {
	fd, err := unix.PidfdOpen(pid, 0) // close-on-exec, as every pidfd
	if errors.Is(err, unix.ESRCH) {
		return nil, os.ErrProcessDone
	}
	if err != nil {
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	return &Pidfd{fd: fd}, nil
}

// Exited waits up to d for the process to exit and reports whether it
// has.
func (p *Pidfd) Exited(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		if err == unix.EINTR && time.Now().Before(deadline) {
			continue
		}
		return err == nil && n > 0
	}
}

// Signal sends sig to the process, if it still runs.
func (p *Pidfd) Signal(sig syscall.Signal) error {
	return os.NewSyscallError("pidfd_send_signal", unix.PidfdSendSignal(p.fd, sig, nil, 0))
}

// Close closes the pidfd.
func (p *Pidfd) Close() error { return unix.Close(p.fd) }
