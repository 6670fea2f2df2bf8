package handoff

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// shutdownPollInterval is the longest Shutdown waits between two looks at
// the connections; it starts at a millisecond and doubles up to this.
var shutdownPollInterval = 50 * time.Millisecond

// busyWindow: an idle connection answered less than this ago most likely
// belongs to a client that sends again soon. Shutdown moves it right
// after its next response, while the client reads that, rather than at a
// random point of its cycle, where the client's next request would wait
// for the move; one that stays idle this long moves then.
var busyWindow = 10 * time.Millisecond

// HTTPServer runs a net/http server on an Upgrader's listeners and drains
// it without losing a request, which http.Server.Shutdown alone does not
// promise: it closes idle keep-alive connections while the client's next
// request may already be on its way, and drops a request it reads after
// Shutdown began. HTTPServer's Shutdown instead:
//
//   - hands every idle HTTP/1 connection, and every accepted one whose
//     request it has not started reading, to the successor (when Upgrader
//     is set and a successor has taken over): the client keeps its TCP
//     connection and never notices. A connection that got a response in
//     the last 10 ms moves right after its next one, or once it has been
//     idle that long, so that its client's next request seldom waits for
//     the move. The successor's HTTPServer holds each such connection in
//     an epoll set, with no goroutine, until its client sends (or its
//     idle timeout passes), so that thousands arrive at a few µs each.
//     An idle connection whose net/http goroutine waits for the next
//     request moves without waking that goroutine: its read goes through
//     a gate that reads nothing once the connection has moved. The
//     goroutine, and this process's copy of the connection, are left to
//     the process's exit (which is how 18,000 move in about 150 ms), or
//     to Close; should the client send meanwhile, the goroutine lets go
//     of it without reading. The successor shuts down such a connection
//     before it closes it, so that its client sees the end even while
//     this process still holds its copy;
//   - keeps serving a connection the successor did not take (it was out of
//     descriptors, or refused it), and offers it again after a pause, so
//     that a client that may be sending is never cut off;
//   - answers the next request on any other HTTP/1 connection (TLS, or no
//     successor) with "Connection: close", and closes it only after that
//     response;
//   - closes nothing under a request in flight; a connection a handler
//     hijacks (a WebSocket) is the handler's: HTTPServer neither waits for
//     nor closes it, and it can be handed over with Upgrader.SendConn;
//   - drains HTTP/2 connections (h2c and TLS) in the two phases of RFC
//     9113 §6.8, so that no stream is refused: a GOAWAY that refuses
//     nothing and a PING at once; once the client's ACK shows that every
//     stream it opened has been read (or half the time is up), and the
//     HTTP/1 connections are done, net/http's own GOAWAY; then their
//     streams finish (see docs/http2.md);
//   - closes whatever is left when ctx ends, or, when ctx has no deadline,
//     once the Upgrader's DrainTimeout (DefaultDrainTimeout without an
//     Upgrader) has passed.
//
// Serve installs HTTPServer's ConnContext, ConnState and Handler around
// those of Server, which are still called.
type HTTPServer struct {
	// Server is the server to run; it must be set.
	Server *http.Server
	// Upgrader, when set, lets Shutdown hand idle connections to the
	// successor, so that this process can exit as soon as its in-flight
	// requests are answered.
	Upgrader *Upgrader

	setup     sync.Once
	draining  atomic.Bool
	mu        sync.Mutex
	conns     map[net.Conn]*connTrack
	inPlace   map[*httpConn]struct{} // handed over in place: left to the exit, or Close (under mu)
	listeners map[*trackingListener]struct{}
	kept      *keptListener // while Shutdown serves kept connections
	serving   bool          // a Serve began: it installs the HTTP/2 wrapping

	moved     atomic.Int64  // connections handed to the successor
	keptConns atomic.Int64  // connections the successor did not take at first
	handing   atomic.Int64  // connections on their way to the successor: no answer yet
	waking    atomic.Int64  // connections released whose net/http has not let go yet
	handedAll chan struct{} // room for one: handing dropped to 0, for Shutdown
	waves     []*httpConn   // Shutdown's connections to release, a wave at a time (under mu)
	waveAt    time.Time     // when the last wave went (under mu)

	nextProto    sync.Once
	nextProtoSet chan struct{} // closed once the HTTP/2 wrapping is installed, or cannot be
	injecting    sync.WaitGroup

	// testHookClose, set by tests, runs in Shutdown between serveHanded
	// and closing the listener.
	testHookClose func()
}

