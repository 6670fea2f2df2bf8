package main

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/handoffd/handoff/internal/testenv"
)

// The test binary doubles as the exec shim (spawner.start re-executes
// /proc/self/exe, which here is the test binary) and as the children the
// tests start: with envHelper set, TestMain runs that role instead of the
// tests.
const envHelper = testenv.Role

var helpers = map[string]func() int{}

// The main goroutine keeps the main thread: a goroutine that exits while
// locked to a thread retires it, except the main thread, which Go parks
// instead. With the main thread taken, every test goroutine runs on a
// thread that can exit, as TestSpawnerSurvivesThreadExits needs.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shimCommand {
		os.Exit(runShim(os.Args[2:], os.Stderr))
	}
	if role := os.Getenv(envHelper); role != "" {
		fn, ok := helpers[role]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper role %q\n", role)
			os.Exit(2)
		}
		os.Exit(fn())
	}
	os.Exit(m.Run())
}
