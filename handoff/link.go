package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// The connection link: after the handover the control connection stays open while the old
// process drains: it carries established connections to the successor
// (msgConn with one fd, answered by msgConnAck with the same ID). Several
// may be in flight at once, so that moving every idle connection costs
// about one round trip, not one per connection. Its end, when the old
// process exits, tells the successor that no more will come.

// successorLink is the old process's end of that connection.
type successorLink struct {
	cc   *ctl.Conn
	pid  int
	keys map[string]bool // sockets the successor serves
	caps uint64
	step time.Duration

	// gate is held from the link's creation until done has been sent
	// (connections may only follow done); after that it orders writes.
	gate   sync.Mutex
	opened chan struct{}  // closed by open
	acks   sync.WaitGroup // readAcks, started by open

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan wire.ConnAck // connections sent and not yet acknowledged
	broken  error                        // why the link failed
	dead    atomic.Bool                  // broken != nil, readable without waiting for mu
	lost    chan struct{}                // closed when the link fails
	// released is closed when the successor says, with release, that this
	// process need not stand by any more; releasedWhy says why.
	released    chan struct{}
	releasedWhy string
}

// newSuccessorLink returns a link that holds every send until open.
func newSuccessorLink(cc *ctl.Conn, pid int, keys []string, caps uint64, step time.Duration) *successorLink {
	l := &successorLink{cc: cc, pid: pid, keys: make(map[string]bool, len(keys)), caps: caps, step: step,
		opened: make(chan struct{}), pending: make(map[uint64]chan wire.ConnAck), lost: make(chan struct{}), released: make(chan struct{})}
	for _, k := range keys {
		l.keys[k] = true
	}
	l.gate.Lock()
	return l
}

// open lets connections through, once done has been sent; err is why
// sending done failed, which makes the link unusable.
func (l *successorLink) open(err error) {
	if err != nil {
		l.fail(err)
	} else {
		l.acks.Add(1)
		go l.readAcks()
	}
	close(l.opened)
	l.gate.Unlock()
}

// waitOpen waits until open, or until ctx ends.
func (l *successorLink) waitOpen(ctx context.Context) {
	select {
	case <-l.opened:
	case <-ctx.Done():
	}
}

// accepts reports whether the successor can take connections for key.
func (l *successorLink) accepts(key string) bool {
	return l.caps&wire.CapConns != 0 && !l.dead.Load() && (key == "" || l.keys[key])
}

// send passes the connection behind sc to the successor and waits until
// it has taken it. The caller keeps its own descriptor. An error wrapping
// ErrConnUnknown means the connection went out and its fate is unknown;
// any other error, that the successor does not have it. Whatever happens
// to one connection affects no other: only a broken link (the successor
// gone) fails those that follow.
func (l *successorLink) send(ctx context.Context, key string, sc syscall.Conn, state []byte) error {
	if !l.accepts(key) {
		return errorf("%w: successor does not take connections for socket %s", ErrNoSuccessor, describeKey(key))
	}
	if len(state) > maxConnState {
		return errorf("handoff: connection state of %d bytes exceeds %d", len(state), maxConnState)
	}
	fd, err := ctl.DupFD(sc)
	if err != nil {
		return errorf("handoff: duplicate the connection to send it: %w", err)
	}
	defer ctl.CloseFDs([]int{fd}) // after the ack: until then the connection is ours too

	deadline := time.Now().Add(l.step)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	id, acked, err := l.post(key, state, fd, deadline)
	if err != nil {
		return errorf("%w: %w", ErrNoSuccessor, err) // not sent
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case a, ok := <-acked:
		if !ok {
			return errorf("%w: the link to the successor broke after connection %d was sent: %w", ErrConnUnknown, id, l.err())
		}
		if !a.OK {
			return errorf("%w: successor refused the connection: %s", ErrNoSuccessor, a.Reason)
		}
		return nil
	case <-timer.C:
		err = errorf("no acknowledgement for connection %d within %s: %w", id, l.step, os.ErrDeadlineExceeded)
	case <-ctx.Done():
		err = errorf("waiting for the acknowledgement of connection %d: %w", id, ctx.Err())
	}
	// The ack may still come: readAcks then drops it into acked, whose
	// room for one keeps it from blocking.
	return errorf("%w: %w", ErrConnUnknown, err)
}

// maxConnState bounds the state sent with a connection: what fits in one
// message beside its key.
const maxConnState = wire.MaxMessageSize - wire.HeaderSize - 8 - 2 - wire.MaxStringLen - 4

