//go:build unix

package main

import (
	"syscall"
	"time"
)

// crashAfter is how long after it is ready the new process of a crash
// scenario dies.
const crashAfter = time.Second

// crashAfterReady is the restart of the crash scenarios: SIGHUP, and once
// the new process serves (the pid file names it) it is killed crashAfter
// later, as a build that crashes then (a panic in its first real work, an
// OOM kill) would be. The restart ends once a process serves again: with
// rollback, the old one, which stood by in its canary window; without,
// the old process has handed over and exits, nothing serves, and the
// benchmark starts the server again at once, as the quickest supervisor
// (systemd's Restart= with a good build) would, so that what the row
// shows is the least a crash costs there.
func crashAfterReady(rollback bool) restartFunc {
	return func(p *pidServer) int {
		old := p.pid
		p.s.Signal(old, syscall.SIGHUP)
		next := p.s.WaitPID(0, old, startTimeout)
		time.Sleep(crashAfter) // the crash comes this long after ready: the scenario's subject
		p.s.Signal(next, syscall.SIGKILL)
		if rollback {
			p.s.WaitPID(old, 0, startTimeout)
			return old
		}
		p.s.WaitExit(old, exitTimeout)
		p.s.WaitExit(next, exitTimeout)
		return p.s.WaitPID(p.s.Start(p.args...), next, startTimeout)
	}
}
