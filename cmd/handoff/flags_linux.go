package main

import (
	"flag"
	"io"
	"syscall"
	"time"
)

// runConfig is `handoff run`'s command line, checked.
type runConfig struct {
	listen       []listenSpec
	socket       string
	name         string
	pidfile      string
	ready        readySpec
	readyTimeout time.Duration
	drainTimeout time.Duration
	canaryWindow time.Duration // 0: off
	stopSignal   syscall.Signal
	socketMode   string   // modeAuto or modeShared
	nonblocking  bool     // the children's sockets have O_NONBLOCK set
	path         string   // COMMAND, found in PATH
	argv         []string // COMMAND and its ARGS, as given
}

// parseRun parses `handoff run`'s arguments. Help requested with -h is
// flag.ErrHelp, the usage having been written to help.
func parseRun(args []string, help io.Writer) (runConfig, error) {
	var (
		cfg    runConfig
		listen listenFlag
		ready  = "auto"
		stop   = "SIGTERM"
		mode   = modeAuto
	)
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported on one line by the caller
	fs.Var(&listen, "listen", "socket to listen on, as `[NAME=]URL`, repeatable: tcp://HOST:PORT, tcp4://, tcp6://, udp://HOST:PORT, udp4://, udp6://, unix:///PATH; NAME goes to LISTEN_FDNAMES")
	fs.StringVar(&cfg.socket, "socket", "", "control `PATH` (default: NAME.sock in $RUNTIME_DIRECTORY, or in a private directory under $TMPDIR); its directory must be writable only by the service's user, or (sticky, as /tmp) hold no socket file of another user")
	fs.StringVar(&cfg.name, "name", "", "service `NAME` (default: base name of COMMAND)")
	fs.StringVar(&cfg.pidfile, "pidfile", "", "write the wrapper's pid to `PATH`")
	fs.StringVar(&ready, "ready", ready, "how a child shows it is ready: `MODE` auto, notify, accepting, tcp://HOST:PORT, http://HOST:PORT/PATH, or a duration (see above)")
	fs.DurationVar(&cfg.readyTimeout, "ready-timeout", defaultReadyTimeout, "a new child not ready by then is killed and the reload rolled back")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", defaultDrainTimeout, "after the stop signal, the old child gets this long, then SIGKILL")
	fs.DurationVar(&cfg.canaryWindow, "canary-window", defaultCanaryWindow, "a new child that exits this soon after a reload made it serve is replaced by the previous executable, kept open since (0: off)")
	fs.StringVar(&stop, "stop-signal", stop, "`SIG`nal that makes the old child drain and exit (lighttpd, nginx: SIGINT or SIGQUIT)")
	fs.StringVar(&mode, "socket-mode", mode, "how children get the sockets, `MODE` auto or shared. auto: each child generation its own TCP/UDP socket (SO_REUSEPORT), new connections only to the newest ready child, the old one stopped once its queue is empty; shared where that cannot be (unix sockets, sockets from systemd or a predecessor). shared: every child the wrapper's socket (one accept queue)")
	fs.BoolVar(&cfg.nonblocking, "nonblocking", false, "pass a child its own sockets with O_NONBLOCK set (systemd's NonBlocking=true); by default they are blocking, as systemd passes them")
	if err := parseFlags(fs, args, help, runHelpText); err != nil {
		return cfg, err
	}
	cfg.listen = listen
	cfg.argv = fs.Args()
	if len(cfg.argv) == 0 {
		return cfg, usageErrorf("no COMMAND: handoff run [flags] -- COMMAND [ARGS...]")
	}
	if len(cfg.listen) == 0 {
		return cfg, usageErrorf("no -listen: the child needs at least one socket")
	}
	if err := checkNames(cfg.listen); err != nil {
		return cfg, err
	}
	var err error
	if cfg.socketMode, err = parseSocketMode(mode); err != nil {
		return cfg, err
	}
	if cfg.ready, err = parseReady(ready); err != nil {
		return cfg, err
	}
	if err := cfg.ready.checkProbe(cfg.listen); err != nil {
		return cfg, err
	}
	if cfg.stopSignal, err = parseSignal(stop); err != nil {
		return cfg, err
	}
	if cfg.readyTimeout <= 0 || cfg.drainTimeout <= 0 {
		return cfg, usageErrorf("-ready-timeout and -drain-timeout must be positive")
	}
	if cfg.canaryWindow < 0 {
		return cfg, usageErrorf("-canary-window must be 0 (off) or positive")
	}
	cfg.name, cfg.path, err = commandOf(cfg.name, cfg.argv[0])
	return cfg, err
}
