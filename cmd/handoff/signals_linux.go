//go:build linux

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/handoffd/handoff/internal/exitstatus"
)

// A stopError ends the wrapper because of a stop signal.
type stopError struct{ sig os.Signal }

func (e *stopError) Error() string { return "stopped by " + exitstatus.Signal(e.sig) }

// signalActor handles signals until ctx ends: SIGHUP reloads (in its own
// goroutine, so that a second SIGHUP meanwhile is told "in progress"),
// SIGTERM and SIGINT end it with a *stopError, the others go to the
// serving child. It waits for the reloads it started before returning.
func signalActor(ctx context.Context, sigs <-chan os.Signal, log *slog.Logger, reload func(context.Context) error, sup *supervisor) error {
	var reloads sync.WaitGroup
	defer reloads.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				reloadOnHUP(ctx, log, &reloads, reload)
			case syscall.SIGTERM, syscall.SIGINT:
				log.Info("stopping", "signal", exitstatus.Signal(sig))
				return &stopError{sig: sig}
			default:
				if c := sup.currentChild(); c != nil {
					if err := c.signal(sig); err != nil {
						log.Warn("cannot forward signal", "signal", exitstatus.Signal(sig), "child", c.pid, "err", fmt.Errorf("%w", err))
					} else {
						log.Info("forwarded signal", "signal", exitstatus.Signal(sig), "child", c.pid)
					}
				}
			}
		}
	}
}