// post sends one connection and returns the channel its ack comes on. A
// message on a SOCK_SEQPACKET socket goes out whole or not at all, so on
// error the successor did not get it. An error other than a timeout
// breaks the link.
func (l *successorLink) post(key string, state []byte, fd int, deadline time.Time) (uint64, chan wire.ConnAck, error) {
	l.gate.Lock()
	defer l.gate.Unlock()
	l.mu.Lock()
	if l.broken != nil {
		l.mu.Unlock()
		return 0, nil, errorf("link to successor lost: %w", l.broken)
	}
	l.nextID++
	id := l.nextID
	acked := make(chan wire.ConnAck, 1)
	l.pending[id] = acked
	l.mu.Unlock()
	if err := l.cc.Send(wire.Conn{ID: id, Key: key, State: state}, []int{fd}, deadline); err != nil {
		l.mu.Lock()
		delete(l.pending, id)
		l.mu.Unlock()
		if !ctl.IsTimeout(err) && !errors.Is(err, ErrProtocol) {
			l.fail(err)
		}
		return 0, nil, err
	}
	return id, acked, nil
}

// readAcks hands each ack to the send waiting for it, until the link
// fails or the successor exits.
func (l *successorLink) readAcks() {
	defer l.acks.Done()
	for {
		m, err := recvMsg(l.cc, time.Time{})
		if err != nil {
			l.fail(err)
			return
		}
		if r, ok := m.(wire.Release); ok && l.caps&wire.CapCanary != 0 {
			l.mu.Lock()
			if l.releasedWhy == "" {
				l.releasedWhy = "released: " + r.Reason
				close(l.released)
			}
			l.mu.Unlock()
			continue
		}
		a, ok := m.(wire.ConnAck)
		if !ok {
			l.fail(errorf("%w: expected %s message, got %s", ErrProtocol, wire.TypeConnAck, m.Type()))
			return
		}
		l.mu.Lock()
		acked, ok := l.pending[a.ID]
		delete(l.pending, a.ID)
		l.mu.Unlock()
		if !ok {
			l.fail(errorf("%w: ack for connection %d, which is not in flight", ErrProtocol, a.ID))
			return
		}
		acked <- a
	}
}

// fail marks the link unusable, for the first reason given, and wakes
// every send waiting for an ack: their connections' fate is unknown.
func (l *successorLink) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return
	}
	l.broken = err
	l.dead.Store(true)
	close(l.lost)
	for id, acked := range l.pending {
		close(acked)
		delete(l.pending, id)
	}
}

// proven tells the successor that the handover is final, if it
// understands that (CapCanary): it may then speak to systemd as the
// unit's main process.
func (l *successorLink) proven() {
	if l.caps&wire.CapCanary == 0 {
		return
	}
	l.gate.Lock()
	defer l.gate.Unlock()
	if err := l.cc.Send(wire.Proven{}, nil, time.Now().Add(l.step)); err != nil && !ctl.IsTimeout(err) {
		l.fail(err)
	}
}

// releaseReason is what the successor said with release.
func (l *successorLink) releaseReason() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.releasedWhy
}

func (l *successorLink) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// close ends the link and waits for readAcks, which open may be about to
// start: the gate tells when it has.
func (l *successorLink) close() {
	l.cc.Close()
	l.gate.Lock()
	defer l.gate.Unlock()
	l.acks.Wait()
}

// SendConn hands an established connection to the successor together
// with state, an opaque blob from which the successor resumes the session
// (it gets both from AcceptConn). Use it while draining, after Exit is
// closed, for connections too long-lived to wait for. On success c has
// been closed here and lives on in the successor; the client notices
// nothing. On an error that matches ErrConnUnknown the successor may have
// it (it stalled, or the link broke, after c was sent): SendConn has
// closed c, which nobody here may use any more. On any other error the
// successor does not have it, and c is still the caller's, untouched.
//
// c must be a connection from the kernel (*net.TCPConn, *net.UnixConn),
// not a TLS connection: TLS session keys cannot be handed over.
func (u *Upgrader) SendConn(ctx context.Context, c net.Conn, state []byte) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errorf("handoff: cannot hand over a %T: not a kernel socket", c)
	}
	if err := u.sendConn(ctx, "", sc, state); err != nil {
		if errors.Is(err, ErrConnUnknown) {
			c.Close()
		}
		return err
	}
	return c.Close()
}

// sendConn passes a connection for the socket key ("" for AcceptConn).
func (u *Upgrader) sendConn(ctx context.Context, key string, sc syscall.Conn, state []byte) error {
	link := u.successor()
	if link == nil {
		return ErrNoSuccessor
	}
	return link.send(ctx, key, sc, state)
}

// AcceptConn returns the next connection the predecessor handed over with
// SendConn, and the state it sent with it. The caller owns the
// connection. Once the predecessor has exited and every connection it
// sent has been accepted, AcceptConn returns io.EOF; on a fresh start it
// does so at once.
func (u *Upgrader) AcceptConn(ctx context.Context) (net.Conn, []byte, error) {
	hc, err := u.conns.pop(ctx)
	return hc.conn, hc.state, err
}

