//go:build linux

package main

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// The tests run the example as real processes: built once with the race
// detector (WS_RACE=0 builds it without, to measure it at full speed),
// started and signalled by the pids they know, reaped as orphans once
// their parent has exited.
var (
	reaper  *testbed.Reaper
	builder *testbed.Builder
)

func TestMain(m *testing.M) {
	testbed.RunTests(m, ".", os.Getenv("WS_RACE") != "0", func(r *testbed.Reaper, b *testbed.Builder) { reaper, builder = r, b })
}

// startService builds the example and starts its first process, with no
// canary window (each upgrade hands the WebSockets over at once) and the
// flags in extra, and returns the service and the pid.
func startService(t *testing.T, extra ...string) (*testbed.Service, int) {
	t.Helper()
	testbed.CheckNoChildren(t, reaper)
	s := testbed.NewService(t, reaper, builder.Build(t, "../websocket"))
	pid := s.Start(append(s.DefaultArgs(), append([]string{"-canary-window=-1s"}, extra...)...)...)
	s.WaitPID(pid, 0, 30*time.Second)
	return s, pid
}

// upgrade sends pid SIGHUP and waits until its successor serves and pid
// has exited 0; it returns the successor's pid.
func upgrade(t *testing.T, s *testbed.Service, pid int) int {
	t.Helper()
	s.Signal(pid, syscall.SIGHUP)
	next := s.WaitPID(0, pid, 30*time.Second)
	if ws := s.WaitExit(pid, time.Minute); ws.ExitStatus() != 0 {
		t.Fatalf("process %d exited with %v", pid, ws)
	}
	return next
}

// envInt is the integer in the environment variable name, or def.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}
