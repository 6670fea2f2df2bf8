package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// This file is the only writer of an Upgrader's lifecycle: its state, its
// generation, the control socket it serves (ctrl), the links to its
// predecessor (pred) and successor (succ), and the control connections in
// flight (sessions). Each change is a named transition, taken under u.mu;
// what systemd hears hangs off the transitions, not off protocol steps.
//
//	starting ──markReady──▶ serving ──reserve──▶ upgrading ──commit──▶ canary ──prove──▶ handed-over
//	                         ▲  ▲                    │                 │
//	                         │  └──────release───────┘                 │
//	                         └─────────────────rollback────────────────┘
//	any state ──stop / close──▶ closed   (stop and close leave handed-over as it is)
//
// Without a canary window commit goes straight to handed-over.

// lifecycle is where an Upgrader stands.
type lifecycle int

const (
	stateStarting   lifecycle = iota // New returned; Ready not called yet
	stateServing                     // ready; an upgrade may start
	stateUpgrading                   // one successor is being handed the sockets
	stateHandedOver                  // a successor serves; this process drains
	stateClosed
	stateCanary // a successor serves; this process stands by to roll back
)

func (s lifecycle) String() string {
	return [...]string{"starting", "serving", "upgrading", "handed-over", "closed", "canary"}[s]
}

// upgradeErr is why an upgrade cannot start in state s.
func (s lifecycle) upgradeErr() error {
	switch s {
	case stateStarting:
		return ErrNotReady
	case stateUpgrading:
		return ErrInProgress
	case stateHandedOver, stateCanary:
		return ErrHandedOver
	case stateClosed:
		return ErrClosed
	}
	return nil
}

// startFresh makes this the first generation, serving ctrl, the control
// socket it has just bound (nil without the handoff: none). Takeovers
// are refused until Ready.
func (u *Upgrader) startFresh(ctrl *net.UnixListener) {
	u.mu.Lock()
	u.ctrl, u.generation = ctrl, 1
	u.log = u.log.With("generation", u.generation)
	u.mu.Unlock()
	u.conns.finish() // nobody will hand connections over
	if ctrl != nil {
		u.wg.Add(1)
		go u.serveControl(ctrl)
	}
}

// succeed records the predecessor this process takes over from, once it
// has received the sockets: the link to it stays open until it exits.
func (u *Upgrader) succeed(pred *ctl.Conn, predGeneration uint32, predPID int, predCaps uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pred, u.predPID, u.predCaps, u.generation = pred, predPID, predCaps, predGeneration+1
	u.log = u.log.With("generation", u.generation)
}

// beginReady claims the one call of Ready.
func (u *Upgrader) beginReady() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.state == stateClosed:
		return ErrClosed
	case u.readyCalled:
		return errors.New("handoff: Ready called twice")
	}
	u.readyCalled = true
	return nil
}

// markReady makes a starting process the server: it serves the control
// socket (ctrl, which the predecessor passed; nil after a fresh start,
// whose control socket is served already) and, after a takeover, the
// link to the predecessor; then the pid file and systemd hear of it.
func (u *Upgrader) markReady(ctrl *net.UnixListener, dropped []inheritedFD) error {
	u.mu.Lock()
	if u.state != stateStarting {
		u.mu.Unlock()
		if ctrl != nil {
			ctrl.Close()
		}
		return ErrClosed
	}
	u.state = stateServing
	close(u.ready)
	for _, d := range dropped {
		u.dropped = append(u.dropped, SocketStatus{Name: d.Name, Network: d.Network, Address: d.Address})
	}
	pred := u.pred
	if pred != nil {
		u.ctrl = ctrl
		u.wg.Add(2)
		go u.serveControl(ctrl)
		go u.receiveConns(pred)
	}
	u.mu.Unlock()

	u.writePIDFile(u.pid)
	u.announceReady(pred == nil, dropped)
	return nil
}

// dropPredecessor forgets the link to a predecessor that has exited (or
// broke the protocol), and closes it: nothing more can come from it.
func (u *Upgrader) dropPredecessor(pred *ctl.Conn) {
	u.mu.Lock()
	if u.pred == pred {
		u.pred = nil
	}
	u.mu.Unlock()
	pred.Close()
}

