package handoff

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/sdnotify"
	"github.com/handoffd/handoff/internal/wire"
)

// The serving process's side of the handoff: the control socket, Upgrade,
// and the steps that hand the sockets to a successor.
//
//	successor → hello; serving → welcome, fds…  (successor → ack each)
//	successor → ready; serving: commit (lifecycle.go) → done
//
// On any failure before the commit the successor is refused, and this
// process serves on as before.

// serveControl accepts connections on the control socket, each a process
// that wants to take over or a request, until the socket is closed.
func (u *Upgrader) serveControl(ln *net.UnixListener) {
	defer u.wg.Done()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				u.waitCanary() // the successor serves the socket meanwhile
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				u.log.Error("control socket failed", "err", err)
			}
			return
		}
		cc := ctl.NewConn(c, ctl.SmallMessage, 0)
		if !u.track(cc) {
			cc.Close()
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			if link := u.serveConn(u.ctx, cc); link == nil {
				u.untrack(cc)
				cc.Close()
			}
		}()
	}
}

// serveConn serves one client of the control socket: a process that
// wants to take over, or a request (handoff reload, handoff status). It
// returns the successor link cc has become, if the client took over.
func (u *Upgrader) serveConn(ctx context.Context, cc *ctl.Conn) *successorLink {
	if err := u.checkClient(cc); err != nil {
		refuse(cc, err)
		cc.Drain(100 * time.Millisecond)
		u.log.Warn("refused a client of the control socket", "err", err)
		return nil
	}
	m, err := recvMsg(cc, time.Now().Add(u.cfg.StepTimeout))
	if err != nil {
		if u.closing() {
			refuse(cc, u.closingDenial())
			u.log.Debug("dropped a client of the control socket: closing", "err", err)
			return nil
		}
		refuse(cc, errorf("waiting for hello: %w", err))
		u.log.Warn("control socket client sent nothing usable; still serving", "err", err)
		return nil
	}
	switch m := m.(type) {
	case wire.Hello:
		link, err := u.handOff(ctx, cc, nil, &m)
		switch {
		case err == nil:
		case u.closing():
			u.log.Info("takeover abandoned: this process is closing", "err", err)
		default:
			u.log.Warn("takeover failed; still serving", "err", err)
		}
		return link
	case wire.Request:
		u.untrack(cc) // see untrack: a request ends by itself
		err := u.serveRequest(ctx, cc, m)
		switch {
		case err == nil || errors.Is(err, ErrClosed):
		case u.closing():
			u.log.Debug("request abandoned: closing", "request", m.Name, "err", err)
		default:
			u.log.Warn("request failed; still serving", "request", m.Name, "err", err)
		}
	default:
		err := errorf("%w: expected hello or request, got %s", ErrProtocol, m.Type())
		refuse(cc, err)
		u.log.Warn("control socket client broke the protocol; still serving", "err", err)
	}
	return nil
}

// closing reports whether Close has begun: what fails from then on fails
// because of it, and nobody is still served.
func (u *Upgrader) closing() bool { return u.ctx.Err() != nil }

// closingDenial is what a peer is told once Close has begun. Both Close
// and the session it interrupts send it, since either may close the
// connection first; the peer reads the first.
func (u *Upgrader) closingDenial() error {
	return deny(RefusedClosing, "pid %d is shutting down", u.pid)
}

// checkClient accepts a client of the control socket only if it runs as
// this user (or root).
func (u *Upgrader) checkClient(cc *ctl.Conn) error {
	if err := cc.CheckPeer(); err != nil {
		var peer *ctl.PeerError
		if errors.As(err, &peer) {
			return deny(RefusedPermission, "client pid %d runs as uid %d, this service (pid %d) as uid %d", peer.Cred.PID, peer.Cred.UID, u.pid, os.Geteuid())
		}
		return err
	}
	return nil
}

