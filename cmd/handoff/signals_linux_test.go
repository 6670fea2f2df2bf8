//go:build linux

package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestSignalActorNamesSignals: the stop signal is named as kill(1) names
// it, in the log line and in the error that ends the wrapper: SIGTERM,
// not "terminated".
func TestSignalActorNamesSignals(t *testing.T) {
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	err := signalActor(context.Background(), sigs, log, nil, newSupervisor(runConfig{}))
	var stop *stopError
	if !errors.As(err, &stop) || err.Error() != "stopped by SIGTERM" {
		t.Fatalf("signalActor = %v, want stopped by SIGTERM", err)
	}
	if !strings.Contains(logs.String(), "msg=stopping signal=SIGTERM") {
		t.Fatalf("log:\n%s", logs.String())
	}
}
