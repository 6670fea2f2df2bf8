//go:build unix

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of `handoff run`.
const (
	defaultReadyTimeout = 30 * time.Second
	defaultDrainTimeout = 30 * time.Second
	defaultCanaryWindow = 10 * time.Second
)

// checkNames refuses two sockets with the same name: names identify
// sockets across generations and in LISTEN_FDNAMES.
func checkNames(specs []listenSpec) error {
	seen := map[string]bool{}
	for _, s := range specs {
		if s.name == "" {
			continue
		}
		if seen[s.name] {
			return usageErrorf("-listen: name %q used twice", s.name)
		}
		seen[s.name] = true
	}
	return nil
}

// parseSignal reads SIGTERM, TERM or 15.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, usageErrorf("-stop-signal: unknown signal %q", s)
}

// commandOf returns the name the wrapper's service goes by when -name is
// not given (the command's base name), and the command's absolute path:
// a command that does not exist is an error now rather than a child that
// fails at every restart.
func commandOf(name, argv0 string) (string, string, error) {
	if name == "" {
		name = filepath.Base(argv0)
	}
	path, err := exec.LookPath(argv0)
	if err != nil {
		return name, "", fmt.Errorf("command %q: %w", argv0, errors.Unwrap(err))
	}
	if path, err = filepath.Abs(path); err != nil {
		return name, "", err
	}
	return name, path, nil
}

// parseFlags parses args with fs. Asked for help (-h), it writes text and
// fs's defaults to help and returns flag.ErrHelp; a bad flag is a usage
// error.
func parseFlags(fs *flag.FlagSet, args []string, help io.Writer, text string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(help, text)
			fs.SetOutput(help)
			fs.PrintDefaults()
			return err
		}
		return &usageError{msg: err.Error()}
	}
	return nil
}
