package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPUTime is the user and system CPU time process pid has used so far,
// from /proc/PID/stat, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The fields after the command (in parentheses, which may hold spaces).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// RSS is process pid's resident set size in bytes (VmRSS in
// /proc/PID/status).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// CPUUntilExit samples process pid's CPU time every millisecond until it
// can no longer read it (the process is gone and reaped) and then sends,
// once, the CPU time pid used from the call to its last sample. The
// goroutine it starts ends with the process.
func CPUUntilExit(pid int) <-chan time.Duration {
	used := make(chan time.Duration, 1)
	first, err := CPUTime(pid)
	go func() {
		last := first
		for err == nil {
			var d time.Duration
			if d, err = CPUTime(pid); err == nil {
				last = d
				time.Sleep(time.Millisecond)
			}
		}
		used <- last - first
	}()
	return used
}
