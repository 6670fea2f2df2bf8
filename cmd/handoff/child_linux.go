//go:build linux

package main

import (
	"os"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/buildinfo"
	"github.com/handoffd/handoff/internal/exitstatus"
	"golang.org/x/sys/unix"
)

// child is one running COMMAND, the leader of its own process group. Its
// wait goroutine reaps it and then closes done; whoever stops a child
// waits for done, so no child is left unreaped.
type child struct {
	pid     int
	number  int // 1 for the wrapper's first child, then one more per start
	started time.Time
	proc    *os.Process
	exe     *os.File    // the executable it runs, open; nil once handed on or closed
	exeInfo *exeStatus  // what it was when the child started, for status
	gen     *generation // its sockets (shared with a child restarted in its place)
	done    chan struct{}
	status  syscall.WaitStatus // valid once done is closed
}

// watchChild takes charge of the child pid: when it exits, whatever it
// left in its process group (workers of a multi-process server) is
// killed, and it is reaped.
func watchChild(pid, number int) (*child, error) {
	proc, err := os.FindProcess(pid) // a pidfd on Linux: signals never reach a reused pid
	if err != nil {
		return nil, err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	c := &child{pid: pid, number: number, started: time.Now(), proc: proc, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer unix.Close(pidfd)
		// Exited but not reaped: the zombie keeps its pid, and so its
		// process group id, from being reused, so signalling the group
		// reaches only what the child left behind. A worker that stayed
		// would keep accepting on the shared sockets.
		var info unix.Siginfo
		for unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
		}
		unix.Kill(-pid, unix.SIGKILL)
		st, err := proc.Wait()
		if err == nil {
			c.status = st.Sys().(syscall.WaitStatus)
		}
	}()
	return c, nil
}

// describeExe says what exe, the open executable at path, is: its size
// and time, and the Go build stamped into it, if any. nil if it cannot
// be read.
func describeExe(path string, exe *os.File) *exeStatus {
	fi, err := exe.Stat()
	if err != nil {
		return nil
	}
	e := &exeStatus{Path: path, Size: fi.Size(), Modified: fi.ModTime().UTC()}
	if v, rev, dirty, ok := buildinfo.File(exe); ok {
		e.Build = &handoff.Build{Version: v, Revision: buildinfo.Revision(rev, dirty)}
	}
	return e
}

// closeExe closes the child's executable, unless it was handed on.
func (c *child) closeExe() {
	if c.exe != nil {
		c.exe.Close()
		c.exe = nil
	}
}

// exited reports whether the child has exited (and been reaped).
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// signal sends sig unless the child has exited.
func (c *child) signal(sig os.Signal) error {
	if c.exited() {
		return nil
	}
	return c.proc.Signal(sig)
}

// stop sends sig, waits up to drain for the child to exit, then kills it
// (and, once it is dead, the rest of its process group).
// It returns once the child is reaped, and whether it needed SIGKILL.
func (c *child) stop(sig syscall.Signal, drain time.Duration) (killed bool) {
	c.signal(sig)
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case <-c.done:
		return false
	case <-t.C:
	}
	c.kill()
	return true
}

// kill kills the child and waits until it is reaped.
func (c *child) kill() {
	c.signal(syscall.SIGKILL)
	<-c.done
}

// describe says how the child ended.
func (c *child) describe() string {
	return exitstatus.Wait(c.status)
}

// exitCode is the wrapper's exit code for a child stopped with stopSig:
// its own exit code, 0 if stopSig ended it, 128+N if signal N did.
func (c *child) exitCode(stopSig syscall.Signal) int {
	return exitCodeOf(c.status, stopSig)
}