// reserve claims the single upgrade slot: serving → upgrading.
func (u *Upgrader) reserve() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.state.upgradeErr(); err != nil {
		return err
	}
	u.state = stateUpgrading
	return nil
}

// release gives the upgrade slot back after an upgrade that failed, or
// after a reload this process ran itself (the wrapper's): upgrading →
// serving. systemd hears READY=1, which ends what RELOADING=1 began.
func (u *Upgrader) release(cause error) {
	u.mu.Lock()
	released := u.state == stateUpgrading
	if released {
		u.state = stateServing
	}
	u.mu.Unlock()
	if released {
		u.announceReloaded(cause)
	}
}

// commit makes the successor the server: upgrading → canary, or
// handed-over when there is no canary window. The control connection cc
// becomes the link to the successor, which commit returns: from here on
// the Upgrader owns it, and child, the successor process if this process
// started it. Done confirms the handover to the successor.
//
// With a window this process stops accepting (its listeners pause, and
// its control socket is the successor's to serve) but keeps every socket
// and the process, and watches the link: see canary.go. Without one it
// hands over for good at once.
func (u *Upgrader) commit(cc *ctl.Conn, child *successorProcess, succPID int, inUnit bool, r wire.Ready, caps uint64) (*successorLink, error) {
	u.mu.Lock()
	if u.state != stateUpgrading {
		u.mu.Unlock()
		return nil, ErrClosed
	}
	link := newSuccessorLink(cc, succPID, r.Keys, caps, u.cfg.StepTimeout) // held until done is sent
	window := u.canaryWindow(caps)
	delete(u.sessions, cc) // Close ends the link, not the session
	u.succ = link
	ctrl := u.ctrl
	u.ctrl = nil
	var c *canary
	if window > 0 {
		c = &canary{link: link, child: child, pid: succPID, inUnit: inUnit, ctrl: ctrl, window: window, end: make(chan struct{})}
		u.state, u.canary = stateCanary, c
	} else {
		u.state = stateHandedOver
	}
	u.mu.Unlock()

	if c != nil {
		u.reg.pause(true)
		if ctrl != nil {
			ctrl.SetDeadline(longAgo) // serveControl waits for the window's end
		}
		u.announceCanary(succPID, window)
	} else {
		// Close waits until the connections handOver collects have gone
		// on (forwardQueued): a program that drains at once after Exit
		// must not cut them.
		u.forwards.RLock()
		defer u.forwards.RUnlock()
		u.handOver(ctrl, succPID, inUnit)
	}
	err := cc.Send(wire.Done{}, nil, time.Now().Add(u.cfg.StepTimeout))
	if err != nil {
		u.log.Warn("could not confirm the handover to the successor", "err", err)
	}
	// Idle connections wait for the link (HTTPServer.Shutdown): open it
	// before anything slower, such as the pid file.
	link.open(err)
	u.passPIDFile(succPID)
	u.releasePredecessor(fmt.Sprintf("pid %d handed over to pid %d", u.pid, succPID))
	if c == nil {
		if child != nil {
			child.release()
		}
		link.proven()
		u.forwardQueued(link)
		return link, nil
	}
	c.readyAt = time.Now()
	u.wg.Add(1)
	go u.watchCanary(c, window)
	return link, nil
}

// handOver is the end of this process's service: Exit is closed, the
// sockets close (the kernel sockets live on in the successor, so nothing
// queued is lost), and systemd hears of the successor.
func (u *Upgrader) handOver(ctrl *net.UnixListener, succPID int, inUnit bool) {
	// Accept takes nothing more from the kernel's queues (already so after
	// a canary window) before Exit tells the program to drain: a
	// connection accepted after that would meet a server that is shutting
	// down, and some (grpc's GracefulStop) close such a connection at once.
	u.reg.pause(true)
	// The listeners take no more handed-over connections, and give up
	// those they hold, before Exit: a program that closes its listener on
	// Exit would close them, and their clients may be sending.
	queued := u.reg.sealListeners()
	close(u.exit) // before the sockets close, so Serve can tell why they did
	if u.testHookExit != nil {
		u.testHookExit()
	}
	queued = append(queued, u.reg.closeSockets(false)...)
	queued = append(queued, u.conns.handOver()...)
	u.mu.Lock()
	u.queued = queued
	u.mu.Unlock()
	if ctrl != nil {
		ctrl.Close()
	}
	u.announceHandover(succPID, inUnit) // MAINPID= first: the successor notifies systemd once it hears done
}

