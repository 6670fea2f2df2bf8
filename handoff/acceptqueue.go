package handoff

import (
	"context"
	"io"
	"sync"

	"github.com/handoffd/handoff/internal/ctl"
)

// parking says what becomes of an idle connection (SendIdleConn) that
// arrives for AcceptConn.
type parking uint8

const (
	parkOpen    parking = iota // parked until its client sends
	parkPassOn                 // this process handed over: it goes on as it is
	parkNothing                // stopping or closed: adopted at once
)

// connQueue holds the connections the predecessor hands over for
// AcceptConn: adopted ones until AcceptConn takes them, and idle ones
// (SendIdleConn) unadopted in a parking lot (parking_linux.go) until
// their client sends, when they join the others. AcceptConn sees io.EOF
// once the predecessor sends no more and both are empty.
type connQueue struct {
	mu      sync.Mutex
	items   []handed
	done    bool          // no more will come from the predecessor
	closed  bool          // close: nobody takes any more
	parking parking       // what becomes of idle ones
	lot     *parkingLot   // the idle ones parked
	parked  int           // how many of them: AcceptConn waits for them
	changed chan struct{} // closed and replaced on every change
}

func (q *connQueue) notifyLocked() {
	if q.changed != nil {
		close(q.changed)
		q.changed = nil
	}
}

// push queues hc, or reports false if the queue is finished.
func (q *connQueue) push(hc handed) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.done {
		return false
	}
	q.items = append(q.items, hc)
	q.notifyLocked()
	return true
}

// park takes fd, an idle connection, and its state, to queue once its
// client sends. It reports false, and leaves fd to the caller, when it
// cannot: the queue is finished, parking is over (passesOn says why), or
// the lot cannot take it.
func (q *connQueue) park(fd int, state []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.done || q.parking != parkOpen || !parkIn(&q.lot, 0, q.unpark, fd, state) {
		return false
	}
	q.parked++
	return true
}

// passesOn reports whether this process has handed over, so that an idle
// connection for AcceptConn goes on to the successor as it is.
func (q *connQueue) passesOn() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.parking == parkPassOn
}

// unpark is the lot's delivery: it adopts a parked connection whose
// client has sent (or hung up) and queues it. It reports false, and
// leaves the descriptor to the lot, when it cannot adopt it now (out of
// descriptors).
func (q *connQueue) unpark(pc parkedConn) bool {
	c, err := ctl.TryAdoptConn(pc.fd)
	if err != nil {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parked--
	if q.closed {
		c.Close()
		return true
	}
	q.items = append(q.items, handed{conn: c, state: pc.state})
	q.notifyLocked()
	return true
}

// unparkAll ends parking: this process is stopping. Every idle connection
// parked is adopted and queued for AcceptConn, for the program to close
// its way; those that arrive later are adopted at once.
func (q *connQueue) unparkAll() {
	adopted := adoptParked(q.endParking(parkNothing))
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		for _, h := range adopted {
			h.conn.Close()
		}
		return
	}
	q.items = append(q.items, adopted...)
	q.notifyLocked()
}

// endParking ends parking, stops the lot and returns what it still held,
// which the caller owns: to pass on (then parkPassOn), to adopt or to
// close.
func (q *connQueue) endParking(then parking) []parkedConn {
	q.mu.Lock()
	q.parking = then
	lot := q.lot
	q.lot = nil
	q.mu.Unlock()
	var parked []parkedConn
	if lot != nil {
		parked = lot.stop() // joins the lot, which may queue more meanwhile
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parked = 0
	q.notifyLocked()
	return parked
}

// finish says the predecessor sends no more connections.
func (q *connQueue) finish() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.done = true
	q.notifyLocked()
}

// close finishes the queue and closes what nobody accepted, parked
// connections included.
func (q *connQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	closeParked(q.endParking(parkNothing))
	q.mu.Lock()
	items := q.items
	q.items, q.done = nil, true
	q.notifyLocked()
	q.mu.Unlock()
	for _, hc := range items {
		hc.conn.Close()
	}
}

func (q *connQueue) pop(ctx context.Context) (handed, error) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			hc := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return hc, nil
		}
		if q.done && q.parked == 0 {
			q.mu.Unlock()
			return handed{}, io.EOF
		}
		if q.changed == nil {
			q.changed = make(chan struct{})
		}
		changed := q.changed
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return handed{}, ctx.Err()
		case <-changed:
		}
	}
}

// handOver ends parking, this process having handed over: the idle
// connections still parked go on to the successor as they are (the
// caller owns them), and so do those that arrive later (passesOn).
func (q *connQueue) handOver() []queuedConn {
	parked := q.endParking(parkPassOn)
	out := make([]queuedConn, 0, len(parked))
	for _, pc := range parked {
		if hc, ok := holdFD(pc.fd); ok {
			out = append(out, queuedConn{conn: hc, state: pc.state, idle: true})
		}
	}
	return out
}
