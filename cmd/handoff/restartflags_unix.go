//go:build unix

package main

import (
	"flag"
	"io"
	"time"
)

// refusedRestartFlags are `handoff run`'s flags that the restarting
// wrapper cannot honour, and why.
var refusedRestartFlags = map[string]string{
	"ready-timeout": "there is no old child to keep serving while a new one gets ready",
	"canary-window": "there is no previous child to roll back to",
	"socket-mode":   "every child gets the wrapper's sockets",
}

// parseRestartRun parses `handoff run`'s arguments for the restarting
// wrapper: the flags it honours as on Linux, the others refused, each
// with why. Help requested with -h is flag.ErrHelp, the usage having been
// written to help.
func parseRestartRun(args []string, help io.Writer) (restartConfig, error) {
	var (
		cfg    restartConfig
		listen listenFlag
		ready  = "auto"
		stop   = "SIGTERM"
	)
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(&listen, "listen", "socket to listen on, as `[NAME=]URL`, repeatable: tcp://HOST:PORT, tcp4://, tcp6://, udp://HOST:PORT, udp4://, udp6://, unix:///PATH; NAME goes to LISTEN_FDNAMES")
	fs.StringVar(&cfg.socket, "socket", "", "control socket `PATH` (none is served here: reload with SIGHUP)")
	fs.StringVar(&cfg.name, "name", "", "service `NAME` (default: base name of COMMAND)")
	fs.StringVar(&cfg.pidfile, "pidfile", "", "write the wrapper's pid to `PATH`")
	fs.StringVar(&ready, "ready", ready, "`auto` (ready once started) or a duration a child must live to count as started")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", defaultDrainTimeout, "after the stop signal, the old child gets this long, then SIGKILL")
	fs.StringVar(&stop, "stop-signal", stop, "`SIG`nal that makes the old child drain and exit")
	fs.BoolVar(&cfg.nonblocking, "nonblocking", false, "pass the children the sockets with O_NONBLOCK set")
	for name, why := range refusedRestartFlags {
		fs.String(name, "", "not here: "+why)
	}
	if err := parseFlags(fs, args, help, restartHelpText); err != nil {
		return cfg, err
	}
	var refused error
	fs.Visit(func(f *flag.Flag) {
		if why, ok := refusedRestartFlags[f.Name]; ok && refused == nil {
			refused = usageErrorf("-%s needs the handoff, which needs Linux: here a reload restarts the child, and %s (see docs/platforms.md)", f.Name, why)
		}
	})
	if refused != nil {
		return cfg, refused
	}
	cfg.listen, cfg.argv = listen, fs.Args()
	if len(cfg.argv) == 0 {
		return cfg, usageErrorf("no COMMAND: handoff run [flags] -- COMMAND [ARGS...]")
	}
	if len(cfg.listen) == 0 {
		return cfg, usageErrorf("no -listen: the child needs at least one socket")
	}
	if err := checkNames(cfg.listen); err != nil {
		return cfg, err
	}
	if ready != "auto" {
		d, err := time.ParseDuration(ready)
		if err != nil || d <= 0 {
			return cfg, usageErrorf("-ready %q: here only auto or a positive duration (notify, accepting and probes need Linux; see docs/platforms.md)", ready)
		}
		cfg.readyDelay = d
	}
	var err error
	if cfg.stopSignal, err = parseSignal(stop); err != nil {
		return cfg, err
	}
	if cfg.drainTimeout <= 0 {
		return cfg, usageErrorf("-drain-timeout must be positive")
	}
	cfg.name, cfg.path, err = commandOf(cfg.name, cfg.argv[0])
	return cfg, err
}

// restartHelpText heads `handoff run -h` where reloads restart.
const restartHelpText = `usage: handoff run [flags] -- COMMAND [ARGS...]

Here (not Linux) the wrapper holds the sockets and passes them to COMMAND
with socket activation (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), but a
reload (SIGHUP) restarts the child: the stop signal, up to -drain-timeout,
SIGKILL, then a new child on the same sockets. Connections made meanwhile
wait in the sockets' queues; none is refused. See docs/platforms.md.

`
