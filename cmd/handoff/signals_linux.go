//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/handoffd/handoff/handoff"
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
				reloads.Add(1)
				go func() {
					defer reloads.Done()
					log.Info("SIGHUP: reloading")
					if err := reload(ctx); err != nil {
						if errors.Is(err, handoff.ErrInProgress) {
							log.Warn("SIGHUP ignored: a reload is in progress")
							return
						}
						log.Error("reload failed", "err", err)
						return
					}
					log.Info("reloaded")
				}()
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
