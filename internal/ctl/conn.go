// Package ctl is the descriptor layer under the handoff protocol: the
// SOCK_SEQPACKET control connection with SCM_RIGHTS, duplicating sockets
// without changing their flags, socketpairs for a child, the control
// socket's listener, peer credentials, socket descriptions and the lock
// beside the control socket. It knows the wire codec's messages but none
// of the protocol's steps; the handoff package drives those.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// longAgo is a deadline in the past: setting it wakes a blocked read.
var longAgo = time.Unix(1, 0)

// SmallMessage is the receive buffer of a side that only ever receives
// small messages (the serving side, a request's client), so that a
// hostile peer that opens many connections costs it little. The
// successor receives fd batches and needs wire.MaxMessageSize.
const SmallMessage = 8 << 10

// ErrNotSupported: the platform cannot pass sockets between processes.
// The handoff package exports this very value.
var ErrNotSupported = errors.New("handoff: not supported on this platform")

// Conn is one end of a control connection: a SOCK_SEQPACKET unix socket
// carrying one protocol message per packet. It owns the socket.
type Conn struct {
	c   *net.UnixConn
	buf []byte
	oob []byte

	mu       sync.Mutex // guards canceled and the deadline it overrides
	canceled bool
}

// NewConn takes ownership of c. It receives messages of up to bufSize
// bytes, with up to maxFDs descriptors.
func NewConn(c *net.UnixConn, bufSize, maxFDs int) *Conn {
	return &Conn{c: c, buf: make([]byte, bufSize), oob: make([]byte, oobSpace(maxFDs))}
}

// Bind makes ctx's cancellation interrupt any operation on cc; call the
// returned function to undo it. It reports false if ctx ended first.
func (cc *Conn) Bind(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		cc.canceled = true
		cc.c.SetDeadline(longAgo)
	})
}

// setDeadline sets the read or the write deadline (set is one of the
// conn's methods), unless Bind's context has ended: a reader and a writer
// may work at once, each with its own deadline.
func (cc *Conn) setDeadline(set func(time.Time) error, t time.Time) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.canceled {
		t = longAgo
	}
	set(t)
}

// Send writes m with fds attached; the fds stay the caller's. An error
// from encoding m (a field over a limit) comes before anything is
// written, and wraps wire.ErrProtocol.
func (cc *Conn) Send(m wire.Message, fds []int, deadline time.Time) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	cc.setDeadline(cc.c.SetWriteDeadline, deadline)
	if err := writeMsg(cc.c, b, fds); err != nil {
		return fmt.Errorf("send %s: %w", m.Type(), err)
	}
	return nil
}

// Recv reads one message; received fds belong to the caller. On error
// every descriptor that arrived has been closed.
func (cc *Conn) Recv(deadline time.Time) (wire.Message, []int, error) {
	cc.setDeadline(cc.c.SetReadDeadline, deadline)
	m, fds, _, err := readMsg(cc.c, cc.buf, cc.oob, false)
	return m, fds, err
}

// RecvCut reads one message as Recv does, except that descriptors the
// kernel could not deliver (MSG_CTRUNC: this process is out of
// descriptors, or more came than fit) are no error: the message comes
// back with those that arrived, the first ones sent, in order, and cut
// reports that the rest are lost here (the sender still has its own).
// For messages whose descriptors stand each for itself, so that the
// receiver can tell the sender which it took.
func (cc *Conn) RecvCut(deadline time.Time) (m wire.Message, fds []int, cut bool, err error) {
	cc.setDeadline(cc.c.SetReadDeadline, deadline)
	return readMsg(cc.c, cc.buf, cc.oob, true)
}

// RecvMsg reads one message that must carry no fds.
func (cc *Conn) RecvMsg(deadline time.Time) (wire.Message, error) {
	m, fds, err := cc.Recv(deadline)
	if err != nil {
		return nil, err
	}
	if len(fds) > 0 {
		CloseFDs(fds)
		return nil, fmt.Errorf("%w: %d unexpected descriptors with %s message", wire.ErrProtocol, len(fds), m.Type())
	}
	return m, nil
}

