//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// runShim is the shim: it only returns if exec failed. args are the
// executable, as /proc/self/fd/N of a descriptor the wrapper passed, then
// the child's argv. The descriptor is closed by the exec, unless the file
// is a script, whose interpreter opens it by that name.
func runShim(args []string, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprintln(stderr, "handoff exec-shim: internal use only")
		return exitUsage
	}
	if n, ok := strings.CutPrefix(args[0], "/proc/self/fd/"); ok {
		if fd, err := strconv.Atoi(n); err == nil {
			magic := make([]byte, 2)
			if k, _ := syscall.Pread(fd, magic, 0); k < 2 || string(magic) != "#!" {
				syscall.CloseOnExec(fd)
			}
		}
	}
	return execWithListenPID(args[0], args[1:], stderr)
}

// spawnRequest asks the spawner to start a child.
type spawnRequest struct {
	argv  []string
	attr  *syscall.ProcAttr
	reply chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// A spawner forks every child from one OS thread. The parent-death
// signal (PR_SET_PDEATHSIG) fires when the thread that forked the child
// exits, not the process: a child forked from an ordinary goroutine would
// be killed whenever the Go runtime retires that thread. The spawner's
// goroutine stays locked to its thread until close, which the owner calls
// only once every child has been reaped.
type spawner struct {
	reqs chan spawnRequest
	done chan struct{}
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnRequest), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *spawner) loop() {
	// Never unlocked: when loop returns the thread exits with it, and by
	// then no child is left for the signal to reach.
	runtime.LockOSThread()
	defer close(s.done)
	for r := range s.reqs {
		pid, err := syscall.ForkExec("/proc/self/exe", r.argv, r.attr)
		r.reply <- spawnResult{pid, err}
	}
}

// start runs the executable exe with argv through the shim: stdin from
// /dev/null, the wrapper's stdout and stderr, then files as fds 3... The
// shim execs exe through its descriptor, so the child runs this very
// file, whatever has replaced it on disk since it was opened. The child
// gets SIGKILL if the wrapper dies, and its own process group, so that a
// terminal's ^C reaches only the wrapper, which stops it in order.
func (s *spawner) start(exe *os.File, argv, env []string, files []uintptr) (int, error) {
	null, err := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, os.NewSyscallError("open "+os.DevNull, err)
	}
	defer syscall.Close(null)
	fds := append([]uintptr{uintptr(null), 1, 2}, files...)
	exePath := "/proc/self/fd/" + strconv.Itoa(len(fds))
	fds = append(fds, exe.Fd())
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: fds,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true},
	}
	reply := make(chan spawnResult, 1)
	s.reqs <- spawnRequest{argv: append([]string{"handoff", shimCommand, exePath}, argv...), attr: attr, reply: reply}
	r := <-reply
	runtime.KeepAlive(exe)
	return r.pid, r.err
}

// close ends the spawner's thread; no child may be left.
func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}
