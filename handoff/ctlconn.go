package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// aLongTimeAgo is a deadline in the past: setting it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// Receive buffers. The serving side only ever receives small messages, so
// a hostile peer that opens many connections costs it little; the
// successor receives fd batches and needs room for the largest.
const (
	smallMessage = 8 << 10
)

// ctlConn is one end of a control connection: a SOCK_SEQPACKET unix
// socket carrying one protocol message per packet. It owns c.
type ctlConn struct {
	c   *net.UnixConn
	buf []byte
	oob []byte

	mu       sync.Mutex // guards canceled and the deadline it overrides
	canceled bool
}

func newCtlConn(c *net.UnixConn, bufSize, maxFDs int) *ctlConn {
	return &ctlConn{c: c, buf: make([]byte, bufSize), oob: make([]byte, oobSpace(maxFDs))}
}

// bind makes ctx's cancellation interrupt any operation on cc; call the
// returned function to undo it.
func (cc *ctlConn) bind(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		cc.canceled = true
		cc.c.SetDeadline(aLongTimeAgo)
	})
}

// setDeadline sets the read or the write deadline (set is one of the
// conn's methods), unless bind's context has ended: a reader and a writer
// may work at once, each with its own deadline.
func (cc *ctlConn) setDeadline(set func(time.Time) error, t time.Time) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.canceled {
		t = aLongTimeAgo
	}
	set(t)
}

// send writes m with fds attached; the fds stay the caller's.
func (cc *ctlConn) send(m message, fds []int, deadline time.Time) error {
	cc.setDeadline(cc.c.SetWriteDeadline, deadline)
	return writeMsg(cc.c, m, fds)
}

// recv reads one message; received fds belong to the caller.
func (cc *ctlConn) recv(deadline time.Time) (message, []int, error) {
	cc.setDeadline(cc.c.SetReadDeadline, deadline)
	return readMsg(cc.c, cc.buf, cc.oob)
}

// recvMsg reads one message that must carry no fds. A refusal from the
// peer comes back as a *RefusedError.
func (cc *ctlConn) recvMsg(deadline time.Time) (message, error) {
	m, fds, err := cc.recv(deadline)
	if err != nil {
		return nil, err
	}
	if len(fds) > 0 {
		closeFDs(fds)
		return nil, fmt.Errorf("%w: %d unexpected descriptors with %s message", ErrProtocol, len(fds), m.msgType())
	}
	if r, ok := m.(refusal); ok {
		return nil, &RefusedError{Code: r.Code, Reason: r.Reason}
	}
	return m, nil
}

// refuse tells the peer why it is being dropped, without waiting long for
// a peer that does not read.
func (cc *ctlConn) refuse(code RefusalCode, reason string) {
	if len(reason) > maxStringLen {
		reason = reason[:maxStringLen]
	}
	cc.send(refusal{Code: code, Reason: reason}, nil, time.Now().Add(100*time.Millisecond))
}

func (cc *ctlConn) Close() error { return cc.c.Close() }

// expect reads the next message and requires it to be a T.
func expect[T message](cc *ctlConn, deadline time.Time) (T, error) {
	var zero T
	m, err := cc.recvMsg(deadline)
	if err != nil {
		return zero, err
	}
	t, ok := m.(T)
	if !ok {
		return zero, fmt.Errorf("%w: expected %s message, got %s", ErrProtocol, zero.msgType(), m.msgType())
	}
	return t, nil
}

// isTimeout reports whether err is a deadline running out.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// ctxErr prefers ctx's own error over the I/O error that its cancellation
// caused, so callers can test errors.Is(err, context.Canceled).
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
