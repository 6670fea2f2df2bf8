package procfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Tree lists pid and its descendants, parents before their children.
func Tree(pid int) []int {
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, Children(tree[i])...)
	}
	return tree
}

// Children lists the children of process pid that are still running or
// not yet reaped (/proc/PID/task/TID/children of each of its threads).
// It is empty once pid is gone.
func Children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var kids []int
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				kids = append(kids, c)
			}
		}
	}
	slices.Sort(kids)
	return slices.Compact(kids)
}
