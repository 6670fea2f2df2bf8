package handoff

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
)

// httpConn wraps a connection served by net/http so that HTTPServer can
// take it back from net/http at a request boundary and hand it, with no
// byte of the next request consumed, to the successor.
//
// The safe moment is a Read that net/http makes while the connection is
// idle (between requests, or accepted with no request read yet), into the
// start of its request buffer, with nothing read since the last response.
// Then net/http holds no unread bytes: everything the client sent since is
// still in the kernel and goes to the successor with the socket. release
// makes that Read (or a blocked one, by a deadline in the past) return
// io.EOF, which net/http treats as the client going away: it closes the
// connection without a reply, and Close hands it over instead.
type httpConn struct {
	net.Conn // the kernel connection
	srv      *HTTPServer
	key      string // socket key of the listener that accepted it

	mu            sync.Mutex
	phase         http.ConnState // StateNew, StateActive or StateIdle
	readSinceIdle bool           // a Read returned data since phase became idle (or new)
	unclean       bool           // a steal hit a Read elsewhere; wait for the next idle
	bufStart      *byte          // start of net/http's request buffer: its first Read's
	stealing      bool           // release asked; the read deadline is in the past
	asked         atomic.Bool    // stealing, readable without mu: the drain's scan skips the connection
	stolen        bool           // net/http was told EOF; Close hands the conn over
	readDeadline  time.Time      // what net/http asked for
	idleSince     time.Time      // when the last response was done
	// awaitingFirst: a handed-over connection that has not sent a byte
	// here yet. It is an idle keep-alive connection, not a new one: until
	// its first byte it gets net/http's idle timeout, not the header
	// deadline net/http set at accept (handedAt), which then counts
	// from that first byte.
	awaitingFirst bool
	handedAt      time.Time
	// A connection the successor did not take is served here again
	// (HTTPServer.keep): kept counts the attempts, and release waits
	// until retryAt before the next.
	kept    int
	retryAt time.Time
	// handedIn: it came from a predecessor, which may hold a copy until
	// it exits: closing it shuts it down first, so that its client sees
	// the end at once.
	handedIn bool

	// The gate (gatedRead): net/http's read of the next request, through
	// the netpoller, with mu held around each read(2), so that Shutdown
	// can hand the connection over in place (moveInPlace) while net/http's
	// goroutine stays parked: it never reads a byte after that. Its
	// goroutine and this process's copy are then left to the process's
	// exit, or HTTPServer.Close: tearing down 18,000 of them is most of
	// what a move would cost this process otherwise.
	rc         syscall.RawConn    // the kernel connection's; nil: no gate
	gateFn     func(uintptr) bool // gateStep, bound once
	gp         []byte             // the gated read's buffer and outcome: its goroutine's alone
	gn         int
	gerr       error
	gmoving    bool
	inGate     bool          // a clean read waits in the gate with nothing read
	moving     bool          // handed over in place: the gate reads nothing
	movedIn    bool          // and the successor took it (or may have)
	readerDone bool          // net/http's goroutine has left the gate since: its Close closes
	outcome    chan struct{} // closed once a move in place is settled
	inPlace    atomic.Bool   // moving or moved in place: the drain's scan skips it
}

// newHTTPConn wraps c, a kernel connection from the listener with key.
func newHTTPConn(s *HTTPServer, c net.Conn, key string) *httpConn {
	hc := &httpConn{Conn: c, srv: s, key: key, phase: http.StateNew}
	if sc, ok := c.(syscall.Conn); ok && gateReads && key != "" {
		if rc, err := sc.SyscallConn(); err == nil {
			hc.rc = rc
			hc.gateFn = hc.gateStep
		}
	}
	return hc
}

// idleTimeout is how long net/http keeps an idle keep-alive connection
// (0: no limit).
func (s *HTTPServer) idleTimeout() time.Duration {
	idle := s.Server.IdleTimeout
	if idle == 0 {
		idle = s.Server.ReadTimeout
	}
	return max(idle, 0)
}