// connTrack is what HTTPServer knows of one connection.
type connTrack struct {
	hc  *httpConn   // nil when it cannot be handed over (TLS, a foreign listener)
	h2  atomic.Bool // it speaks HTTP/2
	h2c *h2Conn     // the HTTP/2 connection, when HTTPServer wrapped it (under HTTPServer.mu)
	// unused: net/http has reported no state but StateNew: no request
	// read yet (a TLS one may still be in its handshake).
	unused atomic.Bool
}

type connTrackKey struct{}

func (s *HTTPServer) install() {
	// Under mu, which guards conns and listeners from then on.
	s.mu.Lock()
	s.conns = make(map[net.Conn]*connTrack)
	s.inPlace = make(map[*httpConn]struct{})
	s.listeners = make(map[*trackingListener]struct{})
	s.mu.Unlock()
	s.nextProtoSet = make(chan struct{})
	s.handedAll = make(chan struct{}, 1)
	srv := s.Server
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = s.wrapHandler(h)
	connContext, connState := srv.ConnContext, srv.ConnState
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if connContext != nil {
			ctx = connContext(ctx, c)
		}
		t := &connTrack{}
		t.hc, _ = c.(*httpConn)
		t.unused.Store(true)
		s.mu.Lock()
		s.conns[c] = t
		s.mu.Unlock()
		return context.WithValue(ctx, connTrackKey{}, t)
	}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		// net/http's HTTP/2 server reports the connection it serves:
		// HTTPServer's wrapping of the one net/http accepted.
		switch w := c.(type) {
		case *h2Conn:
			c = w.orig
		case h2TLSConn:
			c = w.orig
		}
		s.connState(c, st)
		if connState != nil {
			connState(c, st)
		}
	}
}

