package procfs

import (
	"os"
	"strconv"
)

// OpenFDs counts the descriptors process pid has open. For this process
// the count includes the one that reads the directory.
func OpenFDs(pid int) (int, error) {
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, err
	}
	return len(fds), nil
}
