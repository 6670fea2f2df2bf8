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

// The connection link: after the handover the control connection stays
// open while the old process drains: it carries established connections
// to the successor. One writer (writeConns) sends them: to a successor
// that said conn-batch, as many as are waiting, up to wire.MaxFDs, in one
// conns message answered by one conns-ack; to an older one, one conn
// message each, answered by a conn-ack. Several messages may be in flight
// at once, so that moving every idle connection costs a few round trips,
// not one per connection. No descriptor is duplicated: the message
// carries the connection's own, held open until it is written, and its
// owner closes it once the successor has it. Its end, when the old process
// exits, tells the successor that no more will come.

// maxInFlightFDs bounds the connections sent and not yet acknowledged.
// The kernel counts descriptors in flight against the sender, and a
// successor's receive queue has its limits: the writer waits for acks
// rather than run into ETOOMANYREFS.
const maxInFlightFDs = 4 * wire.MaxFDs

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
	acks   sync.WaitGroup // readAcks and writeConns, started by open
	wake   chan struct{}  // tells writeConns to look again: a connection queued, an ack came

	mu          sync.Mutex
	nextID      uint64
	queue       []*outConn            // waiting for writeConns
	inflight    map[uint64]*sentConns // sent and not yet acknowledged
	inflightFDs int                   // connections in inflight
	broken      error                 // why the link failed
	dead        atomic.Bool           // broken != nil, readable without waiting for mu
	lost        chan struct{}         // closed when the link fails
	// For finishConns: the outcomes of connections sent without a
	// waiting sender (sendAsync), to pass on outside mu; and every
	// connection queued (by send too), in the order of their step
	// deadlines, to settle those that pass it.
	finished  []settledConn
	pending   []*outConn
	unsettled int           // connections in pending not settled yet
	finish    chan struct{} // tells finishConns to look again; room for one
	// released is closed when the successor says, with release, that this
	// process need not stand by any more; releasedWhy says why.
	released    chan struct{}
	releasedWhy string
}

// outConn is one connection on its way to the successor. Its fields
// past rc are guarded by the link's mu.
type outConn struct {
	key   string
	state []byte
	idle  bool            // its peer speaks next (SendIdleConn)
	rc    syscall.RawConn // the owner's own descriptor
	until time.Time       // when its sender stops waiting

	phase    outPhase
	canceled error       // the sender stopped waiting while it was written: why
	done     chan error  // its outcome, exactly once (room for one), for send
	then     func(error) // or, for sendAsync, called with it by finishConns
}

// settledConn is a sendAsync connection and its outcome.
type settledConn struct {
	oc  *outConn
	err error
}

type outPhase uint8

const (
	outQueued  outPhase = iota // in queue: not sent
	outWriting                 // writeConns is writing it
	outSent                    // the successor may have it: waiting for the ack
	outSettled                 // done has its outcome
)

// sentConns is one message in flight: one connection (conn) or a batch
// (conns).
type sentConns struct {
	batch bool
	conns []*outConn
}

