package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/handoffd/handoff/internal/testbed"
)

// BenchmarkTableflipUpgradeRoundTrip is handoff's BenchmarkUpgradeRoundTrip
// (handoff/bench_linux_test.go) for cloudflare/tableflip, so that the two
// compare on one machine: a minimal server times, in process, the call to
// Upgrade (start a fresh copy of the program, pass it the socket) until the
// successor is ready and this process has stopped accepting.
//
// tableflip allows one Upgrader per process and one upgrade per Upgrader,
// so each round is one generation of a chain of processes, upgraded by
// SIGHUP once its predecessor has exited, as tableflip requires; each
// reports its time in a file. Allocations are not comparable across
// processes and are not reported.
func BenchmarkTableflipUpgradeRoundTrip(b *testing.B) {
	setupReaper.Do(func() {
		if err := testbed.BecomeSubreaper(); err != nil {
			b.Fatal(err)
		}
		reaper = testbed.StartReaper()
	})
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	s := testbed.NewService(b, reaper, exe)
	results := filepath.Join(s.Dir, "results")
	s.Env = []string{envGeneration + "=1", envAddr + "=" + s.Addr, envPIDFile + "=" + s.PIDFile, envResults + "=" + results}
	pid := s.Start("-test.run=^$")
	s.WaitPID(pid, 0, 30*time.Second)
	b.ResetTimer() // the wall time per round sizes b.N; the generations' own times are reported
	for i := range b.N {
		old := pid
		s.Signal(old, syscall.SIGHUP)
		pid = s.WaitPID(0, old, 30*time.Second)
		if ws := s.WaitExit(old, 30*time.Second); ws.ExitStatus() != 0 {
			b.Fatalf("generation %d exited with %v", old, ws)
		}
		if n := len(readResults(b, results)); n != i+1 {
			b.Fatalf("%d results after %d upgrades", n, i+1)
		}
	}
	var total time.Duration
	for _, d := range readResults(b, results) {
		total += d
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
	s.Signal(pid, syscall.SIGTERM)
	s.WaitExit(pid, 30*time.Second)
}

var (
	setupReaper sync.Once
	reaper      *testbed.Reaper
)

// A generation of the chain reads its settings from these variables.
const (
	envGeneration = "BENCH_TABLEFLIP_GENERATION"
	envAddr       = "BENCH_TABLEFLIP_ADDR"
	envPIDFile    = "BENCH_TABLEFLIP_PIDFILE"
	envResults    = "BENCH_TABLEFLIP_RESULTS"
)

func TestMain(m *testing.M) {
	if os.Getenv(envGeneration) != "" {
		if err := runGeneration(); err != nil {
			fmt.Fprintln(os.Stderr, "generation:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runGeneration is one process of the chain: it serves its pid on every
// connection and, on SIGHUP, upgrades once, timed, and exits.
func runGeneration() error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	upg, err := tableflip.New(tableflip.Options{PIDFile: os.Getenv(envPIDFile)})
	if err != nil {
		return err
	}
	defer upg.Stop()
	ln, err := upg.Listen("tcp", os.Getenv(envAddr))
	if err != nil {
		return err
	}
	go serveTag(ln, strconv.Itoa(os.Getpid()))
	if err := upg.Ready(); err != nil {
		return err
	}
	<-hup
	start, err := upgrade(upg)
	if err != nil {
		return err
	}
	ln.Close()
	took := time.Since(start)
	f, err := os.OpenFile(os.Getenv(envResults), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, took.Nanoseconds()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// upgrade upgrades and returns when the attempt that succeeded began.
// tableflip refuses to upgrade ("parent hasn't exited") until it has seen
// its own parent exit, a moment after the parent is gone, and ("process is
// not ready yet") until its own goroutine has taken note of Ready, a
// moment after Ready returned: wait for the parent, and retry both.
func upgrade(upg *tableflip.Upgrader) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := upg.WaitForParent(ctx); err != nil {
		return time.Time{}, err
	}
	for {
		start := time.Now()
		err := upg.Upgrade()
		if err == nil || !retryable[err.Error()] || ctx.Err() != nil {
			return start, err
		}
		time.Sleep(time.Millisecond) // give tableflip's own goroutine the news
	}
}

// retryable are tableflip's refusals that only say "not yet".
var retryable = map[string]bool{"parent hasn't exited": true, "process is not ready yet": true}

// serveTag answers every connection with tag until ln is closed.
func serveTag(ln net.Listener, tag string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(tag))
		c.Close()
	}
}

func readResults(tb testing.TB, path string) []time.Duration {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	var ds []time.Duration
	for _, line := range strings.Fields(string(b)) {
		ns, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			tb.Fatalf("bad result %q", line)
		}
		ds = append(ds, time.Duration(ns))
	}
	return ds
}
