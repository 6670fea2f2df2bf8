//go:build !linux

package handoff

import "syscall"

func notifyWithFDs(string, []int) error { return notSupported() }

type socketID struct{}

func identify(int) (socketID, error) { return socketID{}, notSupported() }

func sameCgroup(int) bool { return false }

func successorParent(pid int) (*syscall.SysProcAttr, int) { return nil, pid }
