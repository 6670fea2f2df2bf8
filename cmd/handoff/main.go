// Command handoff gives zero-downtime reloads to servers that accept
// systemd-style socket activation, without changing them.
//
//	handoff run [flags] -- COMMAND [ARGS...]
//	handoff reload [-socket PATH | -name NAME] [-wait-canary]
//	handoff status [-socket PATH | -name NAME] [-json]
//	handoff version
//	handoff help
//
// `handoff run` holds the listening sockets for its whole life and runs
// COMMAND as its child with them as fds 3.. (LISTEN_FDS, LISTEN_FDNAMES,
// LISTEN_PID). A reload starts a new child, waits until it is ready, and
// only then stops the old one; the sockets never close, so no connection
// is refused. `handoff help` explains it all.
//
// Exit codes: 0 success; 1 a runtime error (a port in use, a command that
// does not exist, a reload that was rolled back, no wrapper running); 2 a
// usage error (an unknown flag, a bad URL). Once stopped by SIGTERM or
// SIGINT, `handoff run` exits with its child's status: the child's exit
// code, 0 if the stop signal ended it, 128+N if another signal N did.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// shimCommand is the hidden subcommand that runs between fork and the
// child's command: Go cannot run code there, and LISTEN_PID must be the
// child's own pid. The wrapper re-executes itself (/proc/self/exe, the
// very binary that runs, even if replaced on disk meanwhile) as
// `handoff exec-shim PATH ARGV...`; the shim sets LISTEN_PID to its pid
// and execs PATH, which keeps the pid.
const shimCommand = "exec-shim"

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

// dispatch runs the subcommand args name and returns the exit code.
func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, helpText)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "reload":
		return cmdReload(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, helpText)
		return exitOK
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionLine())
		return exitOK
	case shimCommand:
		return runShim(args[1:], stderr)
	}
	return report(stderr, "", usageErrorf("unknown command %q", args[0]))
}

// A usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// report prints err as one line and returns its exit code: 2 for a usage
// error, 1 for anything else.
func report(stderr io.Writer, cmd string, err error) int {
	prefix := "handoff"
	if cmd != "" {
		prefix += " " + cmd
	}
	// The library's errors say "handoff:" already, some of them again
	// where one wraps another; the prefix says it once.
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	msg = strings.ReplaceAll(strings.TrimPrefix(msg, "handoff: "), ": handoff: ", ": ")
	var ue *usageError
	if errors.As(err, &ue) {
		hint := "handoff help"
		if cmd != "" {
			hint = "handoff " + cmd + " -h"
		}
		fmt.Fprintf(stderr, "%s: %s (see %s)\n", prefix, msg, hint)
		return exitUsage
	}
	fmt.Fprintf(stderr, "%s: %s\n", prefix, msg)
	return exitRuntime
}
