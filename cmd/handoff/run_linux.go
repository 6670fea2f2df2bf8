//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/hooks"
	"github.com/oklog/run"
)

// takeoverSlack is added to -ready-timeout for the library's ready
// timeout: a new wrapper that takes over from this one still has to start
// its child and wait for it, under its own -ready-timeout, before it is
// ready.
const takeoverSlack = 10 * time.Second

// cmdRun is `handoff run`.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseRun(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return report(stderr, "run", err)
	}
	code, err := runWrapper(cfg, stderr)
	if err != nil {
		return report(stderr, "run", err)
	}
	return code
}

// runWrapper runs the wrapper until it is stopped or replaced, and
// returns its exit code.
func runWrapper(cfg runConfig, stderr io.Writer) (int, error) {
	// Catch signals first: once a predecessor or systemd sees this wrapper
	// ready, a SIGHUP or SIGTERM may come at any moment.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, handledSignals()...)
	defer signal.Stop(sigs)

	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", cfg.name)
	sup := newSupervisor(cfg)
	socks := newWrapperSockets(cfg.socketMode, cfg.nonblocking, log)
	upg, err := handoff.New(context.Background(), handoff.Config{
		Name:         cfg.name,
		Socket:       cfg.socket,
		PIDFile:      cfg.pidfile,
		ReadyTimeout: cfg.readyTimeout + takeoverSlack,
		Logger:       log,
	})
	if err != nil {
		return 0, err
	}
	defer upg.Close()
	// Before Ready: a reload restarts the child, and the status lists it.
	hw := hooks.Wrapper{Reload: sup.requestReload, StatusDetail: sup.detail}
	if cfg.socketMode == modeAuto {
		hw.SocketControl = socks.control
	}
	wrapped := hooks.Wrap(upg, hw)
	log = log.With("generation", upg.Generation())
	socks.log = log

	if err := socks.open(upg, cfg.listen); err != nil {
		return 0, err
	}
	defer socks.close()
	ready := &readiness{spec: cfg.ready}
	forget := func(int) {}
	var g run.Group
	if cfg.ready.usesNotify() {
		ns, err := listenNotify(log)
		if err != nil {
			return 0, err
		}
		defer ns.close()
		ready.notify, forget = ns, ns.forget
		g.Add(ns.serve, func(error) { ns.close() })
	}
	sp := newSpawner()
	defer sp.close() // after every child is reaped: run returns only then
	deps := supervisorDeps{log: log, upg: wrappedUpgrader{upg, wrapped.SetStatus}, ready: ready, spawn: sp,
		env: childEnv(socks, ready.notify), sockets: socks, forget: forget}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Add(func() error { return sup.run(ctx, deps) }, func(error) { cancel() })
	g.Add(func() error { return signalActor(ctx, sigs, log, wrapped.Reload, sup) }, func(error) { cancel() })
	err = g.Run()
	var stop *stopError
	switch {
	case errors.As(err, &stop):
		if c := sup.lastChild(); c != nil {
			return c.exitCode(cfg.stopSignal), nil
		}
		return exitOK, nil
	case err != nil:
		return 0, err
	}
	return exitOK, nil // a new wrapper took over
}

// wrappedUpgrader is the wrapper's Upgrader with the status line that
// hooks.Wrap gives it, for the supervisor.
type wrappedUpgrader struct {
	*handoff.Upgrader
	setStatus func(text string)
}

// SetStatus is hooks.Wrapped.SetStatus.
func (w wrappedUpgrader) SetStatus(text string) { w.setStatus(text) }

// childEnv is the children's environment: the wrapper's, without the
// variables that were meant for the wrapper itself (systemd's sockets and
// notify socket, a predecessor's control connection), plus the sockets
// and, for -ready auto and notify, the wrapper's notify socket.
// LISTEN_PID is set by the shim, to the child's own pid.
func childEnv(socks *wrapperSockets, ns *notifySocket) []string {
	env := ctl.EnvironWithout(os.Environ(), wrapperOnlyEnv...)
	env = append(env, "LISTEN_FDS="+strconv.Itoa(socks.count()), "LISTEN_FDNAMES="+socks.fdNames())
	if ns != nil {
		env = append(env, "NOTIFY_SOCKET="+ns.path)
	}
	return env
}
