package handoff

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// The new process's side of the handoff: finding the predecessor (New),
// taking its sockets (New), and completing the takeover (Ready).
//
//	New:   hello → welcome; fds… → ack each   (the sockets wait in the registry)
//	Ready: ready → done                       (the predecessor has stopped accepting)

// findPredecessor returns the control connection to the process this one
// succeeds, or, when there is none, the newly bound control socket.
func (u *Upgrader) findPredecessor(ctx context.Context) (*ctl.Conn, *net.UnixListener, error) {
	if cc, err := inheritedControlConn(); cc != nil || err != nil {
		u.sd.spawned = cc != nil
		return cc, nil, err
	}
	path := u.cfg.Socket
	// The lock serialises processes starting at the same moment, so that
	// only a socket file proven stale under it is ever replaced. Nobody
	// holds it for more than a few milliseconds: a step's wait is ample.
	lockCtx, cancel := context.WithTimeout(ctx, u.cfg.StepTimeout)
	defer cancel()
	unlock, err := ctl.LockFile(lockCtx, u.lockPath())
	if err != nil {
		return nil, nil, errorf("handoff: control socket %s: %w", path, err)
	}
	defer unlock()
	cc, err := ctl.Dial(ctx, path, wire.MaxMessageSize, wire.MaxFDs)
	if err == nil {
		return cc, nil, nil
	}
	var peer *ctl.PeerError
	switch {
	case errors.As(err, &peer):
		return nil, nil, errorf("handoff: control socket %s is served by pid %d of uid %d, not by this user (uid %d) or root: refusing to trust it; keep the control socket in a directory only the service's user can write to: %w",
			path, peer.Cred.PID, peer.Cred.UID, os.Geteuid(), ErrPeerRejected)
	case ctl.IsConnRefused(err):
		u.log.Info("replacing stale control socket", "socket", path)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, nil, errorf("handoff: remove stale control socket: %w", err)
		}
	case !ctl.IsNotExist(err):
		return nil, nil, errorf("handoff: connect to control socket: %w", err)
	}
	ln, err := ctl.ListenControlSocket(path)
	if err != nil {
		return nil, nil, errorf("handoff: control socket: %w", err)
	}
	return nil, ln, nil
}

// inheritedControlConn returns the control connection a predecessor that
// started this process passed as fd HANDOFF_FD, or nil when there is none.
func inheritedControlConn() (*ctl.Conn, error) {
	fdStr, ok := os.LookupEnv(ctl.EnvFD)
	ppid := os.Getenv(ctl.EnvPPID)
	os.Unsetenv(ctl.EnvFD)
	os.Unsetenv(ctl.EnvPPID)
	if !ok || ppid != strconv.Itoa(os.Getppid()) {
		return nil, nil // not ours: a leaked variable, or the parent is gone
	}
	fd, err := strconv.Atoi(fdStr)
	if err != nil || fd < 3 {
		return nil, errorf("handoff: bad %s=%q", ctl.EnvFD, fdStr)
	}
	c, err := ctl.UnixConnFromFD(fd)
	if err != nil {
		return nil, errorf("handoff: %s=%d: %w", ctl.EnvFD, fd, err)
	}
	cc := ctl.NewConn(c, wire.MaxMessageSize, wire.MaxFDs)
	if err := cc.CheckPeer(); err != nil {
		cc.Close()
		return nil, errorf("handoff: %s=%d: %w: %w", ctl.EnvFD, fd, ErrPeerRejected, err)
	}
	return cc, nil
}