// newSuccessorLink returns a link that holds every send until open.
func newSuccessorLink(cc *ctl.Conn, pid int, keys []string, caps uint64, step time.Duration) *successorLink {
	l := &successorLink{cc: cc, pid: pid, keys: make(map[string]bool, len(keys)), caps: caps, step: step,
		opened: make(chan struct{}), wake: make(chan struct{}, 1), finish: make(chan struct{}, 1), inflight: make(map[uint64]*sentConns),
		lost: make(chan struct{}), released: make(chan struct{})}
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
		l.acks.Add(3)
		go l.readAcks()
		go l.writeConns()
		go l.finishConns()
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

// batches reports whether the successor takes many connections to a
// message.
func (l *successorLink) batches() bool { return l.caps&wire.CapConnBatch != 0 }

// send passes the connection behind sc to the successor and waits until
// it has taken it. The caller keeps its descriptor, which goes out
// itself, not a duplicate: it must not close it before send returns,
// and closes it after a success. An error wrapping ErrConnUnknown means
// the connection went out and its fate is unknown; any other error, that
// the successor does not have it. Whatever happens to one connection
// affects no other: only a broken link (the successor gone) fails those
// that follow.
func (l *successorLink) send(ctx context.Context, key string, sc syscall.Conn, state []byte, idle bool) error {
	until := time.Now().Add(l.step)
	if d, ok := ctx.Deadline(); ok && d.Before(until) {
		until = d
	}
	oc, err := l.queueConn(key, sc, state, idle, until, nil)
	if err != nil {
		return err
	}
	// The finisher settles it at the step deadline, as it does a
	// sendAsync connection: no timer per connection.
	select {
	case err := <-oc.done:
		return err
	case <-ctx.Done():
	}
	l.withdraw(oc, errorf("waiting for the successor to take the connection: %w", ctx.Err()))
	// Settled now, or as soon as writeConns knows whether it went out,
	// which its write deadline (until, at the latest) bounds.
	return <-oc.done
}

// sendAsync is send without the wait: then gets the outcome send would
// have returned, from the link's finisher, within the step timeout (the
// finisher settles a connection that is not by then as send does).
// Meanwhile the caller keeps the descriptor open, as for send. An error
// from sendAsync itself means the connection was not queued; then is not
// called.
//
// Thousands of idle connections go this way at once, where a goroutine
// parked per connection, with its own timer, would cost most of the
// move.
func (l *successorLink) sendAsync(key string, sc syscall.Conn, then func(error)) error {
	_, err := l.queueConn(key, sc, nil, false, time.Now().Add(l.step), then)
	return err
}

// queueConn queues a connection for writeConns: for send (then nil) or
// sendAsync. idle marks one whose peer speaks next, for a successor that
// understands it (CapIdleConns).
func (l *successorLink) queueConn(key string, sc syscall.Conn, state []byte, idle bool, until time.Time, then func(error)) (*outConn, error) {
	if !l.accepts(key) {
		return nil, errorf("%w: successor does not take connections for socket %s", ErrNoSuccessor, describeKey(key))
	}
	if len(state) > maxConnState {
		return nil, errorf("handoff: connection state of %d bytes exceeds %d", len(state), maxConnState)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, errorf("handoff: the connection to send: %w", err)
	}
	oc := &outConn{key: key, state: state, idle: idle, rc: rc, until: until, then: then}
	if then == nil {
		oc.done = make(chan error, 1)
	}
	if err := l.enqueue(oc); err != nil {
		return nil, errorf("%w: %w", ErrNoSuccessor, err)
	}
	return oc, nil
}

// finishConns passes sendAsync connections their outcomes, and settles
// every connection whose step deadline passes, until the link has failed
// and every one is settled.
func (l *successorLink) finishConns() {
	defer l.acks.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lost := l.lost
	for {
		now := time.Now()
		l.mu.Lock()
		finished := l.finished
		l.finished = nil
		var expired []*outConn
		for len(l.pending) > 0 {
			oc := l.pending[0]
			if oc.phase != outSettled {
				if now.Before(oc.until) {
					break
				}
				expired = append(expired, oc)
			}
			l.pending = l.pending[1:]
		}
		var next time.Time
		if len(l.pending) > 0 {
			next = l.pending[0].until
		}
		over := l.broken != nil && l.unsettled == 0 && len(l.finished) == 0
		l.mu.Unlock()
		for _, oc := range expired {
			l.withdraw(oc, errorf("the successor did not take the connection within %s: %w", l.step, os.ErrDeadlineExceeded))
		}
		runThen(finished)
		switch {
		case len(finished) > 0 || len(expired) > 0:
			continue // look again before waiting
		case over:
			return
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-l.finish:
		case <-lost:
			lost = nil // fail settled them, or write soon will: look again
		case <-timer.C:
		}
		timer.Stop()
	}
}

// runThen passes each connection its outcome: a big batch (an ack for a
// full conns message) on both halves at once, since each outcome is a
// close of this process's copy, mostly system calls.
func runThen(finished []settledConn) {
	if len(finished) < 64 {
		for _, sc := range finished {
			sc.oc.then(sc.err)
		}
		return
	}
	half := len(finished) / 2
	done := make(chan struct{})
	go func() {
		defer close(done)
		runThen(finished[half:])
	}()
	runThen(finished[:half])
	<-done
}

// maxConnState bounds the state sent with a connection: what fits in one
// message beside its key.
const maxConnState = wire.MaxMessageSize - wire.HeaderSize - 8 - 2 - 2 - wire.MaxStringLen - 4

// maxBatchBody bounds the entries of one conns message.
const maxBatchBody = wire.MaxMessageSize - wire.HeaderSize - 8 - 2

// enqueue queues oc for writeConns.
func (l *successorLink) enqueue(oc *outConn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return errorf("link to successor lost: %w", l.broken)
	}
	l.queue = append(l.queue, oc)
	l.pending = append(l.pending, oc)
	l.unsettled++
	if len(l.pending) == 1 {
		l.pokeFinisher() // its next deadline
	}
	l.poke()
	return nil
}

