//go:build linux

// Package sdnotify is what the handoff package needs of systemd beyond
// go-systemd: notifications that carry descriptors (the fd store), the
// names sockets are stored under, whether a process belongs to this
// unit, and how to start a successor that systemd supervises.
package sdnotify

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// WithFDs sends state to the service manager with fds attached
// (SCM_RIGHTS), as sd_pid_notify_with_fds(3) does: go-systemd has no such
// call, and FDSTORE=1 needs one. The fds stay the caller's. Without
// NOTIFY_SOCKET it does nothing.
func WithFDs(state string, fds []int) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' { // '@': abstract, which SockaddrUnix knows
		return fmt.Errorf("unsupported NOTIFY_SOCKET %q", addr)
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: addr}, unix.MSG_NOSIGNAL); err != nil {
		return os.NewSyscallError("sendmsg", err)
	}
	return nil
}

// SameCgroup reports whether process pid is in this process's control
// groups: for systemd, whether it belongs to the same unit.
func SameCgroup(pid int) bool {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return false
	}
	theirs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	return err == nil && bytes.Equal(own, theirs)
}

// SuccessorParent says how to start a successor of process pid, and which
// process will be its parent. Under a service manager (NOTIFY_SOCKET, and
// this process is the manager's child: pid 1, or $MANAGERPID for a user
// manager) the successor is started as a sibling (CLONE_PARENT), a child
// of the manager, which then supervises it like a process it started
// once MAINPID= makes it the main process. systemd (252 at least) does
// not wait for a main process that is not its child: a stop follows
// SIGTERM with SIGKILL at once, which leaves no time to drain. Elsewhere
// the successor is this process's child.
func SuccessorParent(pid int) (*syscall.SysProcAttr, int) {
	ppid := os.Getppid()
	if os.Getenv("NOTIFY_SOCKET") == "" || (ppid != 1 && strconv.Itoa(ppid) != os.Getenv("MANAGERPID")) {
		return nil, pid
	}
	return &syscall.SysProcAttr{Cloneflags: syscall.CLONE_PARENT}, ppid
}
