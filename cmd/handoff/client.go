package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
)

// noWrapper rewords the failure to reach a control socket that nobody
// serves: a wrapper or a server that embeds the library.
func noWrapper(socket string, err error) error {
	var errno syscall.Errno
	switch {
	case errors.Is(err, handoff.ErrNotSupported):
		return fmt.Errorf("nothing serves a control socket here: the handoff needs Linux, and servers on %s run without it; on macOS and the BSDs `handoff run` reloads on SIGHUP instead, by restarting its child (docs/platforms.md): %w", runtime.GOOS, err)
	case !errors.As(err, &errno):
	case errno == syscall.ENOENT:
		return fmt.Errorf("nothing serves the control socket %s: there is no such file (is the service running, and with this -socket or -name?): %w", socket, errno)
	case errno == syscall.ECONNREFUSED:
		return fmt.Errorf("nothing serves the control socket %s: the file is left from a process that has exited: %w", socket, errno)
	}
	return err
}

// clientTimeout bounds `handoff status`; a reload is bounded by the
// wrapper's own ready and drain timeouts.
const clientTimeout = 10 * time.Second

// clientFlags parses the flags of reload and status (usage is the
// synopsis after the command) and returns the control socket. Help requested with -h is flag.ErrHelp.
func clientFlags(cmd, usage string, args []string, help io.Writer, extra func(*flag.FlagSet)) (string, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "", "control socket `PATH` of the wrapper, or of a server that embeds the library")
	name := fs.String("name", "", "service `NAME`: the default control socket of a wrapper or server of that name started without -socket")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(help, "Usage: handoff %s %s\n\nFlags:\n", cmd, usage)
			fs.SetOutput(help)
			fs.PrintDefaults()
			return "", err
		}
		return "", &usageError{msg: err.Error()}
	}
	switch {
	case fs.NArg() > 0:
		return "", usageErrorf("unexpected argument %q", fs.Arg(0))
	case *socket != "" && *name != "":
		return "", usageErrorf("give -socket or -name, not both")
	case *socket != "":
		return *socket, nil
	case *name != "":
		return control.SocketPath(*name)
	}
	return "", usageErrorf("which wrapper? give -socket PATH or -name NAME")
}

// cmdReload is `handoff reload`: it prints the wrapper's progress and
// exits 0 once the new child serves (with -wait-canary: once it has
// lasted its canary window), 1 with the reason if it was rolled back.
func cmdReload(args []string, stdout, stderr io.Writer) int {
	var waitCanary bool
	socket, err := clientFlags("reload", "[-socket PATH | -name NAME] [-wait-canary]\n\nReloads, printing the progress; exits 0 once the new child (or successor) serves,\n1 with the reason if the reload was rolled back. Gives up after "+control.DefaultTimeout.String()+".", args, stdout, func(fs *flag.FlagSet) {
		fs.BoolVar(&waitCanary, "wait-canary", false, "exit only once the new version has lasted its canary window: 1, with how it ended, if it died within it and was rolled back")
	})
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return report(stderr, "reload", err)
	}
	reload := control.Reload
	if waitCanary {
		reload = control.ReloadProven
	}
	err = reload(context.Background(), socket, func(line string) { fmt.Fprintln(stdout, line) })
	var refused *handoff.RefusedError
	if errors.As(err, &refused) {
		err = errors.New(refused.Reason) // the wrapper's own words: why it rolled back
	}
	if err != nil {
		return report(stderr, "reload", noWrapper(socket, err))
	}
	fmt.Fprintln(stdout, "reloaded")
	return exitOK
}

// cmdStatus is `handoff status`.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	socket, err := clientFlags("status", "[-socket PATH | -name NAME] [-json]\n\nShows what serves: the process or wrapper, its build, children, sockets and\nlast reload. Gives up after "+clientTimeout.String()+".", args, stdout, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print the status as JSON")
	})
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return report(stderr, "status", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	st, err := control.Status(ctx, socket)
	if err != nil {
		return report(stderr, "status", noWrapper(socket, err))
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
		return exitOK
	}
	printStatus(stdout, st)
	return exitOK
}
