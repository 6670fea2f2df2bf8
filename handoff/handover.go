package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// The serving process's side of the handoff.

// serveControl accepts connections on the control socket, each a process
// that wants to take over, until the socket is closed.
func (u *Upgrader) serveControl(ln *net.UnixListener) {
	defer u.wg.Done()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				u.log.Error("control socket failed", "err", err)
			}
			return
		}
		cc := newCtlConn(c, smallMessage, 0)
		if !u.track(cc) {
			cc.Close()
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer u.untrack(cc)
			u.serveConn(u.ctx, cc)
		}()
	}
}

// serveConn serves one client of the control socket: a process that
// wants to take over, or a request (handoff reload, handoff status).
func (u *Upgrader) serveConn(ctx context.Context, cc *ctlConn) {
	m, err := cc.recvMsg(time.Now().Add(u.cfg.StepTimeout))
	if err == nil {
		switch m := m.(type) {
		case hello:
			err = u.handOff(ctx, cc, nil, &m)
		case request:
			u.finishOnClose(cc)
			err = u.serveRequest(ctx, cc, m)
		default:
			err = fmt.Errorf("%w: expected hello or request, got %s", ErrProtocol, m.msgType())
			refuse(cc, err)
		}
	} else {
		refuse(cc, fmt.Errorf("waiting for hello: %w", err))
	}
	if err != nil {
		u.log.Warn("control socket client refused or failed; still serving", "err", err)
	}
}

// refuse tells the peer why err ends the conversation.
func refuse(cc *ctlConn, err error) {
	code := refusalFor(err)
	var refused *RefusedError
	if errors.As(err, &refused) {
		code = refused.Code
	}
	cc.refuse(code, err.Error())
}

// track records a control connection so that Close can interrupt it.
func (u *Upgrader) track(cc *ctlConn) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state == stateClosed {
		return false
	}
	u.sessions[cc] = true
	return true
}

// finishOnClose exempts a request's connection from Close: the request
// ends by itself, interrupted through ctx, and the client must hear the
// outcome, which Close would otherwise cut off when a successful upgrade
// makes the program close the Upgrader at once. Every send on it has a
// deadline, so Close's wait for it is bounded.
func (u *Upgrader) finishOnClose(cc *ctlConn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.sessions[cc]; ok {
		u.sessions[cc] = false
	}
}

// untrack closes cc unless the handover made it the successor link.
func (u *Upgrader) untrack(cc *ctlConn) {
	u.mu.Lock()
	_, ok := u.sessions[cc]
	delete(u.sessions, cc)
	u.mu.Unlock()
	if ok {
		cc.Close()
	}
}

// Upgrade starts a fresh copy of the program (the executable is read from
// disk again; same arguments, environment and working directory) and
// hands the sockets over to it. It returns nil once the successor is
// ready: Exit is closed and this process should drain and exit. On any
// failure (the successor exits, hangs past ReadyTimeout, breaks the
// protocol, or ctx ends) the successor is killed and this process keeps
// serving as before.
//
// Called before Ready, Upgrade waits for it: a SIGHUP that reaches a
// successor while it completes its own takeover is not lost. (Install the
// signal handler before calling Ready, or such a SIGHUP kills the
// process.)
func (u *Upgrader) Upgrade(ctx context.Context) error {
	if err := u.waitReady(ctx); err != nil {
		return err
	}
	if err := u.reserve(); err != nil {
		return err
	}
	u.announceUpgrade(0, true)
	child, cc, err := u.startSuccessor()
	if err != nil {
		err = fmt.Errorf("handoff: start successor: %w", err)
		u.release(err)
		u.recordUpgrade(time.Now(), 0, err)
		return err
	}
	if !u.track(cc) {
		cc.Close()
		child.kill()
		return ErrClosed
	}
	defer u.untrack(cc)
	u.log.Info("started successor", "successor", child.pid())
	if err := u.handOff(ctx, cc, child, nil); err != nil {
		return err
	}
	child.release()
	return nil
}

// waitReady waits until Ready has succeeded.
func (u *Upgrader) waitReady(ctx context.Context) error {
	select {
	case <-u.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-u.ctx.Done():
		return ErrClosed
	}
}

