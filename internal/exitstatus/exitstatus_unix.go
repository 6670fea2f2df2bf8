//go:build unix

package exitstatus

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Wait says how a process with wait status ws ended, as Describe does.
func Wait(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		text := "killed by " + Signal(ws.Signal())
		if ws.CoreDump() {
			text += " (core dumped)"
		}
		return text
	case ws.Stopped():
		return "stopped by " + Signal(ws.StopSignal())
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

func describeSys(st *os.ProcessState) (string, bool) {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return "", false
	}
	return Wait(ws), true
}

func signalName(sig os.Signal) (string, bool) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return "", false
	}
	name := unix.SignalName(s)
	return name, name != ""
}