// poke wakes writeConns.
func (l *successorLink) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// settleLocked gives oc its outcome, unless it has one.
func (l *successorLink) settleLocked(oc *outConn, err error) {
	if oc.phase == outSettled {
		return
	}
	oc.phase = outSettled
	l.unsettled--
	if oc.then == nil {
		oc.done <- err
		return
	}
	l.finished = append(l.finished, settledConn{oc, err})
	l.pokeFinisher()
}

// pokeFinisher wakes finishConns.
func (l *successorLink) pokeFinisher() {
	select {
	case l.finish <- struct{}{}:
	default:
	}
}

// withdraw settles oc, whose sender stops waiting for why: a queued
// connection was never sent and stays the sender's; one that was sent may
// be the successor's. One being written is settled by writeConns.
func (l *successorLink) withdraw(oc *outConn, why error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch oc.phase {
	case outQueued:
		for i, q := range l.queue {
			if q == oc {
				l.queue = append(l.queue[:i], l.queue[i+1:]...)
				break
			}
		}
		l.settleLocked(oc, errorf("%w: %w", ErrNoSuccessor, why))
	case outWriting:
		oc.canceled = why
	case outSent:
		l.settleLocked(oc, errorf("%w: %w", ErrConnUnknown, why))
	}
}

// writeConns sends the queued connections, as many to a message as the
// successor takes, until the link fails.
func (l *successorLink) writeConns() {
	defer l.acks.Done()
	for {
		id, msg, ok := l.nextMessage()
		if !ok {
			return
		}
		l.write(id, msg)
	}
}

// nextMessage takes the next connections to send from the queue, once
// there are some and the acks of those in flight leave room for them; ok
// is false once the link has failed.
func (l *successorLink) nextMessage() (uint64, *sentConns, bool) {
	for {
		l.mu.Lock()
		if l.broken != nil {
			l.mu.Unlock()
			return 0, nil, false
		}
		if room := maxInFlightFDs - l.inflightFDs; len(l.queue) > 0 && room > 0 {
			limit := 1
			if l.batches() {
				limit = min(room, wire.MaxFDs)
			}
			n, size := 0, 0
			for n < len(l.queue) && n < limit {
				e := wire.ConnEntry{Key: l.queue[n].key, State: l.queue[n].state}
				if n > 0 && size+e.EncodedLen() > maxBatchBody {
					break
				}
				size += e.EncodedLen()
				n++
			}
			sc := &sentConns{batch: l.batches(), conns: append([]*outConn(nil), l.queue[:n]...)}
			l.queue = append(l.queue[:0], l.queue[n:]...)
			for _, oc := range sc.conns {
				oc.phase = outWriting
			}
			// In flight before it is written: its ack may come before
			// the write returns.
			l.nextID++
			id := l.nextID
			l.inflight[id] = sc
			l.inflightFDs += len(sc.conns)
			l.mu.Unlock()
			return id, sc, true
		}
		l.mu.Unlock()
		select {
		case <-l.wake:
		case <-l.lost:
		}
	}
}

