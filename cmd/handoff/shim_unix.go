//go:build unix

package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
)

// execWithListenPID is the shim's last step: it execs path with argv
// and the shim's environment plus LISTEN_PID, its own pid, which the exec
// keeps. It returns only if the exec failed, with the shim's exit code.
func execWithListenPID(path string, argv []string, stderr io.Writer) int {
	env := append(os.Environ(), "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	err := syscall.Exec(path, argv, env)
	fmt.Fprintf(stderr, "handoff: exec %s: %v\n", path, err)
	return 127
}

// exitCodeOf is the wrapper's exit code for a child that ended with
// status after it was sent stopSig: its own exit code, 0 if stopSig ended
// it, 128+N if signal N did.
func exitCodeOf(status syscall.WaitStatus, stopSig syscall.Signal) int {
	switch {
	case status.Exited():
		return status.ExitStatus()
	case status.Signaled() && status.Signal() == stopSig:
		return 0
	case status.Signaled():
		return 128 + int(status.Signal())
	}
	return exitRuntime
}