// receiveConns serves the link to the predecessor after Ready: it adopts
// every connection the predecessor sends, until the predecessor exits.
func (u *Upgrader) receiveConns(pred *ctl.Conn) {
	defer u.wg.Done()
	defer u.conns.finish()
	defer u.dropPredecessor(pred)
	for {
		m, fds, err := pred.Recv(time.Time{})
		if err != nil {
			if errors.Is(err, io.EOF) {
				u.log.Info("predecessor exited")
			} else if !errors.Is(err, net.ErrClosed) {
				u.log.Warn("link to predecessor failed", "err", err)
			}
			return
		}
		if _, ok := m.(wire.Proven); ok && len(fds) == 0 {
			u.announceProven()
			continue
		}
		cm, ok := m.(wire.Conn)
		if !ok || len(fds) != 1 {
			ctl.CloseFDs(fds)
			u.log.Warn("predecessor broke the protocol", "message", m.Type(), "fds", len(fds))
			return
		}
		reason := u.adoptConn(cm, fds[0])
		if err := pred.Send(wire.ConnAck{ID: cm.ID, OK: reason == "", Reason: reason}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
			u.log.Warn("link to predecessor failed", "err", err)
			return
		}
	}
}

// adoptConn takes ownership of fd, a connection the predecessor sent, and
// queues it: for the listener with its key, or for AcceptConn. It returns
// why it could not, or "".
func (u *Upgrader) adoptConn(m wire.Conn, fd int) string {
	f := os.NewFile(uintptr(fd), "handed-over")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err.Error()
	}
	if m.Key == "" {
		if !u.conns.push(handedConn{conn: c, state: m.State}) {
			c.Close()
			return "closed"
		}
		return ""
	}
	if ln := u.reg.listenerFor(m.Key); ln != nil && ln.inject(c) {
		return ""
	}
	// This process has handed over in turn: the connection goes on to
	// its successor.
	if link := u.successor(); link != nil && link.accepts(m.Key) {
		if err := u.forwardConn(m.Key, c, m.State); err != nil {
			return err.Error()
		}
		return ""
	}
	c.Close()
	return fmt.Sprintf("no listener for %q", m.Key)
}

// forwardConn passes c, a connection this process holds but no longer
// serves, to the successor, and closes it here; on failure it is closed
// anyway: nobody here can serve it.
func (u *Upgrader) forwardConn(key string, c net.Conn, state []byte) error {
	defer c.Close()
	// Close waits for forwards (u.forwards) rather than cut them: a
	// connection on its way down the line is a client's, with nobody
	// else to serve it. Each is bounded by a step.
	u.forwards.RLock()
	defer u.forwards.RUnlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), u.cfg.StepTimeout)
	defer cancel()
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errorf("handoff: cannot forward a %T", c)
	}
	err := u.sendConn(ctx, key, sc, state)
	if err != nil {
		u.log.Warn("could not pass a handed-over connection on to the successor", "socket", describeKey(key), "err", err)
	}
	return err
}

type handedConn struct {
	conn  net.Conn
	state []byte
}

// connQueue holds handed-over connections until AcceptConn takes them.
type connQueue struct {
	mu      sync.Mutex
	items   []handedConn
	done    bool          // no more will come
	changed chan struct{} // closed and replaced on every change
}

func (q *connQueue) notifyLocked() {
	if q.changed != nil {
		close(q.changed)
		q.changed = nil
	}
}

// push queues hc, or reports false if the queue is finished.
func (q *connQueue) push(hc handedConn) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.done {
		return false
	}
	q.items = append(q.items, hc)
	q.notifyLocked()
	return true
}

// finish says no more connections will come.
func (q *connQueue) finish() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.done = true
	q.notifyLocked()
}

// close finishes the queue and closes what nobody accepted.
func (q *connQueue) close() {
	q.mu.Lock()
	items := q.items
	q.items, q.done = nil, true
	q.notifyLocked()
	q.mu.Unlock()
	for _, hc := range items {
		hc.conn.Close()
	}
}

func (q *connQueue) pop(ctx context.Context) (handedConn, error) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			hc := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return hc, nil
		}
		if q.done {
			q.mu.Unlock()
			return handedConn{}, io.EOF
		}
		if q.changed == nil {
			q.changed = make(chan struct{})
		}
		changed := q.changed
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return handedConn{}, ctx.Err()
		case <-changed:
		}
	}
}

// The Upgrader as HTTPServer's connMover.

func (u *Upgrader) connKey(ln net.Listener) (string, bool) { return u.reg.keyOf(ln) }

func (u *Upgrader) takesConns(key string) bool {
	link := u.successor()
	return link != nil && link.accepts(key)
}

func (u *Upgrader) waitLink(ctx context.Context) {
	if link := u.successor(); link != nil {
		link.waitOpen(ctx)
	}
}

func (u *Upgrader) moveConn(key string, sc syscall.Conn) error {
	ctx, cancel := context.WithTimeout(u.ctx, u.cfg.StepTimeout)
	defer cancel()
	return u.sendConn(ctx, key, sc, nil)
}

func (u *Upgrader) logger() *slog.Logger { return u.log }

func (u *Upgrader) drainTimeout() time.Duration { return u.cfg.DrainTimeout }