// write sends one message of connections. A message on a SOCK_SEQPACKET
// socket goes out whole or not at all, so on error the successor got
// none of them. An error other than a timeout breaks the link.
func (l *successorLink) write(id uint64, sc *sentConns) {
	rcs := make([]syscall.RawConn, len(sc.conns))
	for i, oc := range sc.conns {
		rcs[i] = oc.rc
	}
	var err error
	until := sc.conns[0].until
	for _, oc := range sc.conns {
		if oc.until.After(until) {
			until = oc.until // one sender's deadline must not fail the batch
		}
	}
	ctl.HoldFDs(rcs, func(fds []int, held []bool) {
		l.mu.Lock()
		var sent []*outConn
		for i, oc := range sc.conns {
			if held[i] {
				sent = append(sent, oc)
			} else {
				l.settleLocked(oc, errorf("%w: the connection is closed", ErrNoSuccessor))
			}
		}
		l.inflightFDs -= len(sc.conns) - len(sent)
		sc.conns = sent // what the ack answers
		l.mu.Unlock()
		if len(sent) == 0 {
			err = errNothingToSend
			return
		}
		var msg wire.Message
		if sc.batch {
			m := wire.Conns{ID: id, Entries: make([]wire.ConnEntry, len(sent))}
			for i, oc := range sent {
				m.Entries[i] = wire.ConnEntry{Key: oc.key, State: oc.state, Idle: oc.idle && l.caps&wire.CapIdleConns != 0}
			}
			msg = m
		} else {
			msg = wire.Conn{ID: id, Key: sent[0].key, State: sent[0].state}
		}
		l.gate.Lock()
		defer l.gate.Unlock()
		for {
			err = l.cc.Send(msg, fds, until)
			// The kernel's limit on descriptors in flight: wait for an
			// ack of an earlier message, then try again.
			if !errors.Is(err, syscall.ETOOMANYREFS) && !errors.Is(err, syscall.ENOBUFS) || !l.waitAck(until) {
				return
			}
		}
	})

	l.mu.Lock()
	if err != nil && l.inflight[id] == sc {
		delete(l.inflight, id)
		l.inflightFDs -= len(sc.conns)
	}
	for _, oc := range sc.conns {
		switch {
		case err != nil:
			l.settleLocked(oc, errorf("%w: %w", ErrNoSuccessor, err))
		case l.broken != nil && l.inflight[id] != sc:
			// fail found it being written: it went out, and nobody
			// will ack it now.
			l.settleLocked(oc, errorf("%w: the link to the successor broke after the connection was sent: %w", ErrConnUnknown, l.broken))
		case oc.canceled != nil:
			l.settleLocked(oc, errorf("%w: %w", ErrConnUnknown, oc.canceled))
		case oc.phase == outWriting:
			oc.phase = outSent
		}
	}
	l.mu.Unlock()
	if err != nil && err != errNothingToSend && !ctl.IsTimeout(err) && !errors.Is(err, ErrProtocol) {
		l.fail(err)
	}
}

var errNothingToSend = errors.New("every connection of the message is closed")

// waitAck waits until one more message has been acknowledged, or until;
// it reports false if no other is in flight to wait for, or the link
// failed.
func (l *successorLink) waitAck(until time.Time) bool {
	l.mu.Lock()
	before := len(l.inflight)
	l.mu.Unlock()
	if before <= 1 { // only the one being written
		return false
	}
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	for {
		select {
		case <-l.wake:
		case <-l.lost:
			return false
		case <-timer.C:
			return false
		}
		l.mu.Lock()
		now := len(l.inflight)
		l.mu.Unlock()
		if now < before {
			l.poke() // for nextMessage: the wake may have been a queued connection's
			return true
		}
	}
}

// readAcks settles the connections each ack answers, until the link
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
		if err := l.settle(m); err != nil {
			l.fail(err)
			return
		}
		l.poke()
	}
}

