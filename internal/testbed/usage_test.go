//go:build linux

package testbed

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

func TestForEachRunsEveryIndexOnce(t *testing.T) {
	const n = 1000
	var seen [n]atomic.Int32
	if err := ForEach(n, func(w, i int) error {
		if w < 0 || w >= 32 {
			t.Errorf("worker %d", w)
		}
		seen[i].Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if got := seen[i].Load(); got != 1 {
			t.Fatalf("index %d ran %d times", i, got)
		}
	}
}

func TestForEachReturnsAnError(t *testing.T) {
	bad := errors.New("bad")
	var ran atomic.Int32
	err := ForEach(1000, func(_, i int) error {
		ran.Add(1)
		if i == 10 {
			return bad
		}
		return nil
	})
	if !errors.Is(err, bad) {
		t.Fatalf("ForEach = %v, want %v", err, bad)
	}
	if ran.Load() < 11 {
		t.Fatalf("only %d ran", ran.Load())
	}
}

func TestUsageFigures(t *testing.T) {
	if f := strings.Fields(LoadAverage()); len(f) != 3 {
		t.Errorf("LoadAverage() = %q, want three figures", LoadAverage())
	}
	if b := RSS(t, os.Getpid()); b < 1<<20 {
		t.Errorf("RSS = %d bytes", b)
	}
	if got := PerConn(2048*10, 10); got != "2.0 KiB" {
		t.Errorf("PerConn = %q", got)
	}
	if got := MiB(3 << 20); got != "3.0 MiB" {
		t.Errorf("MiB = %q", got)
	}
}
