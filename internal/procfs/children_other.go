//go:build !linux

package procfs

// Children is empty: there is no /proc to read.
func Children(pid int) []int { return nil }

// Tree is just pid: there is no /proc to read.
func Tree(pid int) []int { return []int{pid} }