// reserve claims the single upgrade slot.
func (u *Upgrader) reserve() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.state.upgradeErr(); err != nil {
		return err
	}
	u.state = stateUpgrading
	return nil
}

// release gives the upgrade slot back after a failed upgrade.
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

// handOff runs the serving side of the protocol on cc, from the peer's
// hello (already read, or nil to read it). For a takeover, the upgrade
// slot is reserved once the hello checks out; Upgrade reserved it already
// and passes the child it started. On success the successor serves and cc
// has become the successor link; on failure this process keeps serving.
func (u *Upgrader) handOff(ctx context.Context, cc *ctlConn, child *successorProcess, first *hello) (err error) {
	stop := cc.bind(ctx)
	defer stop()
	reserved := child != nil
	start := time.Now()
	succPID := 0
	defer func() {
		if err == nil {
			u.recordUpgrade(start, succPID, nil)
			return
		}
		err = ctxErr(ctx, err)
		refuse(cc, err)
		if child != nil {
			child.kill()
		}
		if reserved {
			u.release(err)
			err = fmt.Errorf("%w: %w", ErrSuccessorFailed, err)
			u.recordUpgrade(start, succPID, err)
		}
	}()

	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	if first == nil {
		// A successor this process started says hello once it has
		// started up: that is part of getting ready.
		h, err := expect[hello](cc, start.Add(u.cfg.ReadyTimeout))
		if err != nil {
			return fmt.Errorf("waiting for hello: %w", peerGone(err))
		}
		first = &h
	}
	h := *first
	succPID, err = u.checkPeer(cc, h, child)
	if err != nil {
		return err
	}
	if !reserved {
		if err := u.reserve(); err != nil {
			return err
		}
		reserved = true
	}
	log := u.log.With("successor", succPID)
	log.Info("handing over to successor")
	inUnit := sameCgroup(succPID) // for systemd: the same service
	if child == nil {
		u.announceUpgrade(succPID, inUnit)
	} else {
		u.announceHandingOver(succPID)
	}

	items := u.handoverItems()
	if err := cc.send(welcome{Version: protocolVersion, Caps: supportedCaps, PID: uint32(u.pid), Generation: u.generation, Sockets: uint32(len(items))}, nil, step()); err != nil {
		return err
	}
	if err := sendSockets(cc, items, u.cfg.StepTimeout); err != nil {
		return fmt.Errorf("sending sockets: %w", err)
	}
	r, err := expect[ready](cc, start.Add(u.cfg.ReadyTimeout))
	if err != nil {
		return fmt.Errorf("waiting for ready: %w", peerGone(err))
	}
	if int(r.PID) != int(h.PID) {
		return fmt.Errorf("%w: ready from pid %d, hello from pid %d", ErrProtocol, r.PID, h.PID)
	}
	if peerClosed(cc.c) {
		return fmt.Errorf("successor exited right after saying it was ready")
	}
	// From the commit on, ctx has no say: whoever canceled it (perhaps
	// reacting to Exit) must not cut the link to the successor.
	if !stop() {
		return ctx.Err()
	}
	if err := u.commit(cc, succPID, inUnit, r, h.Caps); err != nil {
		return err
	}
	log.Info("successor is ready; stopped accepting", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// peerGone says in words that the successor closed the connection (it
// exited, most likely), when err says so in a read's terms.
func peerGone(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("the successor closed the connection (exited?): %w", err)
	}
	return err
}

// checkPeer accepts a successor only if it runs as this user (or root),
// speaks this protocol version and belongs to the same service. It returns
// the successor's pid as this process sees it.
func (u *Upgrader) checkPeer(cc *ctlConn, h hello, child *successorProcess) (int, error) {
	credPID, uid, err := peerCred(cc.c)
	if err != nil {
		return 0, err
	}
	if uid != os.Geteuid() && uid != 0 {
		return 0, &RefusedError{Code: RefusedPermission, Reason: fmt.Sprintf("peer runs as uid %d, this service as uid %d", uid, os.Geteuid())}
	}
	if h.MinVersion > protocolVersion || h.MaxVersion < protocolVersion {
		return 0, &RefusedError{Code: RefusedVersion, Reason: fmt.Sprintf("peer speaks protocol versions %d to %d, this process %d", h.MinVersion, h.MaxVersion, protocolVersion)}
	}
	if h.Name != u.cfg.Name {
		return 0, &RefusedError{Code: RefusedName, Reason: fmt.Sprintf("peer is service %q, this is %q", h.Name, u.cfg.Name)}
	}
	if child != nil {
		return child.pid(), nil // a socketpair's credentials are our own
	}
	return credPID, nil
}

// handoverItem is one socket to pass, with the description that goes with it.
type handoverItem struct {
	entry
	conn syscall.Conn
}

// handoverItems lists what a successor receives: every socket in use and
// the control socket itself.
func (u *Upgrader) handoverItems() []handoverItem {
	var items []handoverItem
	for _, s := range u.reg.inventory() {
		items = append(items, handoverItem{entry: s.entry, conn: s.conn()})
	}
	u.mu.Lock()
	ctrl := u.ctrl
	u.mu.Unlock()
	if ctrl != nil {
		items = append(items, handoverItem{entry: entry{Kind: kindControl, Network: "unixpacket", Address: u.cfg.Socket}, conn: ctrl})
	}
	return items
}

// sendSockets passes items in batches that respect the kernel's limit on
// descriptors per message, and waits for each batch's acknowledgement.
func sendSockets(cc *ctlConn, items []handoverItem, step time.Duration) error {
	for seq := uint32(0); len(items) > 0; seq++ {
		n, size := 0, 0
		for n < len(items) && n < maxFDsPerMessage && (n == 0 || size+items[n].encodedLen() <= maxBatchPayload) {
			size += items[n].encodedLen()
			n++
		}
		batch := fdBatch{Seq: seq}
		fds := make([]int, 0, n)
		for _, it := range items[:n] {
			fd, err := dupFD(it.conn)
			if err != nil {
				closeFDs(fds)
				return fmt.Errorf("duplicate %s: %w", it.key(), err)
			}
			fds = append(fds, fd)
			batch.Entries = append(batch.Entries, it.entry)
		}
		err := cc.send(batch, fds, time.Now().Add(step))
		closeFDs(fds)
		if err != nil {
			return err
		}
		a, err := expect[ack](cc, time.Now().Add(step))
		if err != nil {
			return err
		}
		if a.Seq != seq {
			return fmt.Errorf("%w: ack for batch %d, expected %d", ErrProtocol, a.Seq, seq)
		}
		items = items[n:]
	}
	return nil
}

// commit makes the successor the server: this process closes its copies
// of the sockets (the kernel sockets live on in the successor, so nothing
// queued is lost), tells the successor, and closes Exit.
func (u *Upgrader) commit(cc *ctlConn, succPID int, inUnit bool, r ready, caps uint64) error {
	link := newSuccessorLink(cc, succPID, r.Keys, caps, u.cfg.StepTimeout) // held until done is sent
	u.mu.Lock()
	if u.state != stateUpgrading {
		u.mu.Unlock()
		return ErrClosed
	}
	u.state = stateHandedOver
	ctrl := u.ctrl
	u.ctrl = nil
	delete(u.sessions, cc) // the link outlives the session
	u.succ = link
	u.mu.Unlock()

	close(u.exit) // before the sockets close, so Serve can tell why they did
	queued := u.reg.closeSockets(false)
	if ctrl != nil {
		ctrl.Close()
	}
	u.announceHandover(succPID, inUnit) // MAINPID= first: the successor notifies systemd once it hears done
	err := cc.send(done{}, nil, time.Now().Add(u.cfg.StepTimeout))
	if err != nil {
		u.log.Warn("could not confirm the handover to the successor", "err", err)
	}
	// Idle connections wait for the link (HTTPServer.Shutdown): open it
	// before anything slower, such as the pid file.
	link.open(err)
	u.passPIDFile(succPID)
	// Connections our predecessor handed over that no Accept took yet go
	// down the line, to our successor.
	for _, q := range queued {
		u.forwardConn(q.key, q.conn, nil)
	}
	return nil
}