// Refuse tells the peer why it is being dropped, without waiting long for
// a peer that does not read. A reason over the protocol's limit is cut.
// It writes even once Bind's context has ended, which is often the
// reason.
func (cc *Conn) Refuse(code uint16, reason string) {
	if len(reason) > wire.MaxStringLen {
		reason = reason[:wire.MaxStringLen]
	}
	b, err := wire.Encode(wire.Refusal{Code: code, Reason: reason})
	if err != nil {
		return
	}
	// Under mu, so that Bind's cancellation, which takes it, cannot cut
	// the write short; it waits for at most the write's deadline.
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	writeMsg(cc.c, b, nil)
	if cc.canceled {
		cc.c.SetDeadline(longAgo)
	}
}

// Peer returns the credentials of the process at the other end, as the
// kernel recorded them when the connection was made (SO_PEERCRED): for a
// client, the process that called connect; for the connecting side, the
// one that called listen; for a Socketpair, its creator.
func (cc *Conn) Peer() (Cred, error) { return peerCred(cc.c) }

// PeerClosed reports whether the peer has already closed its end, without
// consuming anything.
func (cc *Conn) PeerClosed() bool { return peerClosed(cc.c) }

// Close closes the connection.
func (cc *Conn) Close() error { return cc.c.Close() }

// A Cred is a peer's pid and effective uid.
type Cred struct{ PID, UID int }

// Trusted reports whether a peer of uid may drive this process: it is
// this process's own user, or root. Anyone else is refused before a byte
// from it is trusted.
func Trusted(uid int) bool { return uid == os.Geteuid() || uid == 0 }

// Dial connects to the control socket at path. It fails with a
// *PeerError, before anything is sent, unless the process that listens
// there runs as a Trusted user.
func Dial(ctx context.Context, path string, bufSize, maxFDs int) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, err
	}
	cc := NewConn(c.(*net.UnixConn), bufSize, maxFDs)
	if err := cc.CheckPeer(); err != nil {
		cc.Close()
		return nil, err
	}
	return cc, nil
}

// CheckPeer fails with a *PeerError unless the peer runs as a Trusted
// user.
func (cc *Conn) CheckPeer() error {
	cred, err := cc.Peer()
	if err != nil {
		return err
	}
	if !Trusted(cred.UID) {
		return &PeerError{Cred: cred}
	}
	return nil
}

// A PeerError says that the peer runs as a user this process does not
// trust.
type PeerError struct{ Cred Cred }

func (e *PeerError) Error() string {
	return fmt.Sprintf("peer pid %d runs as uid %d, this process as uid %d (only the same user or root is trusted)", e.Cred.PID, e.Cred.UID, os.Geteuid())
}

// IsTimeout reports whether err is a deadline running out.
func IsTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// WriteMsg writes m with fds attached on c, as Conn.Send does, leaving
// c's deadlines as they are: for a peer that speaks the protocol by hand
// (tests, hostile peers).
func WriteMsg(c *net.UnixConn, m wire.Message, fds []int) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	return writeMsg(c, b, fds)
}

// ReadMsg reads one message of up to bufSize bytes with up to maxFDs
// descriptors from c, as Conn.Recv does, leaving c's deadlines as they
// are.
func ReadMsg(c *net.UnixConn, bufSize, maxFDs int) (wire.Message, []int, error) {
	m, fds, _, err := readMsg(c, make([]byte, bufSize), make([]byte, oobSpace(maxFDs)), false)
	return m, fds, err
}

// Drain reads and drops what the peer sends, closing any descriptors,
// until it closes its end or d has passed. Call it after refusing a peer
// whose messages were not read: a unix socket closed with unread data
// resets its peer, which may then never read the refusal.
func (cc *Conn) Drain(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		if _, fds, err := cc.Recv(deadline); err != nil {
			return
		} else {
			CloseFDs(fds)
		}
	}
}

// HoldFDs calls f with the descriptors behind conns, none duplicated:
// each stays open (held through its RawConn's Control) until f returns,
// so that a concurrent Close waits, and f may pass it in a message. The
// owners keep their descriptors. held[i] says whether conns[i]'s is
// among fds (in order); one whose connection is closed already is not.
func HoldFDs(conns []syscall.RawConn, f func(fds []int, held []bool)) {
	fds := make([]int, 0, len(conns))
	held := make([]bool, len(conns))
	var hold func(i int)
	hold = func(i int) {
		if i == len(conns) {
			f(fds, held)
			return
		}
		err := conns[i].Control(func(fd uintptr) {
			fds = append(fds, int(fd))
			held[i] = true
			hold(i + 1)
		})
		if err != nil {
			hold(i + 1)
		}
	}
	hold(0)
}