// takeOver runs the successor's half of the handoff up to ready: say
// hello, receive every socket, acknowledge each batch.
func (u *Upgrader) takeOver(ctx context.Context, cc *ctl.Conn) error {
	stop := cc.Bind(ctx)
	defer stop()
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	h := wire.Hello{MinVersion: speaks.minVersion, MaxVersion: speaks.maxVersion, Caps: speaks.caps, PID: uint32(u.pid), Name: u.cfg.Name, Build: speaks.build.wire()}
	if err := cc.Send(h, nil, step()); err != nil {
		return errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	w, err := expect[wire.Welcome](cc, step())
	if err != nil {
		return errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	if w.Version < speaks.minVersion || w.Version > speaks.maxVersion {
		return errorf("handoff: take over: %w: predecessor chose version %d", ErrProtocol, w.Version)
	}
	u.mu.Lock()
	u.predBuild = &Build{Version: w.Build.Version, Revision: w.Build.Revision}
	u.mu.Unlock()
	u.succeed(cc, w.Generation, int(w.PID), w.Caps&speaks.caps) // in effect only when both have them
	inherit := func(e wire.Entry, fd int) { u.reg.inherit(e, fd, fromPredecessor) }
	if err := receiveSockets(cc, w.Sockets, u.cfg.StepTimeout, inherit); err != nil {
		return errorf("handoff: take over: receive sockets: %w", ctxErr(ctx, err))
	}
	u.log.Info("received sockets from predecessor", "predecessor", w.PID, "sockets", w.Sockets)
	return nil
}

// receiveSockets receives total sockets in batches, acknowledging each,
// and gives each to inherit, which takes ownership of the descriptor. On
// error, the descriptors of the failing batch are closed; earlier ones
// belong to inherit already.
func receiveSockets(cc *ctl.Conn, total uint32, step time.Duration, inherit func(wire.Entry, int)) error {
	for received, seq := uint32(0), uint32(0); received < total; seq++ {
		m, fds, err := cc.Recv(time.Now().Add(step))
		if err != nil {
			return err
		}
		batch, ok := m.(wire.FDBatch)
		switch {
		case !ok:
			err = errorf("%w: expected fds message, got %s", ErrProtocol, m.Type())
		case batch.Seq != seq:
			err = errorf("%w: fd batch %d, expected %d", ErrProtocol, batch.Seq, seq)
		case len(batch.Entries) == 0 || len(batch.Entries) != len(fds):
			err = errorf("%w: fd batch of %d entries carries %d descriptors", ErrProtocol, len(batch.Entries), len(fds))
		case uint64(received)+uint64(len(fds)) > uint64(total):
			err = errorf("%w: more sockets than the %d announced", ErrProtocol, total)
		}
		if err != nil {
			ctl.CloseFDs(fds)
			return err
		}
		for i, e := range batch.Entries {
			inherit(e, fds[i])
		}
		received += uint32(len(fds))
		if err := cc.Send(wire.Ack{Seq: seq}, nil, time.Now().Add(step)); err != nil {
			return err
		}
	}
	return nil
}

// completeTakeover tells the predecessor this process is ready and waits
// for it to stop accepting. It returns the control socket, which this
// process serves from now on.
func (u *Upgrader) completeTakeover(pred *ctl.Conn) (*net.UnixListener, error) {
	fd := u.reg.takeControl()
	if fd < 0 {
		return nil, errorf("handoff: %w: predecessor sent no control socket", ErrProtocol)
	}
	f := os.NewFile(uintptr(fd), u.cfg.Socket)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, errorf("handoff: inherited control socket: %w", err)
	}
	ctrl, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, errorf("handoff: %w: control socket is %T", ErrProtocol, ln)
	}
	ctrl.SetUnlinkOnClose(false) // the path outlives this process's copy
	if err := pred.Send(wire.Ready{PID: uint32(u.pid), Keys: u.reg.keys()}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
		ctrl.Close()
		// The predecessor hung up: its refusal, if it sent one, says why.
		var refused *RefusedError
		if _, rerr := recvMsg(pred, time.Now().Add(100*time.Millisecond)); errors.As(rerr, &refused) {
			return nil, errorf("handoff: predecessor gave up: %w", refused)
		}
		u.mu.Lock()
		predPID := u.predPID
		u.mu.Unlock()
		return nil, errorf("handoff: tell predecessor pid %d that this process is ready: %w", predPID, peerGone("it", err))
	}
	// Once it has read ready the predecessor stops for good, so from here
	// on this process serves whatever the predecessor answers.
	_, err = expect[wire.Done](pred, time.Now().Add(u.cfg.StepTimeout))
	var refused *RefusedError
	switch {
	case err == nil:
		u.log.Info("predecessor stopped accepting; serving")
	case errors.As(err, &refused):
		ctrl.Close()
		return nil, errorf("handoff: predecessor gave up: %w", err)
	default:
		u.log.Warn("predecessor did not confirm the handover; serving anyway", "err", err)
	}
	return ctrl, nil
}
