//go:build !linux

package procfs

import (
	"errors"
	"time"
)

// Children is empty: there is no /proc to read.
func Children(pid int) []int { return nil }

// OpenFDs fails: there is no /proc to read.
func OpenFDs(pid int) (int, error) { return 0, errors.ErrUnsupported }

// Tree is just pid: there is no /proc to read.
func Tree(pid int) []int { return []int{pid} }

// CPUTime fails: there is no /proc to read.
func CPUTime(pid int) (time.Duration, error) { return 0, errors.ErrUnsupported }

// RSS fails: there is no /proc to read.
func RSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// CPUUntilExit sends 0 at once: there is no /proc to read.
func CPUUntilExit(pid int) <-chan time.Duration {
	used := make(chan time.Duration, 1)
	used <- 0
	return used
}