// Upgrade starts a fresh copy of the program (the executable is read from
// disk again; same arguments, environment and working directory) and
// hands the sockets over to it. It returns nil once the successor is
// ready and this process has stopped accepting; Exit is closed then, or,
// with a canary window (Config.CanaryWindow), once the successor has
// lasted it, and this process should then drain and exit. Should the
// successor die within the window, this process serves again instead and
// Status.LastReload says so. On any
// failure (the successor exits, hangs past ReadyTimeout, breaks the
// protocol, or ctx ends) the successor is refused and stopped: it gets
// SIGTERM, DrainTimeout to drain what it may have accepted, then SIGKILL;
// this process keeps serving as before.
//
// Where the platform cannot pass sockets (see New), Upgrade fails at once
// with an error matching ErrNotSupported, and the process serves on.
//
// Called before Ready, Upgrade waits for it: a SIGHUP that reaches a
// successor while it completes its own takeover is not lost. (Install the
// signal handler before calling Ready, or such a SIGHUP kills the
// process.)
func (u *Upgrader) Upgrade(ctx context.Context) error {
	if u.noHandoff != nil {
		return u.noHandoff
	}
	if err := u.waitReady(ctx); err != nil {
		return err
	}
	if err := u.reserve(); err != nil {
		return err
	}
	u.announceUpgrade(0, true)
	start := time.Now()
	child, cc, err := u.startSuccessor()
	if err != nil {
		err = errorf("handoff: start successor: %w", err)
		u.release(err)
		u.recordUpgrade(start, 0, nil, err)
		return err
	}
	if !u.track(cc) {
		cc.Close()
		child.kill() // Close is under way: no time to drain
		return ErrClosed
	}
	u.log.Info("started successor", "successor", child.pid())
	link, err := u.handOff(ctx, cc, child, nil)
	if link == nil {
		u.untrack(cc)
		cc.Close()
		return err
	}
	return nil // the child is the Upgrader's now: see commit
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

// handOff runs the serving side of the protocol on cc, from the peer's
// hello (already read, or nil to read it). For a takeover, the upgrade
// slot is reserved once the hello checks out; Upgrade reserved it already
// and passes the child it started. On success the successor serves, and
// cc has become the successor link that handOff returns; on failure this
// process keeps serving, and cc is still the caller's.
func (u *Upgrader) handOff(ctx context.Context, cc *ctl.Conn, child *successorProcess, first *wire.Hello) (link *successorLink, err error) {
	stop := cc.Bind(ctx)
	defer stop()
	reserved := child != nil
	start := time.Now()
	succPID := 0
	if child != nil {
		succPID = child.pid()
	}
	var succBuild *Build // as the successor said in hello
	defer func() {
		if err == nil {
			u.recordUpgrade(start, succPID, succBuild, nil)
			return
		}
		err = ctxErr(ctx, err)
		if u.closing() {
			refuse(cc, u.closingDenial())
		} else {
			refuse(cc, err)
		}
		if child != nil {
			u.stopSuccessor(child)
		}
		if reserved {
			u.release(err)
			err = errorf("%w: %w", ErrSuccessorFailed, err)
			u.recordUpgrade(start, succPID, succBuild, err)
		}
	}()

	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	if first == nil {
		// A successor this process started says hello once it has
		// started up: that is part of getting ready.
		h, err := expect[wire.Hello](cc, start.Add(u.cfg.ReadyTimeout))
		if err != nil {
			if ctl.IsTimeout(err) {
				return nil, errorf("successor pid %d did not call handoff.New within ReadyTimeout (%s)", succPID, u.cfg.ReadyTimeout)
			}
			return nil, errorf("waiting for hello from successor pid %d: %w", succPID, peerGone("it", err))
		}
		first = &h
	}
	h := *first
	if succPID, err = u.checkSuccessor(cc, h, child); err != nil {
		return nil, err
	}
	succBuild = &Build{Version: h.Build.Version, Revision: h.Build.Revision}
	version, _ := speaks.choose(h.MinVersion, h.MaxVersion) // checkSuccessor checked it
	caps := h.Caps & speaks.caps                            // in effect only when both have them
	if !reserved {
		if err := u.reserve(); err != nil {
			if errors.Is(err, ErrNotReady) {
				err = u.notReadyErr()
			}
			return nil, err
		}
		reserved = true
	}
	log := u.log.With("successor", succPID)
	log.Info("handing over to successor")
	inUnit := sdnotify.SameCgroup(succPID) // for systemd: the same service
	if child == nil {
		u.announceUpgrade(succPID, inUnit)
	} else {
		u.announceHandingOver(succPID)
	}

	items := u.handoverItems()
	_, gen := u.snapshot()
	welcome := wire.Welcome{Version: version, Caps: speaks.caps, PID: uint32(u.pid), Generation: gen, Sockets: uint32(len(items)), Build: speaks.build.wire()}
	if err := cc.Send(welcome, nil, step()); err != nil {
		return nil, err
	}
	if err := sendSockets(cc, items, u.cfg.StepTimeout); err != nil {
		return nil, errorf("sending sockets: %w", err)
	}
	r, err := expect[wire.Ready](cc, start.Add(u.cfg.ReadyTimeout))
	if err != nil {
		if ctl.IsTimeout(err) {
			return nil, errorf("successor pid %d did not call Ready within ReadyTimeout (%s)", succPID, u.cfg.ReadyTimeout)
		}
		return nil, errorf("waiting for ready from successor pid %d: %w", succPID, peerGone("it", err))
	}
	if int(r.PID) != int(h.PID) {
		return nil, errorf("%w: ready from pid %d, hello from pid %d", ErrProtocol, r.PID, h.PID)
	}
	if cc.PeerClosed() {
		return nil, errorf("successor pid %d exited right after saying it was ready", succPID)
	}
	// From the commit on, ctx has no say: whoever canceled it (perhaps
	// reacting to Exit) must not cut the link to the successor.
	if !stop() {
		return nil, ctx.Err()
	}
	if link, err = u.commit(cc, child, succPID, inUnit, r, caps); err != nil {
		return nil, err
	}
	log.Info("successor is ready; stopped accepting", "took", time.Since(start).Round(time.Millisecond))
	return link, nil
}

// checkSuccessor accepts a successor only if it speaks this protocol
// version and belongs to the same service. (Its user was checked when it
// connected.) It returns the successor's pid as this process sees it.
func (u *Upgrader) checkSuccessor(cc *ctl.Conn, h wire.Hello, child *successorProcess) (int, error) {
	if _, ok := speaks.choose(h.MinVersion, h.MaxVersion); !ok {
		return 0, deny(RefusedVersion, "pid %d speaks protocol versions %d to %d, the newcomer (pid %d) %d to %d", u.pid, speaks.minVersion, speaks.maxVersion, h.PID, h.MinVersion, h.MaxVersion)
	}
	if h.Name != u.cfg.Name {
		return 0, deny(RefusedName, "pid %d serves service %q on this control socket; the newcomer (pid %d) is service %q", u.pid, u.cfg.Name, h.PID, h.Name)
	}
	if child != nil {
		return child.pid(), nil // a socketpair's credentials are our own
	}
	cred, err := cc.Peer()
	if err != nil {
		return 0, err
	}
	return cred.PID, nil
}

// handoverItem is one socket to pass, with the description that goes with it.
type handoverItem struct {
	wire.Entry
	conn syscall.Conn
}

// handoverItems lists what a successor receives: every socket in use and
// the control socket itself.
func (u *Upgrader) handoverItems() []handoverItem {
	var items []handoverItem
	for _, s := range u.reg.inventory() {
		items = append(items, handoverItem{Entry: s.Entry, conn: s.conn()})
	}
	u.mu.Lock()
	ctrl := u.ctrl
	u.mu.Unlock()
	if ctrl != nil {
		items = append(items, handoverItem{Entry: wire.Entry{Kind: wire.KindControl, Network: "unixpacket", Address: u.cfg.Socket}, conn: ctrl})
	}
	return items
}

// sendSockets passes items in batches that respect the kernel's limit on
// descriptors per message, and waits for each batch's acknowledgement.
func sendSockets(cc *ctl.Conn, items []handoverItem, step time.Duration) error {
	for seq := uint32(0); len(items) > 0; seq++ {
		n, size := 0, 0
		for n < len(items) && n < wire.MaxFDs && (n == 0 || size+items[n].EncodedLen() <= wire.MaxBatchPayload) {
			size += items[n].EncodedLen()
			n++
		}
		batch := wire.FDBatch{Seq: seq}
		fds := make([]int, 0, n)
		for _, it := range items[:n] {
			fd, err := ctl.DupFD(it.conn)
			if err != nil {
				ctl.CloseFDs(fds)
				return errorf("duplicate %s: %w", describe(it.Entry), err)
			}
			fds = append(fds, fd)
			batch.Entries = append(batch.Entries, it.Entry)
		}
		err := cc.Send(batch, fds, time.Now().Add(step))
		ctl.CloseFDs(fds)
		if err != nil {
			return err
		}
		a, err := expect[wire.Ack](cc, time.Now().Add(step))
		if err != nil {
			return err
		}
		if a.Seq != seq {
			return errorf("%w: ack for batch %d, expected %d", ErrProtocol, a.Seq, seq)
		}
		items = items[n:]
	}
	return nil
}
