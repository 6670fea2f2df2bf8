//go:build !linux

package sdnotify

import (
	"fmt"
	"runtime"
	"syscall"
)

// WithFDs sends state to the service manager with fds attached.
func WithFDs(string, []int) error { return fmt.Errorf("fd store: not supported on %s", runtime.GOOS) }

// SameCgroup reports whether process pid is in this process's control
// groups.
func SameCgroup(int) bool { return false }

// SuccessorParent says how to start a successor of process pid, and which
// process will be its parent.
func SuccessorParent(pid int) (*syscall.SysProcAttr, int) { return nil, pid }
