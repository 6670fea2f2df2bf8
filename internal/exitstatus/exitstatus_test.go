//go:build unix

package exitstatus

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// TestDescribe: real processes that exit, are killed, or get SIGTERM are
// described with the signal's name, as an operator would write it.
func TestDescribe(t *testing.T) {
	for _, tt := range []struct {
		name   string
		script string
		want   string
	}{
		{"exit", "exit 3", "exit status 3"},
		{"SIGKILL", "kill -KILL $$", "killed by SIGKILL"},
		{"SIGTERM", "kill -TERM $$", "killed by SIGTERM"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", tt.script)
			cmd.Run() // the error is the status under test
			if got := Describe(cmd.ProcessState); got != tt.want {
				t.Errorf("Describe = %q, want %q", got, tt.want)
			}
			if got := Wait(cmd.ProcessState.Sys().(syscall.WaitStatus)); got != tt.want {
				t.Errorf("Wait = %q, want %q", got, tt.want)
			}
		})
	}
	if got := Describe(nil); got != "status unknown" {
		t.Errorf("Describe(nil) = %q", got)
	}
}

// TestSignal: signals are named SIGTERM, not "terminated".
func TestSignal(t *testing.T) {
	for sig, want := range map[os.Signal]string{syscall.SIGTERM: "SIGTERM", os.Interrupt: "SIGINT", syscall.SIGKILL: "SIGKILL", syscall.SIGHUP: "SIGHUP"} {
		if got := Signal(sig); got != want {
			t.Errorf("Signal(%v) = %q, want %q", sig, got, want)
		}
	}
}
