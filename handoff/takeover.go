package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// The successor's side of the handoff.

// findPredecessor returns the control connection to the process this one
// succeeds, or, when there is none, the newly bound control socket.
func (u *Upgrader) findPredecessor(ctx context.Context) (*ctlConn, *net.UnixListener, error) {
	if cc, err := inheritedControlConn(); cc != nil || err != nil {
		u.sd.spawned = cc != nil
		return cc, nil, err
	}
	path := u.cfg.Socket
	// The lock serialises processes starting at the same moment, so that
	// only a socket file proven stale under it is ever replaced.
	unlock, err := lockFile(ctx, path+".lock")
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: lock %s: %w", path, err)
	}
	defer unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err == nil {
		return newCtlConn(c.(*net.UnixConn), maxMessageSize, maxFDsPerMessage), nil, nil
	}
	switch {
	case isConnRefused(err):
		u.log.Info("replacing stale control socket", "socket", path)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, nil, fmt.Errorf("handoff: remove stale control socket: %w", err)
		}
	case !isNotExist(err):
		return nil, nil, fmt.Errorf("handoff: connect to control socket: %w", err)
	}
	ln, err := listenControlSocket(path)
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: control socket: %w", err)
	}
	return nil, ln, nil
}

// takeOver runs the successor's half of the handoff up to ready: say
// hello, receive every socket, acknowledge each batch.
func (u *Upgrader) takeOver(ctx context.Context, cc *ctlConn) error {
	stop := cc.bind(ctx)
	defer stop()
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	h := hello{MinVersion: protocolVersion, MaxVersion: protocolVersion, Caps: supportedCaps, PID: uint32(u.pid), Name: u.cfg.Name}
	if err := cc.send(h, nil, step()); err != nil {
		return fmt.Errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	w, err := expect[welcome](cc, step())
	if err != nil {
		return fmt.Errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	if w.Version != protocolVersion {
		return fmt.Errorf("handoff: take over: %w: predecessor chose version %d", ErrProtocol, w.Version)
	}
	u.generation = w.Generation + 1
	u.log = u.log.With("generation", u.generation)
	inherit := func(e entry, fd int) { u.reg.inherit(e, fd, fromPredecessor) }
	if err := receiveSockets(cc, w.Sockets, u.cfg.StepTimeout, inherit); err != nil {
		return fmt.Errorf("handoff: take over: receive sockets: %w", ctxErr(ctx, err))
	}
	u.log.Info("received sockets from predecessor", "predecessor", w.PID, "sockets", w.Sockets)
	return nil
}

// receiveSockets receives total sockets in batches, acknowledging each,
// and gives each to inherit, which takes ownership of the file. On error,
// the descriptors of the failing batch are closed; earlier ones belong to
// inherit already.
func receiveSockets(cc *ctlConn, total uint32, step time.Duration, inherit func(entry, int)) error {
	for received, seq := uint32(0), uint32(0); received < total; seq++ {
		m, fds, err := cc.recv(time.Now().Add(step))
		if err != nil {
			return err
		}
		batch, ok := m.(fdBatch)
		switch {
		case !ok:
			err = fmt.Errorf("%w: expected fds message, got %s", ErrProtocol, m.msgType())
		case batch.Seq != seq:
			err = fmt.Errorf("%w: fd batch %d, expected %d", ErrProtocol, batch.Seq, seq)
		case len(batch.Entries) == 0 || len(batch.Entries) != len(fds):
			err = fmt.Errorf("%w: fd batch of %d entries carries %d descriptors", ErrProtocol, len(batch.Entries), len(fds))
		case uint64(received)+uint64(len(fds)) > uint64(total):
			err = fmt.Errorf("%w: more sockets than the %d announced", ErrProtocol, total)
		}
		if err != nil {
			closeFDs(fds)
			return err
		}
		for i, e := range batch.Entries {
			inherit(e, fds[i])
		}
		received += uint32(len(fds))
		if err := cc.send(ack{Seq: seq}, nil, time.Now().Add(step)); err != nil {
			return err
		}
	}
	return nil
}

// completeTakeover tells the predecessor this process is ready and waits
// for it to stop accepting. It returns the control socket, which this
// process serves from now on.
func (u *Upgrader) completeTakeover(pred *ctlConn) (*net.UnixListener, error) {
	fd := u.reg.takeControl()
	if fd < 0 {
		return nil, fmt.Errorf("handoff: %w: predecessor sent no control socket", ErrProtocol)
	}
	f := os.NewFile(uintptr(fd), u.cfg.Socket)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited control socket: %w", err)
	}
	ctrl, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("handoff: %w: control socket is %T", ErrProtocol, ln)
	}
	if err := pred.send(ready{PID: uint32(u.pid), Keys: u.reg.keys()}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
		ctrl.Close()
		return nil, fmt.Errorf("handoff: tell predecessor: %w", err)
	}
	// Once it has read ready the predecessor stops for good, so from here
	// on this process serves whatever the predecessor answers.
	_, err = expect[done](pred, time.Now().Add(u.cfg.StepTimeout))
	var refused *RefusedError
	switch {
	case err == nil:
		u.log.Info("predecessor stopped accepting; serving")
	case errors.As(err, &refused):
		ctrl.Close()
		return nil, fmt.Errorf("handoff: predecessor gave up: %w", err)
	default:
		u.log.Warn("predecessor did not confirm the handover; serving anyway", "err", err)
	}
	return ctrl, nil
}