// kernelDeadlineLocked is the read deadline the kernel socket should
// have: net/http's, except while a handed-over connection is idle.
func (c *httpConn) kernelDeadlineLocked() time.Time {
	if !c.awaitingFirst {
		return c.readDeadline
	}
	idle := c.srv.idleTimeout()
	if idle <= 0 {
		return time.Time{}
	}
	return c.handedAt.Add(idle)
}

// Read passes reads through, except at a safe moment while release is
// pending.
func (c *httpConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.bufStart == nil && len(p) > 0 {
		c.bufStart = &p[0]
	}
	clean := c.cleanRead(p)
	if c.stealing && clean {
		c.stolen = true
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.mu.Unlock()
	for {
		var n int
		var err error
		if clean && c.rc != nil {
			n, err = c.gatedRead(p)
		} else {
			n, err = c.Conn.Read(p)
		}
		c.mu.Lock()
		if n > 0 && c.awaitingFirst {
			// The request has begun: net/http's header budget starts now.
			c.awaitingFirst = false
			if !c.readDeadline.IsZero() {
				c.readDeadline = time.Now().Add(c.readDeadline.Sub(c.handedAt))
			}
			if !c.stealing {
				c.Conn.SetReadDeadline(c.readDeadline)
			}
		}
		if n > 0 {
			c.readSinceIdle = true
			c.cancelStealLocked() // the request came first: serve it here
			c.mu.Unlock()
			return n, err
		}
		if c.stealing && ctl.IsTimeout(err) {
			if clean {
				c.stolen = true
				c.mu.Unlock()
				return 0, io.EOF
			}
			// Our deadline hit a read in the middle of a request:
			// undo it and read on as if nothing happened.
			c.cancelStealLocked()
			c.unclean = true
			c.mu.Unlock()
			continue
		}
		c.mu.Unlock()
		return n, err
	}
}

// gatedRead reads into p through the gate: a read(2) under mu each time
// the netpoller says the socket is readable, none once the connection is
// handed over in place. Then it waits for the move's outcome: io.EOF if
// the successor took it (net/http lets go of it, and never read a byte
// of it), a read as before if not.
func (c *httpConn) gatedRead(p []byte) (int, error) {
	for {
		c.gp, c.gn, c.gerr, c.gmoving = p, 0, nil, false
		c.mu.Lock()
		c.inGate = true
		c.mu.Unlock()
		err := c.rc.Read(c.gateFn)
		c.mu.Lock()
		c.inGate = false
		if c.movedIn {
			c.readerDone = true
		}
		moving, outcome := c.gmoving, c.outcome
		c.mu.Unlock()
		c.gp = nil
		if err != nil {
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
		}
		if moving {
			<-outcome // within a step: the link settles every connection by then
			c.mu.Lock()
			taken := c.movedIn
			c.readerDone = taken
			c.mu.Unlock()
			if taken {
				return 0, io.EOF
			}
			continue
		}
		if c.gerr != nil {
			return c.gn, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", c.gerr)}
		}
		if c.gn == 0 {
			return 0, io.EOF
		}
		return c.gn, nil
	}
}

// gateStep is the gate's one try: false while nothing has arrived.
func (c *httpConn) gateStep(fd uintptr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moving {
		c.gmoving = true
		return true
	}
	n, err := readFD(fd, c.gp)
	if err == errAgain {
		return false
	}
	c.inGate = false // read, or failed: no longer movable
	c.gn, c.gerr = n, err
	return true
}

// moveInPlace marks c handed over in place, if net/http's goroutine
// waits in the gate with nothing read and release would let it go; the
// caller then sends it (HTTPServer.movedInPlace gets the outcome).
func (c *httpConn) moveInPlace(now time.Time, busy time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.inGate || c.moving || c.stealing || c.stolen || c.unclean || c.readSinceIdle ||
		c.phase == http.StateActive || now.Before(c.retryAt) ||
		(c.phase == http.StateIdle && now.Sub(c.idleSince) < busy) {
		return false
	}
	c.moving = true
	c.outcome = make(chan struct{})
	c.inPlace.Store(true)
	return true
}

// settleInPlace gives a move in place its outcome: taken, the successor
// has the connection (or may have); not, it is served here on, and
// offered again after a while.
func (c *httpConn) settleInPlace(taken bool, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if taken {
		c.movedIn = true
	} else {
		c.moving = false
		c.inPlace.Store(false)
		c.retryAt = now.Add(min(keepRetry<<min(c.kept, 10), keepRetryMax))
		c.kept++
	}
	close(c.outcome)
}

// cleanRead reports whether a Read into p is net/http waiting for the next
// request with nothing buffered.
func (c *httpConn) cleanRead(p []byte) bool {
	return (c.phase == http.StateIdle || c.phase == http.StateNew) &&
		!c.readSinceIdle && !c.unclean && len(p) > 0 && &p[0] == c.bufStart
}

func (c *httpConn) cancelStealLocked() {
	if c.stealing {
		c.stealing = false
		c.unask()
		c.Conn.SetReadDeadline(c.kernelDeadlineLocked())
	}
}

// release asks net/http to let go of the connection at the next safe
// moment. It does nothing while a request is in flight; HTTPServer calls
// it again when the connection goes idle.
func (c *httpConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseLocked(time.Now())
}

// releaseIdle is release, unless the connection got a response less
// than busy before now: its client most likely sends again soon.
func (c *httpConn) releaseIdle(now time.Time, busy time.Duration) {
	if c.asked.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stealing || c.stolen || (c.phase == http.StateIdle && now.Sub(c.idleSince) < busy) {
		return
	}
	c.releaseLocked(now)
}

func (c *httpConn) releaseLocked(now time.Time) {
	if c.stealing || c.stolen || c.unclean || c.readSinceIdle || c.phase == http.StateActive || now.Before(c.retryAt) {
		return
	}
	c.stealing = true
	c.asked.Store(true)
	c.srv.waking.Add(1)
	c.Conn.SetReadDeadline(longAgo) // wakes a Read blocked waiting for the client
}

// unask counts c out of those released and not closed yet (waking).
func (c *httpConn) unask() {
	if c.asked.Swap(false) {
		c.srv.waking.Add(-1)
	}
}

// setPhase follows net/http's view of the connection; a handler starting
// marks it active too, since a pipelined request served from net/http's
// buffer brings no StateActive.
func (c *httpConn) setPhase(st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase = st
	if st == http.StateIdle {
		c.idleSince = time.Now()
		c.readSinceIdle, c.unclean = false, false
	}
}

// SetReadDeadline records net/http's deadline; while a release is pending
// the kernel keeps the past one.
func (c *httpConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	if c.stealing {
		return nil
	}
	return c.Conn.SetReadDeadline(c.kernelDeadlineLocked())
}

func (c *httpConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// Close hands a released connection to the successor (net/http believes
// the client left), and closes every other. HTTPServer closes this
// process's copy of a released one once the successor has answered
// (handedOver).
//
// One handed over in place stays open while net/http's goroutine is
// parked in the gate (net/http's Shutdown closes idle connections): that
// goroutine, and this copy, are left to the process's exit or
// HTTPServer.Close. Once the goroutine has left the gate, Close closes
// the copy. One that came from a predecessor is shut down before it is
// closed: the predecessor may still hold a copy, and its client must see
// the end now.
func (c *httpConn) Close() error {
	c.mu.Lock()
	stolen := c.stolen
	c.stolen = false
	c.unask()
	movedIn, readerDone := c.movedIn, c.readerDone
	// Not while a move in place waits for its answer: the successor may
	// have the connection already.
	shutDown := c.handedIn && !c.moving
	c.mu.Unlock()
	switch {
	case stolen:
		c.srv.handOver(c)
		return nil
	case movedIn && !readerDone:
		return nil
	case movedIn:
		c.srv.dropInPlace(c)
	case shutDown:
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	return c.Conn.Close()
}

// ReadFrom keeps net/http's sendfile and splice paths when the kernel
// connection has them.
func (c *httpConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// SyscallConn is the kernel connection's, so that a connection a handler
// hijacks (a WebSocket) can be handed over with Upgrader.SendConn.
func (c *httpConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// CloseWrite lets net/http half-close as it does on a *net.TCPConn.
func (c *httpConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
