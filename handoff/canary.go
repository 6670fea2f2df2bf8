package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// The canary window: after the commit the old process stops accepting
// but keeps its sockets, its control socket and the link to the
// successor, so that it can take the service back should the successor
// die before it has proven itself. lifecycle.go holds the transitions
// (commit, prove, rollback); this file watches the window.
//
// The link tells the two endings apart: a successor that stops (Stop) or
// hands over to one of its own sends release first; one that crashes,
// panics or is killed just closes it, as its exit does.

// canary is one window: what the old process keeps until it ends.
type canary struct {
	link    *successorLink
	child   *successorProcess // nil for a takeover by a process this one did not start
	pid     int
	inUnit  bool
	ctrl    *net.UnixListener // this process's copy of the control socket, not served meanwhile
	readyAt time.Time         // when done was sent
	window  time.Duration
	end     chan struct{} // closed by prove, rollback or close
	// waiters counts the reload requests (`handoff reload -wait-canary`)
	// that answer once the window ends: prove lets the program exit only
	// after they have answered.
	waiters sync.WaitGroup
}

// rollbackWait bounds the wait for a successor that closed its link to
// be reaped, so that the rollback can say how it ended: a process that
// exits closes its descriptors last, an instant before it is a zombie.
const rollbackWait = 100 * time.Millisecond

// canaryWindow is the window for a successor with capabilities caps: none
// when it is off, when the successor cannot release this process, or
// when a datagram socket is in use (its reader cannot be paused).
func (u *Upgrader) canaryWindow(caps uint64) time.Duration {
	if u.cfg.CanaryWindow <= 0 || caps&wire.CapCanary == 0 || u.reg.hasPacket() {
		return 0
	}
	return u.cfg.CanaryWindow
}

// watchCanary waits for the window's end: it passes, the successor
// releases this process, or the link breaks, which rolls back.
func (u *Upgrader) watchCanary(c *canary, window time.Duration) {
	defer u.wg.Done()
	var peer *ctl.Pidfd // a successor this process did not start: to tell how it ended
	if c.child == nil {
		var err error
		switch peer, err = ctl.OpenPidfd(c.pid); {
		case err == nil:
			defer peer.Close()
		case errors.Is(err, os.ErrProcessDone):
			peer = exitedPeer
		default:
			u.log.Debug("cannot watch the successor's process", "successor", c.pid, "err", err)
		}
	}
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case <-timer.C:
		u.prove(c, fmt.Sprintf("it served for the canary window (%s)", window))
	case <-c.link.released:
		u.prove(c, c.link.releaseReason())
	case <-c.link.lost:
		select {
		case <-c.link.released: // release, then exit: it stopped
			u.prove(c, c.link.releaseReason())
			return
		default:
		}
		u.rollback(c, u.successorEnd(c, peer))
	case <-c.end: // Stop or Close
	case <-u.ctx.Done():
	}
}

// exitedPeer stands for a successor that had exited before its pidfd could
// be opened.
var exitedPeer = new(ctl.Pidfd)

// successorEnd says how the successor of c ended, for the log and
// Status. A successor this process started is reaped; one that broke the
// link but still runs is stopped, as after a failed upgrade. One it did
// not start (a takeover) is watched through peer, its pidfd (exitedPeer:
// it was gone when the window began; nil: it cannot be watched): it cannot be
// waited for, so its exit status is not known, but whether it exited is,
// and one that still runs is sent SIGTERM.
func (u *Upgrader) successorEnd(c *canary, peer *ctl.Pidfd) string {
	after := time.Since(c.readyAt).Round(time.Millisecond)
	if c.child == nil {
		switch {
		case peer == nil:
			return fmt.Sprintf("successor pid %d closed the link %s after it was ready (%v); rolled back", c.pid, after, c.link.err())
		case peer == exitedPeer || peer.Exited(rollbackWait):
			return fmt.Sprintf("successor pid %d exited %s after it was ready; rolled back", c.pid, after)
		}
		terminatePeer(peer)
		return fmt.Sprintf("successor pid %d broke the link %s after it was ready (%v) and was sent SIGTERM; rolled back", c.pid, after, c.link.err())
	}
	select {
	case <-c.child.exited():
		return fmt.Sprintf("successor pid %d ended (%s) %s after it was ready; rolled back", c.pid, c.child.status(), after)
	case <-time.After(rollbackWait):
		u.stopSuccessor(c.child)
		return fmt.Sprintf("successor pid %d broke the link %s after it was ready (%v) and is being stopped; rolled back", c.pid, after, c.link.err())
	}
}

// waitProven waits until the canary window of the successor pid ends,
// and returns nil if it proved itself, or why it was rolled back. The
// caller calls answered once it has told its client.
func (u *Upgrader) waitProven(ctx context.Context, pid int, progress func(string)) (answered func(), err error) {
	answered = func() {}
	u.mu.Lock()
	c := u.canary
	if u.state != stateCanary || c == nil || c.pid != pid {
		c = nil // over already, or none: lastReload says how it ended
	} else {
		c.waiters.Add(1)
		answered = c.waiters.Done
	}
	u.mu.Unlock()
	if c != nil {
		progress(fmt.Sprintf("waiting out its canary window (%s)", c.window))
		select {
		case <-c.end:
		case <-ctx.Done():
			return answered, ctx.Err()
		}
	}
	u.mu.Lock()
	last := u.lastReload
	u.mu.Unlock()
	if last != nil && last.RolledBack && last.Successor == pid {
		return answered, errors.New(last.Error)
	}
	progress(fmt.Sprintf("successor pid %d has proven itself", pid))
	return answered, nil
}

// answerWait bounds how long the end of a canary window waits for the
// reload requests waiting for it to answer before the program may exit.
const answerWait = time.Second

// waitAnswered waits, up to answerWait, until the requests waiting for
// c's end have answered.
func waitAnswered(c *canary) {
	done := make(chan struct{})
	go func() { // ends once they have: each answer's send is bounded
		c.waiters.Wait()
		close(done)
	}()
	timer := time.NewTimer(answerWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}

// waitCanary waits, in serveControl, until the canary window that took
// its socket away ends: serving resumes after a rollback, and finds the
// socket closed otherwise.
func (u *Upgrader) waitCanary() {
	u.mu.Lock()
	c := u.canary
	u.mu.Unlock()
	if c != nil {
		<-c.end
	}
}

// recordRollbackLocked marks the upgrade that c's successor completed as
// rolled back, for Status. u.mu is held.
func (u *Upgrader) recordRollbackLocked(c *canary, reason string) {
	r := &ReloadResult{At: c.readyAt, Successor: c.pid, Error: reason, RolledBack: true}
	if last := u.lastReload; last != nil && last.Successor == c.pid {
		r.At, r.Duration, r.SuccessorBuild = last.At, last.Duration, last.SuccessorBuild
	}
	u.lastReload = r
}

// predecessorProves reports whether the predecessor will say when the
// handover is final (proven).
func (u *Upgrader) predecessorProves() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.predCaps&wire.CapCanary != 0
}

// releasePredecessor tells a predecessor that stands by for this process
// that it need not any more: this process stops, or has handed over.
func (u *Upgrader) releasePredecessor(why string) {
	u.mu.Lock()
	pred, caps := u.pred, u.predCaps
	u.mu.Unlock()
	if pred == nil || caps&wire.CapCanary == 0 {
		return
	}
	if err := pred.Send(wire.Release{Reason: why}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
		u.log.Debug("could not release the predecessor", "predecessor", u.predPID, "err", err)
	}
}
