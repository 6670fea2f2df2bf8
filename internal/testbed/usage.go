//go:build unix

package testbed

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
)

// RSS is process pid's resident set size in bytes, or fails tb.
func RSS(tb TB, pid int) int64 {
	tb.Helper()
	b, err := procfs.RSS(pid)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return b
}

// MiB formats a size in bytes as mebibytes.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// PerConn formats b bytes shared out over n connections, in KiB each.
func PerConn(b int64, n int) string {
	return fmt.Sprintf("%.1f KiB", float64(b)/1024/float64(n))
}

// LoadAverage is the machine's load average over 1, 5 and 15 minutes, as
// /proc/loadavg says it, or why not: the figures' context.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return fmt.Sprintf("/proc/loadavg: %q", b)
	}
	return strings.Join(f[:3], " ")
}

// A Move is what one timed upgrade of a Service (MoveOnce) measured.
type Move struct {
	Next    int                // the successor's pid
	Status  syscall.WaitStatus // the old process's exit status
	ToReady time.Duration      // SIGHUP to the successor's ready (its pid file)
	ToExit  time.Duration      // the successor's ready to the old process's exit
	OldCPU  time.Duration      // the old process's CPU time from SIGHUP to its exit
	NextCPU time.Duration      // the successor's CPU time from its start to the old process's exit
	Load    string             // the load average just after
}

func (m Move) String() string {
	return fmt.Sprintf("SIGHUP → successor ready %v; ready → old process exited %v (CPU time: old process %v from SIGHUP to exit, successor %v from its start; load average %s)",
		m.ToReady, m.ToExit, m.OldCPU, m.NextCPU, m.Load)
}

// MoveOnce sends process pid SIGHUP, waits (within bound each) for its
// successor's ready and then for pid's exit, and measures both, with each
// process's CPU time from /proc. atReady, if not nil, runs once the
// successor is ready, before the wait for the exit.
func MoveOnce(tb TB, s *Service, pid int, bound time.Duration, atReady func(next int)) Move {
	tb.Helper()
	oldCPU := procfs.CPUUntilExit(pid) // up to its last moment
	hup := time.Now()
	s.Signal(pid, syscall.SIGHUP)
	m := Move{Next: s.WaitPID(0, pid, bound)}
	ready := time.Now()
	if atReady != nil {
		atReady(m.Next)
	}
	m.Status = s.WaitExit(pid, bound)
	exited := time.Now()
	m.NextCPU, _ = procfs.CPUTime(m.Next)
	m.ToReady, m.ToExit, m.OldCPU, m.Load = ready.Sub(hup), exited.Sub(ready), <-oldCPU, LoadAverage()
	return m
}

// ForEach runs f(worker, i) for every i below n on a few workers, not a
// goroutine each (thousands of connections), and returns the first error
// f returned; a worker stops at its first. It returns once every worker
// has.
func ForEach(n int, f func(worker, i int) error) error {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(w, i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}
