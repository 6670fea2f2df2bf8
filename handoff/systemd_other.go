//go:build !linux

package handoff

func notifyWithFDs(string, []int) error { return notSupported() }

type socketID struct{}

func identify(int) (socketID, error) { return socketID{}, notSupported() }

func sameCgroup(int) bool { return false }
