//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/testbed"
)

// A server is one scenario's server under the benchmark's control.
type server interface {
	// start starts the first process and returns the pid that answers.
	start() int
	// restart restarts it once and returns once a new process serves and
	// the old one is gone.
	restart()
	// stop ends the last process.
	stop()
	// retried counts restarts that had to be triggered again.
	retried() int
}

// Bounds on every wait of the benchmark.
const (
	startTimeout = 30 * time.Second
	exitTimeout  = time.Minute
)

// restartFunc restarts a pidServer from p.pid and returns the new pid.
type restartFunc func(p *pidServer) int

// pidServer is a server whose serving process the pid file names.
type pidServer struct {
	s       *testbed.Service
	args    []string // of every process the benchmark starts
	pid     int      // serving now
	how     restartFunc
	retries int // restarts signalled again after a refusal
	// canary: the old process stands by for its canary window after a
	// restart (handoff's default) and is released by the next restart's
	// handover or by stop, so a restart waits for the one before the old
	// one to be gone, standing, instead of the old one itself.
	canary   bool
	standing int
}

// retire waits, after a restart from old, until the process that this
// restart ends is gone: old, or with a canary window the one that stood
// by for old and was released by old's handover.
func (p *pidServer) retire(old int) {
	if !p.canary {
		p.s.WaitExit(old, exitTimeout)
		return
	}
	if p.standing != 0 {
		p.s.WaitExit(p.standing, exitTimeout)
	}
	p.standing = old
}

func (p *pidServer) start() int {
	p.pid = p.s.WaitPID(p.s.Start(p.args...), 0, startTimeout)
	return p.pid
}

func (p *pidServer) stop() {
	p.s.Signal(p.pid, syscall.SIGTERM)
	p.s.WaitExit(p.pid, exitTimeout)
	if p.standing != 0 { // released by the stop
		p.s.WaitExit(p.standing, exitTimeout)
		p.standing = 0
	}
}

func (p *pidServer) restart() { p.pid = p.how(p) }

func (p *pidServer) retried() int { return p.retries }

// stopThenStart is the naive restart: stop the old process, wait until it
// is gone, start a new one.
func stopThenStart(p *pidServer) int {
	p.s.Signal(p.pid, syscall.SIGTERM)
	p.s.WaitExit(p.pid, exitTimeout)
	return p.s.WaitPID(p.s.Start(p.args...), 0, startTimeout)
}

// startThenStop starts a new process that listens too (SO_REUSEPORT, or a
// takeover), waits until it serves, and then until the old one is gone,
// stopping it first when stopOld is set.
func startThenStop(stopOld bool) restartFunc {
	return func(p *pidServer) int {
		next := p.s.WaitPID(p.s.Start(p.args...), 0, startTimeout)
		if stopOld {
			p.s.Signal(p.pid, syscall.SIGTERM)
		}
		p.retire(p.pid)
		return next
	}
}

// startBeside restarts nothing: it starts a process of beside, an
// unrelated service, waits until it listens, and stops it, so that the
// serving process runs next to a process start as it does in a restart.
func startBeside(beside *testbed.Service) restartFunc {
	return func(p *pidServer) int {
		os.Remove(beside.PIDFile)
		pid := beside.WaitPID(beside.Start("-addr", beside.Addr, "-pidfile", beside.PIDFile), 0, startTimeout)
		beside.Signal(pid, syscall.SIGTERM)
		beside.WaitExit(pid, exitTimeout)
		return p.pid
	}
}

// upgradeOnSignal sends the old process SIGHUP, which starts its
// successor, and waits until the successor serves and the old one is
// gone. When the old process logs that the upgrade failed, it signals
// again, as an operator would: tableflip refuses to upgrade until it has
// seen its own parent exit, which it notices a moment after the parent is
// gone.
func upgradeOnSignal(p *pidServer) int {
	deadline := time.Now().Add(startTimeout)
	for {
		from := p.s.LogSize()
		p.s.Signal(p.pid, syscall.SIGHUP)
		for !bytes.Contains(p.s.LogFrom(from), []byte("upgrade failed")) {
			if next := p.s.PID(); next != 0 && next != p.pid {
				p.s.Remember(next)
				p.retire(p.pid)
				return next
			}
			if time.Now().After(deadline) {
				prog.Fatalf("no successor of %d after %v", p.pid, startTimeout)
			}
			time.Sleep(time.Millisecond)
		}
		p.retries++
	}
}

// wrapped is a server run by `handoff run`: the wrapper keeps the sockets
// and its pid, and replaces its child on SIGHUP.
type wrapped struct {
	s       *testbed.Service
	wrapper string   // cmd/handoff
	flags   []string // the wrapper's own, beside -listen, -socket, -pidfile
	command []string // the child
	pid     int      // the wrapper
	child   int      // the serving child
}

func (w *wrapped) start() int {
	args := append([]string{"run", "-listen", "web=tcp://" + w.s.Addr, "-socket", w.s.Socket, "-pidfile", w.s.PIDFile}, w.flags...)
	args = append(append(args, "--"), w.command...)
	w.pid = w.s.WaitPID(w.s.StartProgram(w.wrapper, args...), 0, startTimeout)
	w.child = w.servingChild(0)
	return w.child
}

func (w *wrapped) restart() {
	old := w.child
	w.s.Signal(w.pid, syscall.SIGHUP)
	w.child = w.servingChild(old)
	waitGone(old)
}

func (w *wrapped) retried() int { return 0 }

func (w *wrapped) stop() {
	w.s.Signal(w.pid, syscall.SIGTERM)
	w.s.WaitExit(w.pid, exitTimeout)
}

// servingChild waits until the wrapper says that one child serves, not
// old, and returns it.
func (w *wrapped) servingChild(old int) int {
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := control.Status(ctx, w.s.Socket)
		cancel()
		var d struct {
			Children []struct {
				PID  int    `json:"pid"`
				Role string `json:"role"`
			} `json:"children"`
		}
		// A reload ends a moment after the old child is gone (state
		// serving again); a SIGHUP before that is refused as in progress.
		if err == nil && st.State == "serving" && json.Unmarshal(st.Detail, &d) == nil && len(d.Children) == 1 &&
			d.Children[0].Role == "serving" && d.Children[0].PID != old {
			return d.Children[0].PID
		}
		if time.Now().After(deadline) {
			prog.Fatalf("wrapper: no new serving child after %v (%v, %+v)", startTimeout, err, d.Children)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitGone waits until pid, which its parent reaps, no longer exists.
func waitGone(pid int) {
	deadline := time.Now().Add(exitTimeout)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			prog.Fatalf("process %d still there after %v", pid, exitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}
