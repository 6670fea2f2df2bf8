//go:build unix && !linux

package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
)

// Without Linux the wrapper reloads by restarting its child
// (restart_unix.go); docs/platforms.md says what else differs.

// cmdRun is `handoff run`.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseRestartRun(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return report(stderr, "run", err)
	}
	code, err := runRestarting(cfg, stderr)
	if err != nil {
		return report(stderr, "run", err)
	}
	return code
}

// runShim is the shim: it sets LISTEN_PID and execs args[0] with the
// child's argv args[1:]; it returns only if exec failed.
func runShim(args []string, stderr io.Writer) int {
	if len(args) < 2 {
		io.WriteString(stderr, "handoff exec-shim: internal use only\n")
		return exitUsage
	}
	return execWithListenPID(args[0], args[1:], stderr)
}

// runRestarting runs the restarting wrapper until a stop signal, and
// returns its exit code: the child's, as on Linux.
func runRestarting(cfg restartConfig, stderr io.Writer) (int, error) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, handledSignals()...)
	defer signal.Stop(sigs)
	return restartWrapper(cfg, sigs, stderr)
}
