package handoff

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/exitstatus"
	"github.com/handoffd/handoff/internal/sdnotify"
)

// The successor that Upgrade starts: how it is started, and how it is
// stopped when the upgrade fails.

// image is how to start a fresh copy of this program.
type image struct {
	path string   // executable, re-read from disk at every upgrade
	args []string // os.Args
	dir  string   // working directory at start
}

// currentImage captures the program as it was started. The path keeps the
// name it was started by (not /proc/self/exe's target), so that replacing
// the file or switching a symlink there is what the next upgrade runs.
func currentImage() (image, error) {
	dir, err := os.Getwd()
	if err != nil {
		return image{}, err
	}
	path := os.Args[0]
	if !strings.Contains(path, "/") {
		if path, err = exec.LookPath(path); err != nil {
			if path, err = os.Executable(); err != nil {
				return image{}, err
			}
		}
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	return image{path: path, args: os.Args, dir: dir}, nil
}

// successorProcess is a successor this process started.
type successorProcess struct {
	cmd  *exec.Cmd
	once sync.Once
	done chan struct{} // closed once it has exited and been reaped
}

// startSuccessor starts a fresh copy of the program with one end of a new
// socketpair as its control connection, and returns the other end.
func (u *Upgrader) startSuccessor() (*successorProcess, *ctl.Conn, error) {
	parent, child, err := ctl.Socketpair()
	if err != nil {
		return nil, nil, err
	}
	defer child.Close()
	attr, ppid := sdnotify.SuccessorParent(u.pid)
	cmd := &exec.Cmd{
		Path:        u.image.path,
		Args:        u.image.args,
		Dir:         u.image.dir,
		Env:         append(ctl.EnvironWithout(os.Environ(), ctl.EnvFD, ctl.EnvPPID), ctl.EnvFD+"=3", ctl.EnvPPID+"="+strconv.Itoa(ppid)),
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		ExtraFiles:  []*os.File{child}, // fd 3
		SysProcAttr: attr,
	}
	if err := cmd.Start(); err != nil {
		parent.Close()
		return nil, nil, err
	}
	return &successorProcess{cmd: cmd, done: make(chan struct{})}, ctl.NewConn(parent, ctl.SmallMessage, 0), nil
}

func (p *successorProcess) pid() int { return p.cmd.Process.Pid }

// wait reaps the process once it exits. A successor started as a sibling
// (CLONE_PARENT) is reaped by its parent, the service manager; then wait
// watches for its end instead.
func (p *successorProcess) wait() {
	if err := p.cmd.Wait(); !errors.Is(err, syscall.ECHILD) {
		return
	}
	for p.cmd.Process.Signal(syscall.Signal(0)) == nil {
		time.Sleep(10 * time.Millisecond) // not our child: no wait(2) tells us
	}
	p.cmd.Process.Release()
}

// exited returns a channel closed once the process has exited and been
// reaped. The first call starts the goroutine that waits for it, which
// ends with the process; whoever makes the process end joins it here.
func (p *successorProcess) exited() <-chan struct{} {
	p.once.Do(func() {
		go func() {
			defer close(p.done)
			p.wait()
		}()
	})
	return p.done
}

// status says how the process ended, once exited is closed.
func (p *successorProcess) status() string {
	if st := p.cmd.ProcessState; st != nil {
		return exitstatus.Describe(st)
	}
	return "status unknown: the service manager reaped it"
}

// kill stops the successor at once and reaps it.
func (p *successorProcess) kill() {
	p.cmd.Process.Kill()
	<-p.exited()
}

// release lets a successor that took over live on: it outlives this
// process, which exits after draining.
func (p *successorProcess) release() { p.cmd.Process.Release() }

// stopSuccessor stops a successor whose upgrade failed without cutting
// what it may have accepted (programs serve before they call Ready): it
// gets SIGTERM (and SIGCONT, should it be stopped), DrainTimeout to drain
// and exit, then SIGKILL. Close cuts the wait short.
func (u *Upgrader) stopSuccessor(p *successorProcess) {
	terminate(p.cmd.Process)
	exited := p.exited()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		timer := time.NewTimer(u.cfg.DrainTimeout)
		defer timer.Stop()
		select {
		case <-exited:
			return
		case <-timer.C:
			u.log.Warn("failed successor did not exit within DrainTimeout; killing it", "successor", p.pid(), "drain_timeout", u.cfg.DrainTimeout)
		case <-u.ctx.Done():
		}
		p.cmd.Process.Kill()
		<-exited
	}()
}