// forwardQueued sends down the line, to the successor, the connections
// our predecessor handed over that no Accept took (handOver collected
// them; the link must be open first). The caller holds u.forwards.
func (u *Upgrader) forwardQueued(link *successorLink) {
	u.mu.Lock()
	queued := u.queued
	u.queued = nil
	u.mu.Unlock()
	if len(queued) > 0 {
		u.forwardConns(link, queued)
	}
}

// prove ends a canary window for good: canary → handed-over. The
// successor has lasted the window, or released this process.
func (u *Upgrader) prove(c *canary, why string) {
	u.mu.Lock()
	if u.state != stateCanary || u.canary != c {
		u.mu.Unlock()
		return
	}
	u.state, u.canary = stateHandedOver, nil
	u.mu.Unlock()
	close(c.end)
	waitAnswered(c) // `handoff reload -wait-canary` hears it before Exit
	u.log.Info("successor proved itself; draining", "successor", c.pid, "why", why)
	// Close waits until every connection this process still holds for
	// the successor has gone on: after Exit, a program that drains at
	// once calls Close before forwardQueued would be done.
	u.forwards.RLock()
	defer u.forwards.RUnlock()
	u.handOver(c.ctrl, c.pid, c.inUnit)
	c.link.proven() // after MAINPID=: the successor may speak as the main process
	if c.child != nil {
		c.child.release()
	}
	u.forwardQueued(c.link)
}

// rollback makes this process the server again after its successor died
// within the canary window: canary → serving. It accepts again on the
// same kernel sockets, serves the control socket, and the pid file,
// systemd and Status say so.
func (u *Upgrader) rollback(c *canary, reason string) {
	u.mu.Lock()
	if u.state != stateCanary || u.canary != c {
		u.mu.Unlock()
		return
	}
	u.state, u.canary, u.succ = stateServing, nil, nil
	u.ctrl = c.ctrl
	u.recordRollbackLocked(c, reason) // with the state: Status sees both or neither
	if c.ctrl != nil {
		c.ctrl.SetDeadline(time.Time{})
	}
	u.mu.Unlock()
	close(c.end) // serveControl goes on
	u.reg.pause(false)
	c.link.close()
	u.writePIDFile(u.pid)
	u.announceRollback(reason)
	u.log.Error("successor died within the canary window; rolled back, serving again", "successor", c.pid, "reason", reason)
}

// stop is Stop's transition: any state but handed-over → closed, with
// the listening sockets and the control socket closed and their files
// removed. It reports whether the process had been serving.
func (u *Upgrader) stop() (wasServing, stopped bool) {
	u.mu.Lock()
	if c := u.canary; u.state == stateCanary {
		u.mu.Unlock()
		u.prove(c, "this process was told to stop")
		return false, false
	}
	if u.state == stateHandedOver || u.state == stateClosed {
		u.mu.Unlock()
		return false, false
	}
	wasServing = u.state != stateStarting
	u.state = stateClosed // refuses upgrades from here on
	ctrl := u.ctrl
	u.ctrl = nil
	u.mu.Unlock()
	if ctrl != nil {
		u.removeControlSocket(ctrl)
	}
	u.releasePredecessor(fmt.Sprintf("pid %d is stopping", u.pid))
	// The program closes its connections its way: AcceptConn returns the
	// idle ones still parked.
	u.conns.unparkAll()
	return wasServing, true
}

