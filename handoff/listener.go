package handoff

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
)

// listener is what Listen returns: the kernel listening socket, plus the
// connections a predecessor hands over for it, which Accept yields as if
// they had just been accepted.
type listener struct {
	net.Listener // *net.TCPListener or *net.UnixListener
	key          string

	mu       sync.Mutex
	queue    []handed               // handed-over connections not yet accepted
	woken    bool                   // the deadline was set in the past to wake Accept
	handed   map[net.Conn]time.Time // after trackHanded: handed-over connections Accept returned, until handedAt asks
	idle     time.Duration          // after trackHanded: the server's idle timeout, for parked connections
	lot      *parkingLot            // after trackHanded: idle connections not yet adopted (parking_linux.go)
	paused   chan struct{}          // while a canary window runs: closed by resume or Close
	injected chan struct{}          // wakes an Accept that waits while paused; room for one
	// sealed: it queues no more handed-over connections, and what it
	// held went to whoever sealed it (seal). Accept still returns, from
	// the kernel, what it would.
	sealed   bool
	closed   bool          // detached: Accept returns net.ErrClosed (implies sealed)
	inKernel int           // Accept calls waiting in the kernel
	left     chan struct{} // closed when inKernel drops to 0, for pause
}

// pauseWait bounds pause's wait for an Accept in the kernel to return,
// which the deadline it sets makes prompt.
const pauseWait = time.Second

// deadliner is the part of *net.TCPListener and *net.UnixListener that
// lets inject interrupt a blocked Accept.
type deadliner interface{ SetDeadline(time.Time) error }

func newListener(ln net.Listener, key string) *listener {
	return &listener{Listener: ln, key: key, injected: make(chan struct{}, 1)}
}

// Accept waits for and returns the next connection: a handed-over one if
// any is queued, else one from the kernel's accept queue. While paused it
// takes none from the kernel: they wait in its queue for the successor,
// or for this process again after a rollback. Handed-over ones it still
// yields: they were sent to this process.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			// Detached: the kernel's queue is the successor's now (or
			// nobody's), even before this copy of the socket closes.
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
		if paused := l.paused; paused != nil && len(l.queue) == 0 {
			l.mu.Unlock()
			select {
			case <-paused:
			case <-l.injected:
			}
			continue
		}
		if len(l.queue) > 0 {
			h := l.queue[0]
			l.queue = l.queue[1:]
			if l.handed != nil {
				l.handed[h.conn] = h.at
			}
			l.mu.Unlock()
			return h.conn, nil
		}
		if l.woken {
			l.woken = false
			l.Listener.(deadliner).SetDeadline(time.Time{})
		}
		l.inKernel++
		l.mu.Unlock()

		c, err := l.Listener.Accept()
		l.mu.Lock()
		if l.inKernel--; l.inKernel == 0 && l.left != nil {
			close(l.left)
			l.left = nil
		}
		l.mu.Unlock()
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			continue // woken by inject, pause or detach
		}
		return c, err
	}
}

// handed is a handed-over connection queued for Accept (and when it
// arrived) or for AcceptConn (and the state it came with).
type handed struct {
	conn  net.Conn
	at    time.Time
	state []byte
}

// trackHanded makes Accept remember which connections it returned from
// the handed-over ones, for handedAt (HTTPServer asks of each), and lets
// handed-over idle connections be parked until their client sends: idle
// is the server's idle timeout, at which a parked one is queued anyway
// (0: none).
func (l *listener) trackHanded(idle time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handed == nil {
		l.handed = make(map[net.Conn]time.Time)
		l.idle = idle
	}
}

// handedAt reports when c arrived, if Accept returned it from the
// handed-over ones (an idle keep-alive connection, most likely), and
// forgets it.
func (l *listener) handedAt(c net.Conn) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.handed[c]
	delete(l.handed, c)
	return at, ok
}

// inject queues a handed-over connection for Accept and wakes it. It
// reports false, and leaves c to the caller, if the listener is sealed.
func (l *listener) inject(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sealed {
		return false
	}
	l.queueLocked(handed{conn: c, at: time.Now()})
	return true
}