// settle gives the connections an ack answers their outcomes. One that
// its sender gave up waiting for has one already: a late ack is dropped.
func (l *successorLink) settle(m wire.Message) error {
	var (
		id     uint64
		ok     []bool
		reason string
		batch  bool
	)
	switch a := m.(type) {
	case wire.ConnAck:
		id, ok, reason = a.ID, []bool{a.OK}, a.Reason
	case wire.ConnsAck:
		id, ok, reason, batch = a.ID, a.OK, a.Reason, true
	default:
		return errorf("%w: expected %s message, got %s", ErrProtocol, wire.TypeConnAck, m.Type())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := l.inflight[id]
	switch {
	case sc == nil:
		return errorf("%w: ack for connection %d, which is not in flight", ErrProtocol, id)
	case sc.batch != batch || len(ok) != len(sc.conns):
		return errorf("%w: %s for %d connections answers %d", ErrProtocol, m.Type(), len(ok), len(sc.conns))
	}
	delete(l.inflight, id)
	l.inflightFDs -= len(sc.conns)
	for i, oc := range sc.conns {
		if ok[i] {
			l.settleLocked(oc, nil)
		} else {
			l.settleLocked(oc, errorf("%w: successor refused the connection: %s", ErrNoSuccessor, reason))
		}
	}
	return nil
}

// fail marks the link unusable, for the first reason given, and settles
// every connection: those queued stay their senders', those in flight
// are of unknown fate. One being written is writeConns's to settle.
func (l *successorLink) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return
	}
	l.broken = err
	l.dead.Store(true)
	close(l.lost)
	for _, oc := range l.queue {
		l.settleLocked(oc, errorf("%w: link to successor lost: %w", ErrNoSuccessor, err))
	}
	l.queue = nil
	for id, sc := range l.inflight {
		for _, oc := range sc.conns {
			if oc.phase == outSent {
				l.settleLocked(oc, errorf("%w: the link to the successor broke after connection %d was sent: %w", ErrConnUnknown, id, err))
			}
		}
		delete(l.inflight, id)
	}
	l.inflightFDs = 0
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
// not a TLS connection: TLS session keys cannot be handed over. Its own
// descriptor goes to the successor, not a duplicate, so that a process
// at its open-file limit can still hand every connection over; do not
// close c while SendConn runs. Concurrent calls share messages: a
// successor of this version gets up to 253 connections in one.
func (u *Upgrader) SendConn(ctx context.Context, c net.Conn, state []byte) error {
	return u.sendConn(ctx, c, state, false)
}

// SendIdleConn is SendConn for a connection whose peer speaks next: its
// server has nothing to send on it until the client does, as with a
// WebSocket of a request-and-answer protocol between two messages. The
// successor need not adopt it at once, then: it holds the bare
// descriptor (no net.Conn, goroutine or buffer, one system call) until
// the client sends or hangs up, and only then does AcceptConn return
// it, so that thousands move at the cost of a few microseconds each in
// either process. One the successor still holds when it hands over in
// turn goes on as it is, state and all; when it stops, AcceptConn
// returns each one at once, for the program to close its way. A server
// that may speak first on the connection (a push, a keep-alive ping of
// its own) must use SendConn. A successor of a version without this
// takes the connection as SendConn's. Errors and ownership are
// SendConn's.
func (u *Upgrader) SendIdleConn(ctx context.Context, c net.Conn, state []byte) error {
	return u.sendConn(ctx, c, state, true)
}

// sendConn is SendConn, and SendIdleConn with idle.
func (u *Upgrader) sendConn(ctx context.Context, c net.Conn, state []byte, idle bool) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errorf("handoff: cannot hand over a %T: not a kernel socket", c)
	}
	link := u.successor()
	if link == nil {
		return ErrNoSuccessor
	}
	if err := link.send(ctx, "", sc, state, idle); err != nil {
		if errors.Is(err, ErrConnUnknown) {
			c.Close()
		}
		return err
	}
	return c.Close()
}

// AcceptConn returns the next connection the predecessor handed over with
// SendConn or SendIdleConn, and the state it sent with it: an idle one
// (SendIdleConn) once its client has sent or hung up, or this process
// was told to stop. The caller owns the connection. Once the predecessor
// has exited and every connection it sent has been accepted here, or
// passed on to this process's own successor (idle ones not yet returned
// go on at the handover, untouched), AcceptConn returns io.EOF; on a
// fresh start it does so at once.
func (u *Upgrader) AcceptConn(ctx context.Context) (net.Conn, []byte, error) {
	hc, err := u.conns.pop(ctx)
	return hc.conn, hc.state, err
}

