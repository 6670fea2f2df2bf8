//go:build unix

package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/handoffd/handoff/handoff"
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

// reloadOnHUP runs reload for a SIGHUP in a goroutine that reloads joins,
// and logs how it ended; one that finds a reload in progress is ignored.
func reloadOnHUP(ctx context.Context, log *slog.Logger, reloads *sync.WaitGroup, reload func(context.Context) error) {
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
}
