package ctl

import (
	"slices"
	"strings"
)

// Environment of a successor that its predecessor started: the control
// connection is inherited as fd HANDOFF_FD, valid only in the child of
// HANDOFF_PPID (like systemd's LISTEN_PID, so a leaked variable misleads
// nobody): the process that started it, or that process's parent.
const (
	EnvFD   = "HANDOFF_FD"
	EnvPPID = "HANDOFF_PPID"
)

// EnvironWithout returns env without the variables named.
func EnvironWithout(env []string, names ...string) []string {
	var kept []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			kept = append(kept, kv)
		}
	}
	return kept
}