// receiveConns serves the link to the predecessor after Ready: it adopts
// every connection the predecessor sends, until the predecessor exits.
// Descriptors this process had no room for (the kernel cuts the control
// data: MSG_CTRUNC) are connections it did not take, which it says in the
// ack: the predecessor keeps them.
func (u *Upgrader) receiveConns(pred *ctl.Conn) {
	defer u.wg.Done()
	defer u.conns.finish()
	defer u.dropPredecessor(pred)
	for {
		m, fds, cut, err := pred.RecvCut(time.Time{})
		if err != nil {
			if errors.Is(err, io.EOF) {
				u.log.Info("predecessor exited")
			} else if !errors.Is(err, net.ErrClosed) {
				u.log.Warn("link to predecessor failed", "err", err)
			}
			return
		}
		var ack wire.Message
		switch m := m.(type) {
		case wire.Proven:
			if len(fds) == 0 && !cut {
				u.announceProven()
				continue
			}
		case wire.Conn:
			if len(fds) == 1 || (len(fds) == 0 && cut) {
				reasons := u.adoptConns([]wire.ConnEntry{{Key: m.Key, State: m.State}}, fds)
				ack = wire.ConnAck{ID: m.ID, OK: reasons[0] == "", Reason: reasons[0]}
			}
		case wire.Conns:
			if len(fds) == len(m.Entries) || (len(fds) < len(m.Entries) && cut) {
				ack = connsAck(m.ID, u.adoptConns(m.Entries, fds))
			}
		}
		if ack == nil {
			ctl.CloseFDs(fds)
			u.log.Warn("predecessor broke the protocol", "message", m.Type(), "fds", len(fds), "truncated", cut)
			return
		}
		if err := pred.Send(ack, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
			u.log.Warn("link to predecessor failed", "err", err)
			return
		}
	}
}

// errNoDescriptor is why a connection whose descriptor did not arrive
// was not taken.
const errNoDescriptor = "out of descriptors: the connection's descriptor did not arrive (EMFILE)"

// adoptConns adopts each connection of a message, the i-th with fds[i];
// those past the last fd did not arrive. It returns, for each, why it
// was not taken, or "".
func (u *Upgrader) adoptConns(entries []wire.ConnEntry, fds []int) []string {
	reasons := make([]string, len(entries))
	for i := len(fds); i < len(entries); i++ {
		reasons[i] = errNoDescriptor
	}
	// Idle HTTP connections are parked here, one system call each; the
	// others are adopted a few at a time: adopting is mostly system
	// calls, and one that goes on down the line waits for its own
	// successor's ack.
	var adopt []int
	for i, fd := range fds {
		if !u.park(entries[i], fd) {
			adopt = append(adopt, i)
		}
	}
	var wg sync.WaitGroup
	workers := min(len(adopt), adoptWorkers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < len(adopt); j += workers {
				i := adopt[j]
				reasons[i] = u.adoptConn(entries[i], fds[i])
			}
		}()
	}
	wg.Wait()
	if n := len(entries) - len(fds); n > 0 {
		u.log.Warn("out of descriptors: the predecessor keeps connections this process could not receive", "connections", n)
	}
	return reasons
}

// maxAckReason keeps a conns-ack of wire.MaxFDs connections well within
// what the serving side receives (ctl.SmallMessage).
const maxAckReason = 1024

// adoptWorkers is how many connections of one message are adopted at once.
const adoptWorkers = 4

// connsAck answers a conns message with the reasons adoptConns gave.
func connsAck(id uint64, reasons []string) wire.ConnsAck {
	a := wire.ConnsAck{ID: id, OK: make([]bool, len(reasons))}
	for i, r := range reasons {
		a.OK[i] = r == ""
		if r != "" && a.Reason == "" {
			a.Reason = r[:min(len(r), maxAckReason)]
		}
	}
	return a
}

// park leaves fd, an idle HTTP connection (HTTPServer hands over no
// other for a listener), in the parking lot of its listener, if
// HTTPServer serves it, or one for AcceptConn marked idle (SendIdleConn)
// in AcceptConn's, until its client sends: adopting thousands at once
// would take the CPUs the predecessor needs to move the rest. It reports
// false, and leaves fd to the caller, if it cannot.
func (u *Upgrader) park(e wire.ConnEntry, fd int) bool {
	if e.Key == "" {
		return e.Idle && u.conns.park(fd, e.State)
	}
	if len(e.State) > 0 {
		return false
	}
	ln := u.reg.listenerFor(e.Key)
	return ln != nil && ln.park(fd)
}

