//go:build linux

// Package integration builds the real binaries and drives them with real
// processes, real sockets and real load. Load goes to loopback only.
package integration_test

import (
	"testing"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// envHelper makes the handoff package's test binary run a helper role
// (see handoff/main_test.go).
const envHelper = testenv.Helper

var (
	reaper  *testbed.Reaper
	builder *testbed.Builder
)

func TestMain(m *testing.M) {
	testbed.RunTests(m, "..", true, func(r *testbed.Reaper, b *testbed.Builder) { reaper, builder = r, b })
}

// binary builds the main package pkg (relative to the module root) once,
// with the race detector.
func binary(t testing.TB, pkg string) string { return builder.Build(t, pkg) }

// checkNoChildren fails t if a process it started is still running once
// its cleanups have run (register it first).
func checkNoChildren(t *testing.T) { testbed.CheckNoChildren(t, reaper) }

func newService(t testing.TB, bin string) *testbed.Service { return testbed.NewService(t, reaper, bin) }

// requireNoFailures fails t unless r saw no failed request.
func requireNoFailures(t testing.TB, r *loadgen.Result) {
	t.Helper()
	t.Logf("load: %v", r)
	if r.FailedCount() != 0 || r.OK == 0 {
		t.Errorf("%d failed requests of %d: %v", r.FailedCount(), r.Requests, r.Errors)
	}
}
