package handoff

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Environment of a successor started by Upgrade: the control connection
// is inherited as fd HANDOFF_FD, valid only in the child of HANDOFF_PPID
// (like systemd's LISTEN_PID, so a leaked variable misleads nobody): the
// process that started it, or that process's parent (successorParent).
const (
	envFD   = "HANDOFF_FD"
	envPPID = "HANDOFF_PPID"
)

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
type successorProcess struct{ cmd *exec.Cmd }

// startSuccessor starts a fresh copy of the program with one end of a new
// socketpair as its control connection, and returns the other end.
func (u *Upgrader) startSuccessor() (*successorProcess, *ctlConn, error) {
	parent, child, err := socketpair()
	if err != nil {
		return nil, nil, err
	}
	defer child.Close()
	attr, ppid := successorParent(u.pid)
	cmd := &exec.Cmd{
		Path:        u.image.path,
		Args:        u.image.args,
		Dir:         u.image.dir,
		Env:         append(environWithout(envFD, envPPID), envFD+"=3", envPPID+"="+strconv.Itoa(ppid)),
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		ExtraFiles:  []*os.File{child}, // fd 3
		SysProcAttr: attr,
	}
	if err := cmd.Start(); err != nil {
		parent.Close()
		return nil, nil, err
	}
	return &successorProcess{cmd: cmd}, newCtlConn(parent, smallMessage, 0), nil
}

func (p *successorProcess) pid() int { return p.cmd.Process.Pid }

// kill stops a successor that failed and reaps it (its parent does, when
// it was started as a sibling).
func (p *successorProcess) kill() {
	p.cmd.Process.Kill()
	if err := p.cmd.Wait(); errors.Is(err, syscall.ECHILD) {
		p.cmd.Process.Release() // not our child: its pidfd is all there is to free
	}
}

// release lets a successor that took over live on: it outlives this
// process, which exits after draining.
func (p *successorProcess) release() { p.cmd.Process.Release() }

// inheritedControlConn returns the control connection a predecessor that
// started this process passed as fd HANDOFF_FD, or nil when there is none.
func inheritedControlConn() (*ctlConn, error) {
	fdStr, ok := os.LookupEnv(envFD)
	ppid := os.Getenv(envPPID)
	os.Unsetenv(envFD)
	os.Unsetenv(envPPID)
	if !ok || ppid != strconv.Itoa(os.Getppid()) {
		return nil, nil // not ours: a leaked variable, or the parent is gone
	}
	fd, err := strconv.Atoi(fdStr)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("handoff: bad %s=%q", envFD, fdStr)
	}
	c, err := unixConnFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("handoff: %s=%d: %w", envFD, fd, err)
	}
	return newCtlConn(c, maxMessageSize, maxFDsPerMessage), nil
}

func environWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			env = append(env, kv)
		}
	}
	return env
}