// adoptConn takes ownership of fd, a connection the predecessor sent, and
// queues it: for the listener with its key, or for AcceptConn. It returns
// why it could not, or "".
func (u *Upgrader) adoptConn(e wire.ConnEntry, fd int) string {
	if u.park(e, fd) {
		return ""
	}
	if (e.Key != "" && u.reg.listenerFor(e.Key) == nil) || (e.Key == "" && e.Idle && u.conns.passesOn()) {
		// This process has handed over in turn: the connection goes on
		// to its successor as the descriptor it is, not adopted, which
		// would take a descriptor more.
		if hc, ok := holdFD(fd); ok {
			return u.passOn(e, hc)
		}
	}
	c, err := ctl.AdoptConn(fd)
	if err != nil {
		return err.Error()
	}
	if e.Key == "" {
		if !u.conns.push(handed{conn: c, state: e.State}) {
			c.Close()
			return "closed"
		}
		return ""
	}
	if ln := u.reg.listenerFor(e.Key); ln != nil && ln.inject(c) {
		return ""
	}
	hc, ok := c.(heldConn)
	if !ok { // ctl.AdoptConn returns kernel connections
		c.Close()
		return fmt.Sprintf("cannot pass on a %T", c)
	}
	return u.passOn(e, hc)
}

// passOn passes hc, a connection received for a socket this process no
// longer serves, to its successor, and returns why it could not, or "".
// Either way hc is closed here.
func (u *Upgrader) passOn(e wire.ConnEntry, hc heldConn) string {
	link := u.successor()
	if link == nil || !link.accepts(e.Key) {
		hc.Close()
		return fmt.Sprintf("no listener for %q", e.Key)
	}
	u.forwards.RLock()
	defer u.forwards.RUnlock()
	err := u.forwardConns(link, []queuedConn{{key: e.Key, conn: hc, state: e.State, idle: e.Idle}})[0]
	if err != nil && !errors.Is(err, ErrConnUnknown) {
		return err.Error()
	}
	// Taken, or perhaps taken: the predecessor must not serve it beside
	// the next process.
	return ""
}

// forwardConns passes queued, connections this process holds but no
// longer serves, on to the successor over link, all at once, and closes
// this process's copy of each as the successor answers for it (or the
// link's step deadline passes). It returns once every one is settled:
// each error is one's outcome, nil if the successor took it. One nobody
// took is closed anyway: nobody here can serve it.
//
// The caller holds u.forwards (read-held; Close takes it), so that Close
// waits for connections on their way down the line rather than cut them:
// each is a client's, with nobody else to serve it.
func (u *Upgrader) forwardConns(link *successorLink, queued []queuedConn) []error {
	errs := make([]error, len(queued))
	var wg sync.WaitGroup
	for i, q := range queued {
		wg.Add(1)
		c := q.conn
		_, err := link.queueConn(q.key, c, q.state, q.idle, time.Now().Add(u.cfg.StepTimeout), func(err error) {
			defer wg.Done()
			errs[i] = err
			c.Close()
		})
		if err != nil {
			wg.Done()
			errs[i] = err
			c.Close()
		}
	}
	wg.Wait()
	failed := 0
	var first error
	for _, err := range errs {
		if err != nil {
			if failed++; first == nil {
				first = err
			}
		}
	}
	if failed > 0 {
		u.log.Warn("could not pass handed-over connections on to the successor; closed them", "connections", failed, "of", len(queued), "err", first)
	}
	return errs
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

// moveConn is bounded by the link's step deadline, which sendAsync
// applies.
func (u *Upgrader) moveConn(key string, sc syscall.Conn, then func(error)) error {
	link := u.successor()
	if link == nil {
		return ErrNoSuccessor
	}
	return link.sendAsync(key, sc, then)
}

func (u *Upgrader) logger() *slog.Logger { return u.log }

func (u *Upgrader) drainTimeout() time.Duration { return u.cfg.DrainTimeout }