func (l *listener) queueLocked(h handed) {
	l.queue = append(l.queue, h)
	l.woken = true
	l.Listener.(deadliner).SetDeadline(longAgo)
	select {
	case l.injected <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// park takes fd, an idle connection handed over whose client speaks
// next, to be adopted and queued once it is readable (parking_linux.go).
// It reports false, and leaves fd to the caller, when the listener is
// sealed or HTTPServer does not serve it.
func (l *listener) park(fd int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sealed || l.handed == nil {
		return false
	}
	return parkIn(&l.lot, l.idle, l.unpark, fd, nil)
}

// unpark adopts a parked connection and queues it, even once the listener
// is sealed: seal, which joins the lot, collects it then. It reports
// false, and leaves fd to the lot, when it cannot be adopted now (out of
// descriptors).
func (l *listener) unpark(pc parkedConn) bool {
	c, err := ctl.TryAdoptConn(pc.fd)
	if err != nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queueLocked(handed{conn: c, at: pc.at})
	return true
}

// adoptParked adopts connections taken from the lot, closing any that
// cannot be (the process is out of descriptors): nobody could serve them.
func adoptParked(parked []parkedConn) []handed {
	out := make([]handed, 0, len(parked))
	for _, pc := range parked {
		if c, err := ctl.AdoptConn(pc.fd); err == nil {
			out = append(out, handed{conn: c, at: pc.at, state: pc.state})
		}
	}
	return out
}

// pause stops Accept from taking connections until resume or Close. It
// wakes an Accept that waits in the kernel and returns once that has
// come back (bounded by pauseWait), so that no connection made after
// pause returns is accepted here: one the kernel had already given that
// Accept is this process's to serve.
func (l *listener) pause() {
	l.mu.Lock()
	if l.closed || l.paused != nil {
		l.mu.Unlock()
		return
	}
	l.paused = make(chan struct{})
	l.woken = true
	l.Listener.(deadliner).SetDeadline(longAgo)
	left := l.waitKernelLocked()
	l.mu.Unlock()
	waitLeft(left)
}

// waitKernelLocked returns a channel closed once no Accept waits in the
// kernel, or nil if none does. l.mu is held.
func (l *listener) waitKernelLocked() chan struct{} {
	if l.inKernel == 0 {
		return nil
	}
	if l.left == nil {
		l.left = make(chan struct{})
	}
	return l.left
}

// waitLeft waits, at most pauseWait, for left (nil: nothing to wait for).
func waitLeft(left chan struct{}) {
	if left == nil {
		return
	}
	t := time.NewTimer(pauseWait)
	defer t.Stop()
	select {
	case <-left:
	case <-t.C:
	}
}

// resume lets Accept take connections again.
func (l *listener) resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unpauseLocked()
}

func (l *listener) unpauseLocked() {
	if l.paused != nil {
		close(l.paused)
		l.paused = nil
	}
}

// Close closes this process's copy of the socket. Handed-over
// connections that were never accepted are closed too.
func (l *listener) Close() error {
	for _, c := range l.detach() {
		c.Close()
	}
	return l.Listener.Close()
}

// heldConn is a handed-over connection this process holds but does not
// serve, to pass on to the successor (or close): an adopted one, or the
// bare descriptor of a parked one (heldFD).
type heldConn interface {
	syscall.Conn
	io.Closer
}

// sealHanded seals the listener and returns, to serve, the handed-over
// connections it held, parked ones adopted, with when each arrived; the
// caller owns them. None can arrive after (inject and park refuse them),
// so that closing the listener then closes none a client may be sending
// on.
func (l *listener) sealHanded() []handed {
	queue, parked := l.seal()
	return append(queue, adoptParked(parked)...)
}

// seal stops queueing handed-over connections, and returns those that
// were never accepted and the parked ones, which the caller now owns.
// Accept goes on as before, with none to yield.
func (l *listener) seal() ([]handed, []parkedConn) {
	l.mu.Lock()
	l.sealed = true
	lot := l.lot
	l.lot = nil
	l.mu.Unlock()
	var parked []parkedConn
	if lot != nil {
		parked = lot.stop() // joins the lot, which may queue more meanwhile
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.queue
	l.queue = nil
	return q, parked
}

// sealHeld is seal, with what it returns as heldConns, to pass on.
func (l *listener) sealHeld() []heldConn {
	queue, parked := l.seal()
	return append(held(queue), heldParked(parked)...)
}

// detach seals the listener and closes it to Accept, and returns the
// handed-over connections it held, which the caller now owns.
func (l *listener) detach() []heldConn {
	l.mu.Lock()
	l.closed = true
	// Wake an Accept that waits, paused or in the kernel: it finds the
	// listener closed, and takes nothing more from the kernel's queue.
	l.unpauseLocked()
	l.woken = true
	l.Listener.(deadliner).SetDeadline(longAgo)
	l.mu.Unlock()
	return l.sealHeld()
}

// held is the queued connections as heldConns. Each is a kernel
// connection (ctl.AdoptConn's); one that were not is closed.
func held(hs []handed) []heldConn {
	out := make([]heldConn, 0, len(hs))
	for _, h := range hs {
		if c, ok := h.conn.(heldConn); ok {
			out = append(out, c)
		} else {
			h.conn.Close()
		}
	}
	return out
}

// SyscallConn gives access to the kernel socket, so that a caller can
// duplicate it (for a child process) without switching it to blocking
// mode as File would.
func (l *listener) SyscallConn() (syscall.RawConn, error) {
	return l.Listener.(syscall.Conn).SyscallConn()
}

// longAgo is a deadline in the past: setting it wakes a blocked call.
var longAgo = time.Unix(1, 0)
