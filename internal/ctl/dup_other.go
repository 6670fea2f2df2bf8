//go:build !unix

package ctl

import "syscall"

// DupFD returns a close-on-exec duplicate of the socket behind sc.
func DupFD(syscall.Conn) (int, error) { return -1, notSupported() }
