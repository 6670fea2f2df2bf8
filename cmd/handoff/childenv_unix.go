//go:build unix

package main

import (
	"strings"

	"github.com/handoffd/handoff/internal/ctl"
)

// wrapperOnlyEnv are the variables meant for the wrapper itself, never
// for a child.
var wrapperOnlyEnv = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
	"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "FDSTORE", ctl.EnvFD, ctl.EnvPPID}

// listenFDNames is LISTEN_FDNAMES for specs: "unknown" for a socket
// without a name, as systemd does.
func listenFDNames(specs []listenSpec) string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.name
		if names[i] == "" {
			names[i] = "unknown"
		}
	}
	return strings.Join(names, ":")
}
