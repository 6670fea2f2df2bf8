package procfs

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestUsageOfThisProcess(t *testing.T) {
	rss, err := RSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Fatalf("RSS = %d, %v; want at least 1 MiB", rss, err)
	}
	// Spend CPU until the clock-tick count moves, for at most 10 s.
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if now, _ := CPUTime(os.Getpid()); now > before {
			return
		}
	}
	t.Fatal("CPU time did not move in 10 s of spinning")
}

func TestUsageOfNoProcess(t *testing.T) {
	if _, err := RSS(-1); err == nil {
		t.Error("RSS(-1) succeeded")
	}
	if _, err := CPUTime(-1); err == nil {
		t.Error("CPUTime(-1) succeeded")
	}
}

func TestCPUUntilExit(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	used := CPUUntilExit(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-used:
		if d <= 0 {
			t.Errorf("a shell counting to 200,000 used %v of CPU", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no CPU time 10 s after the process was reaped")
	}
}
