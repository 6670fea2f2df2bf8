// Package exitstatus says how a process ended, and names signals, in the
// words an operator types: "exit status 2", "killed by SIGKILL", never
// Go's "signal: killed" or "killed by terminated".
package exitstatus

import (
	"fmt"
	"os"
)

// Describe says how the process ended: "exit status 2", "killed by
// SIGTERM", "killed by SIGSEGV (core dumped)". st nil: not reaped here.
func Describe(st *os.ProcessState) string {
	if st == nil {
		return "status unknown"
	}
	if text, ok := describeSys(st); ok {
		return text
	}
	return st.String()
}

// Signal names sig as kill(1) and the signal(7) page do: "SIGTERM".
func Signal(sig os.Signal) string {
	if name, ok := signalName(sig); ok {
		return name
	}
	return fmt.Sprint(sig)
}