func (s *HTTPServer) wrapHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t, ok := r.Context().Value(connTrackKey{}).(*connTrack); ok {
			switch {
			case r.ProtoMajor >= 2:
				t.h2.Store(true)
			case t.hc != nil:
				t.hc.setPhase(http.StateActive)
			}
			if r.ProtoMajor == 1 && s.draining.Load() && !s.canHandOver(t) {
				w.Header().Set("Connection", "close")
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (s *HTTPServer) connState(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	t := s.conns[c]
	if st == http.StateClosed || st == http.StateHijacked {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	if t != nil && st != http.StateNew {
		t.unused.Store(false)
	}
	if t == nil || t.hc == nil || t.h2.Load() {
		return
	}
	switch st {
	case http.StateNew, http.StateActive, http.StateIdle:
		t.hc.setPhase(st)
		if st != http.StateActive && s.draining.Load() {
			s.release(t)
		}
	}
}

// canHandOver reports whether t's connection can go to the successor.
func (s *HTTPServer) canHandOver(t *connTrack) bool {
	if t.hc == nil || t.h2.Load() {
		return false
	}
	m := s.mover()
	return m != nil && m.takesConns(t.hc.key)
}

func (s *HTTPServer) release(t *connTrack) {
	if s.canHandOver(t) {
		t.hc.release()
	}
}

// handOver passes a connection net/http has let go of to the successor,
// and gives it its fate once the successor has answered (handedOver):
// net/http's goroutine for it does not wait.
func (s *HTTPServer) handOver(c *httpConn) { s.send(c, s.handedOver) }

// send passes c to the successor, counted in handing until done has
// given it its outcome.
func (s *HTTPServer) send(c *httpConn, done func(*httpConn, error)) {
	s.handing.Add(1)
	if err := s.mover().moveConn(c.key, c.Conn.(syscall.Conn), func(err error) { done(c, err) }); err != nil {
		done(c, err)
	}
}

// handedOver closes this process's copy of a connection the successor
// took, and of one whose fate is unknown (the successor may serve it); one
// it did not take is served here again (keep), since its client may be
// sending on it right now.
func (s *HTTPServer) handedOver(c *httpConn, err error) {
	defer s.handingDone()
	switch {
	case err == nil:
		s.moved.Add(1)
	case errors.Is(err, ErrConnUnknown):
		s.logger().Warn("an idle connection went to the successor, which did not say whether it took it; closing it here", "remote", c.RemoteAddr(), "err", err)
	case s.keep(c, err):
		return
	default:
		s.logger().Warn("could not hand an idle connection to the successor, nor serve it here any more; closing it", "remote", c.RemoteAddr(), "err", err)
	}
	c.Conn.Close()
}

// handingDone counts one connection's handover settled.
func (s *HTTPServer) handingDone() {
	if s.handing.Add(-1) == 0 {
		select {
		case s.handedAll <- struct{}{}:
		default:
		}
	}
}

// moveInPlace hands c, whose net/http goroutine stays parked in the gate,
// to the successor (httpConn.moveInPlace marked it).
func (s *HTTPServer) moveInPlace(c *httpConn) { s.send(c, s.movedInPlace) }

// movedInPlace settles a move in place. Taken, the connection is the
// successor's: this process forgets it, but leaves its copy, and net/http's
// goroutine parked in the gate, to the process's exit (or Close). Of
// unknown fate, it is closed here. Refused, net/http serves it on as if
// nothing happened: its goroutine never stopped waiting.
func (s *HTTPServer) movedInPlace(c *httpConn, err error) {
	defer s.handingDone()
	taken := err == nil || errors.Is(err, ErrConnUnknown)
	c.settleInPlace(taken, time.Now())
	if !taken {
		s.logger().Debug("the successor did not take an idle connection; serving it here", "remote", c.RemoteAddr(), "err", err)
		return
	}
	s.mu.Lock()
	delete(s.conns, c)
	if err == nil {
		s.inPlace[c] = struct{}{}
	}
	s.mu.Unlock()
	if err != nil {
		s.logger().Warn("an idle connection went to the successor, which did not say whether it took it; closing it here", "remote", c.RemoteAddr(), "err", err)
		c.Conn.Close() // its goroutine leaves the gate, and net/http lets go of it
		return
	}
	s.moved.Add(1)
}

// dropInPlace forgets c, moved in place, whose copy its Close closes now.
func (s *HTTPServer) dropInPlace(c *httpConn) {
	s.mu.Lock()
	delete(s.inPlace, c)
	s.mu.Unlock()
}

func (s *HTTPServer) logger() *slog.Logger {
	if m := s.mover(); m != nil {
		return m.logger()
	}
	return slog.New(slog.DiscardHandler)
}

// connMover is what HTTPServer needs of an Upgrader: all it touches of
// the handover.
type connMover interface {
	// connKey is the socket key of ln, one of the Upgrader's listeners.
	connKey(ln net.Listener) (string, bool)
	// takesConns reports whether a successor takes connections for key.
	takesConns(key string) bool
	// waitLink waits until the link to the successor is open, if there
	// is a successor, or until ctx ends.
	waitLink(ctx context.Context)
	// moveConn hands a connection accepted on key to the successor, and
	// calls then with the outcome (unless it fails itself); the
	// descriptor stays open until then.
	moveConn(key string, sc syscall.Conn, then func(error)) error
	// stopped reports whether the Upgrader closed the listeners.
	stopped() bool
	// predecessorSending reports whether a predecessor may still hand
	// connections over.
	predecessorSending() bool
	logger() *slog.Logger
	drainTimeout() time.Duration
}

// mover is the Upgrader as a connMover, or nil.
func (s *HTTPServer) mover() connMover {
	if s.Upgrader == nil {
		return nil
	}
	return s.Upgrader
}

// Serve serves HTTP on ln until Shutdown or Close, or until a successor
// takes over and the Upgrader closes ln; then it returns
// http.ErrServerClosed.
func (s *HTTPServer) Serve(ln net.Listener) error {
	return s.serve(ln, true, func(l net.Listener) error { return s.Server.Serve(l) })
}

// ServeTLS is Serve over TLS (see http.Server.ServeTLS). TLS connections
// are drained, not handed over: their session keys cannot leave this
// process.
func (s *HTTPServer) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	return s.serve(ln, false, func(l net.Listener) error { return s.Server.ServeTLS(l, certFile, keyFile) })
}

func (s *HTTPServer) serve(ln net.Listener, handoff bool, serve func(net.Listener) error) error {
	s.setup.Do(s.install)
	tl := &trackingListener{Listener: ln, srv: s}
	if m := s.mover(); handoff && m != nil {
		tl.key, _ = m.connKey(ln)
	}
	if hl, ok := ln.(*listener); ok && tl.key != "" {
		// So that Accept can tell a handed-over connection, and idle
		// ones are parked until their client sends.
		hl.trackHanded(s.idleTimeout())
	}
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	first := !s.serving
	s.serving = true
	s.listeners[tl] = struct{}{}
	s.mu.Unlock()
	if first {
		// Its first Accept installs the HTTP/2 wrapping, or, should
		// it fail before, this.
		defer s.installNextProto(false)
	} else {
		// net/http reads TLSNextProto as a Serve starts: not while the
		// first one changes it.
		<-s.nextProtoSet
	}
	defer func() {
		s.mu.Lock()
		delete(s.listeners, tl)
		s.mu.Unlock()
	}()
	err := serve(tl)
	if errors.Is(err, net.ErrClosed) && s.stopped() {
		err = http.ErrServerClosed
	}
	return err
}

// stopped reports whether the listeners were closed on purpose: by
// Shutdown, or by the Upgrader at the handover or on Stop.
func (s *HTTPServer) stopped() bool {
	m := s.mover()
	return s.draining.Load() || (m != nil && m.stopped())
}

// Shutdown stops accepting and drains as the type's documentation says.
// It returns once every connection is closed or handed over, or when ctx
// ends (then with ctx's error, after closing what was left). This
// process's copies of the connections handed over in place stay open,
// and net/http's goroutines parked on them, until the process exits or
// Close is called; a process that goes on running after the handover
// calls Close to release them.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	s.setup.Do(s.install)
	m := s.mover()
	if _, ok := ctx.Deadline(); !ok {
		drain := DefaultDrainTimeout
		if m != nil {
			drain = m.drainTimeout()
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, drain)
		defer cancel()
	}
	// Exit closes a moment before the link to the successor opens. Until
	// it has, net/http goes on serving the idle connections here: one
	// released now would hold its client's next request until then.
	if m != nil {
		m.waitLink(ctx)
	}
	start := time.Now()
	// net/http reads TLSNextProto as a Serve starts: not while a first
	// Accept wraps it (installNextProto), which from now on none does.
	s.installNextProto(false)
	kl := newKeptListener(s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.Server.Serve(kl)
	}()
	defer func() {
		kl.Close() // should Serve have found the server shut down already
		<-served
	}()
	s.mu.Lock()
	s.draining.Store(true)
	s.kept = kl
	listeners := s.listeners
	s.listeners = map[*trackingListener]struct{}{}
	s.mu.Unlock()
	for tl := range listeners {
		s.serveHanded(tl, kl)
		if s.testHookClose != nil {
			s.testHookClose()
		}
		tl.Close()
	}
	// Phase 1 of the HTTP/2 drain at once: its clients move to the
	// successor while the HTTP/1 ones are handed over.
	s.startHTTP2Drain()
	defer s.injecting.Wait() // bounded: every connection is closed by then

	// HTTP/1 first, and HTTP/2's phase 1: net/http's own Shutdown would
	// close idle connections, drop requests it reads from now on, and
	// refuse HTTP/2 streams still on their way.
	d, _ := ctx.Deadline()
	http1Done := time.NewTimer(time.Until(d) / 2)
	defer http1Done.Stop()
	interval := time.Millisecond
	// A predecessor that is still draining may yet hand connections over
	// (which go on to the successor, if there is one): exiting before it
	// is done would cut them.
	for {
		open, more := s.releaseHTTP1()
		if open == 0 && s.handing.Load() == 0 && s.http2Draining() == 0 && (m == nil || !m.predecessorSending()) {
			break
		}
		wait := interval
		if more {
			wait = time.Millisecond // the next wave
		} else {
			interval = min(2*interval, shutdownPollInterval)
		}
		select {
		case <-ctx.Done():
		case <-http1Done.C:
		case <-s.handedAll:
			continue
		case <-time.After(wait):
			continue
		}
		break
	}
	s.closeUnused()
	if moved, kept := s.moved.Load(), s.keptConns.Load(); moved+kept > 0 {
		s.logger().Info("handed over idle connections to the successor", "moved", moved, "kept", kept, "in", time.Since(start))
	}
	err := s.Server.Shutdown(ctx)
	if err != nil {
		s.Server.Close()
	}
	return err
}

// serveHanded seals tl's listener and serves through kl the handed-over
// connections it still holds, queued or parked until their client sends,
// which closing the listener would close: their clients may be sending.
// Sealed, it takes no more (the predecessor keeps those, or they go on to
// the successor), so that closing it next closes none. They are idle
// keep-alive connections like any other here: they move on to a
// successor, or get their next request answered with "Connection:
// close". (Should the Upgrader's handover take them first, it forwards
// them itself.)
func (s *HTTPServer) serveHanded(tl *trackingListener, kl *keptListener) {
	hl, ok := tl.Listener.(*listener)
	if !ok || tl.key == "" {
		return
	}
	for _, h := range hl.sealHanded() {
		hc := s.handedConn(h.conn, tl.key, h.at)
		s.mu.Lock()
		s.conns[hc] = &connTrack{hc: hc}
		s.mu.Unlock()
		if !kl.put(hc) {
			s.forget(hc)
			h.conn.Close()
		}
	}
}

// releaseHTTP1 asks idle HTTP/1 connections to go to the successor, in
// waves (more reports that others wait for the next), and returns how
// many HTTP/1 connections are still open. Each wave goes once the last
// has let go (waking): released all at once, 18,000 of net/http's
// goroutines would wake together, and the Go scheduler, which gives the
// link's writer and ack reader no precedence, would run most of them
// before the first message left. One released and then answered in the
// last busyWindow goes after its next response (connState releases it
// then). The connections are listed once per round of waves, not at
// every look.
func (s *HTTPServer) releaseHTTP1() (open int, more bool) {
	now := time.Now()
	s.mu.Lock()
	var listed []*httpConn
	if len(s.waves) == 0 {
		listed, open = s.releasableLocked()
	} else {
		open = len(s.conns) // no fewer HTTP/1 ones than that: more waves to come
	}
	s.mu.Unlock()
	// Those whose net/http goroutine waits in the gate go in place, all
	// at once: none wakes, so no wave bounds them. The rest are released
	// in waves.
	var rest []*httpConn
	for _, hc := range listed {
		if hc.moveInPlace(now, busyWindow) {
			s.moveInPlace(hc)
		} else {
			rest = append(rest, hc)
		}
	}
	s.mu.Lock()
	if listed != nil {
		s.waves = rest
	}
	// The next wave once the last has woken: the goroutines that run at
	// once stay few. Should the count ever be off, a wave still goes
	// every shutdownPollInterval: no connection waits for it to the
	// deadline.
	room := releaseWave - int(s.waking.Load())
	if room <= 0 && now.Sub(s.waveAt) >= shutdownPollInterval {
		room = releaseWave
	}
	release := s.waves[:min(len(s.waves), max(room, 0))]
	if len(release) > 0 {
		s.waveAt = now
	}
	s.waves = s.waves[len(release):]
	more = len(s.waves) > 0
	s.mu.Unlock()
	// Outside mu: each connection released now soon closes, and its
	// ConnState takes mu.
	for _, hc := range release {
		hc.releaseIdle(now, busyWindow)
	}
	return open, more
}

// releasableLocked lists the HTTP/1 connections that may go to the
// successor and are not asked to yet, and counts the open HTTP/1 ones.
func (s *HTTPServer) releasableLocked() (release []*httpConn, open int) {
	m := s.mover()
	takes := map[string]bool{}
	for _, t := range s.conns {
		if t.h2.Load() || (t.hc != nil && t.hc.inPlace.Load()) {
			continue // moving in place: handing counts it
		}
		open++
		if t.hc == nil || m == nil || t.hc.asked.Load() {
			continue
		}
		ok, seen := takes[t.hc.key]
		if !seen {
			ok = m.takesConns(t.hc.key)
			takes[t.hc.key] = ok
		}
		if ok {
			release = append(release, t.hc)
		}
	}
	return release, open
}

// releaseWave bounds the connections released whose net/http goroutine
// has not let go yet: two messages' worth.
const releaseWave = 2 * wire.MaxFDs

// closeUnused closes the HTTP/1 connections that have sent no request and
// will not go to the successor, as net/http's Shutdown closes the idle
// ones right after: it counts one that sent nothing as idle only once it
// is 5 s old, so that on a drain shorter than about 12 s such a
// connection (a browser's preconnect) stayed open past half the deadline,
// and to the deadline itself, Shutdown then returning ctx's error.
func (s *HTTPServer) closeUnused() {
	var unused []net.Conn
	s.mu.Lock()
	for c, t := range s.conns {
		if t.unused.Load() && !t.h2.Load() && !s.canHandOver(t) {
			unused = append(unused, c)
		}
	}
	s.mu.Unlock()
	for _, c := range unused {
		c.Close() // net/http's read fails, and it lets the connection go
	}
}

// installNextProto wraps net/http's HTTP/2 handlers (when wrap is set)
// the first time it is called.
func (s *HTTPServer) installNextProto(wrap bool) {
	s.nextProto.Do(func() {
		if wrap {
			s.wrapHTTP2()
		}
		close(s.nextProtoSet)
	})
}

// Close closes the server and every connection at once, and this
// process's copies of those Shutdown handed over in place (the successor
// serves them on).
func (s *HTTPServer) Close() error {
	s.draining.Store(true)
	err := s.Server.Close()
	s.mu.Lock()
	inPlace := s.inPlace
	s.inPlace = map[*httpConn]struct{}{}
	s.mu.Unlock()
	for c := range inPlace {
		c.Conn.Close() // net/http's goroutine, parked in the gate, ends
	}
	return err
}

// trackingListener wraps each kernel connection it accepts in an httpConn
// that can be handed over, when key says which socket it came from.
type trackingListener struct {
	net.Listener
	srv *HTTPServer
	key string // "" when its connections stay in this process
}

// Close closes the listener. Shutdown closes it before net/http's Shutdown
// does again (and Stop or a handover may have closed the socket first), so
// a listener that is closed already is no error.
func (l *trackingListener) Close() error {
	if err := l.Listener.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (l *trackingListener) Accept() (net.Conn, error) {
	l.srv.installNextProto(true)
	c, err := l.Listener.Accept()
	if err != nil || l.key == "" {
		return c, err
	}
	if _, ok := c.(syscall.Conn); !ok {
		return c, nil
	}
	if hl, ok := l.Listener.(*listener); ok {
		if at, handed := hl.handedAt(c); handed {
			return l.srv.handedConn(c, l.key, at), nil
		}
	}
	return newHTTPConn(l.srv, c, l.key), nil
}

// handedConn wraps c, an idle keep-alive connection from the predecessor
// that arrived at at. Its next request may be a long way off, and
// net/http, which sees a new connection, would give it only
// ReadHeaderTimeout: until its first byte it has the idle timeout,
// counted from at. net/http may set no read deadline before the first
// request (no ReadHeaderTimeout), so it is set here. (Should that fail,
// the first Read will too.)
func (s *HTTPServer) handedConn(c net.Conn, key string, at time.Time) *httpConn {
	hc := newHTTPConn(s, c, key)
	hc.awaitingFirst, hc.handedAt, hc.handedIn = true, at, true
	c.SetReadDeadline(hc.kernelDeadlineLocked())
	return hc
}