// close is Close's transition: → closed. It interrupts every session,
// ends both links and waits for the goroutines. The sockets' files are
// removed only by a process that served them and has not handed them
// over.
func (u *Upgrader) close() {
	u.mu.Lock()
	prev := u.state
	u.state = stateClosed
	ctrl, pred, succ, c := u.ctrl, u.pred, u.succ, u.canary
	u.ctrl, u.pred, u.succ, u.canary = nil, nil, nil, nil
	sessions := make([]*ctl.Conn, 0, len(u.sessions))
	for cc := range u.sessions {
		sessions = append(sessions, cc)
	}
	u.mu.Unlock()

	u.cancel()
	handedOver := prev == stateHandedOver || prev == stateCanary
	if c != nil { // the successor serves on; this process stops standing by
		close(c.end)
		ctrl = c.ctrl
		if c.child != nil {
			c.child.release()
		}
		u.announceHandover(c.pid, c.inUnit)
		c.link.proven()
	}
	if ctrl != nil {
		if handedOver {
			ctrl.Close()
		} else {
			u.removeControlSocket(ctrl)
		}
	}
	for _, cc := range sessions { // a successor or client learns why
		refuse(cc, u.closingDenial())
		cc.Close()
	}
	if pred != nil {
		pred.Close()
	}
	// Wait for the forwards under way, each bounded by a step; one that
	// starts later finds the link closed. What this process still holds
	// for the successor (closed during a canary window, say) goes on
	// first: nobody here will serve it.
	u.forwards.Lock()
	if succ != nil {
		if handedOver {
			// During a canary window, AcceptConn's idle connections
			// are still parked here: they go on too.
			queued := append(u.reg.closeSockets(false), u.conns.handOver()...)
			u.mu.Lock()
			queued = append(queued, u.queued...)
			u.queued = nil
			u.mu.Unlock()
			if len(queued) > 0 {
				u.forwardConns(succ, queued)
			}
		}
		succ.close()
	}
	u.forwards.Unlock()
	u.wg.Wait()
	u.reg.close(!handedOver)
	u.conns.close()
	if !handedOver && prev != stateStarting && u.cfg.PIDFile != "" {
		removePIDFile(u.cfg.PIDFile, u.pid)
	}
}

// removeControlSocket closes this process's control socket and removes
// its file and the lock beside it, if the file is still this socket's: a
// successor's, or another process's, stays.
func (u *Upgrader) removeControlSocket(ctrl *net.UnixListener) {
	var rerr error
	rc, err := ctrl.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { rerr = ctl.RemoveSocketFile(int(fd), u.cfg.Socket) })
	}
	ctrl.Close()
	if err == nil {
		err = rerr
	}
	if err != nil {
		u.log.Warn("left the control socket's file in place", "socket", u.cfg.Socket, "err", err)
		return
	}
	u.removeLock()
}

// removeLock removes the lock file beside the control socket, waiting for
// it no longer than a step.
func (u *Upgrader) removeLock() {
	ctx, cancel := context.WithTimeout(context.Background(), u.cfg.StepTimeout)
	defer cancel()
	if err := ctl.RemoveLock(ctx, u.lockPath()); err != nil && !os.IsNotExist(err) {
		u.log.Warn("could not remove the lock file", "path", u.lockPath(), "err", err)
	}
}

// lockPath is the lock file beside the control socket.
func (u *Upgrader) lockPath() string { return u.cfg.Socket + ".lock" }

// track records a control connection so that Close can interrupt it. It
// reports false once the Upgrader is closed.
func (u *Upgrader) track(cc *ctl.Conn) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state == stateClosed {
		return false
	}
	u.sessions[cc] = struct{}{}
	return true
}

// untrack stops Close from interrupting cc: its session has ended, or it
// is a request's, which ends by itself (interrupted through the context)
// and must get to tell its client the outcome even when a successful
// upgrade makes the program close the Upgrader at once. Every send on it
// has a deadline, so Close's wait for it is bounded.
func (u *Upgrader) untrack(cc *ctl.Conn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.sessions, cc)
}

// snapshot returns what Status reports of the lifecycle.
func (u *Upgrader) snapshot() (state lifecycle, generation uint32) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state, u.generation
}

// stopped reports whether this process has stopped serving its sockets:
// handed over, stopped or closed.
func (u *Upgrader) stopped() bool {
	state, _ := u.snapshot()
	return state == stateHandedOver || state == stateClosed
}

// successor returns the link to the successor, once there is one.
func (u *Upgrader) successor() *successorLink {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.succ
}

// predecessorSending reports whether a predecessor may still hand
// connections over: it has heard ready and has not exited yet.
func (u *Upgrader) predecessorSending() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pred != nil && u.state != stateStarting && u.state != stateClosed
}

// notReadyErr says why a request that needs a ready process is refused.
func (u *Upgrader) notReadyErr() error {
	return errorf("%w: pid %d started %s ago and has not called Ready yet", ErrNotReady, u.pid, time.Since(u.started).Round(time.Millisecond))
}
