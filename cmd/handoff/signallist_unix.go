//go:build unix

package main

import (
	"os"
	"syscall"
)

var (
	// stopSignals stop the wrapper and its child.
	stopSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	// forwardedSignals go to the serving child.
	forwardedSignals = []os.Signal{syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGALRM}
)

// handledSignals are all the signals the wrapper catches.
func handledSignals() []os.Signal {
	return append(append([]os.Signal{syscall.SIGHUP}, stopSignals...), forwardedSignals...)
}
