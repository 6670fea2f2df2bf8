//go:build unix

package testbed

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
)

// OpenFDs counts the descriptors process pid has open.
func OpenFDs(pid int) (int, error) { return procfs.OpenFDs(pid) }

// WaitFDs waits until process pid has at most max descriptors open: the
// count it had before a test disturbed it, once the connections the test
// made are gone. It fails tb if the count stays higher.
func WaitFDs(tb TB, pid, max int, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := OpenFDs(pid)
		if err != nil {
			tb.Fatalf("descriptors of %d: %v", pid, err)
		}
		if n <= max {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("process %d leaked descriptors: %d open after %v, %d before\n%s", pid, n, timeout, max, fdList(pid))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fdList describes pid's descriptors, for a failure message.
func fdList(pid int) string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	fds, _ := os.ReadDir(dir)
	var s string
	for _, fd := range fds {
		target, _ := os.Readlink(dir + fd.Name())
		s += fmt.Sprintf("  %s -> %s\n", fd.Name(), target)
	}
	return s
}
