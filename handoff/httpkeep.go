package handoff

import (
	"net"
	"sync"
	"time"
)

// A connection the successor did not take (it was out of descriptors,
// it refused it, the message could not be written) is not closed: its
// client may be sending on it. HTTPServer serves it here again, through
// keptListener, which net/http serves beside the real listeners while
// Shutdown drains, and tries to hand it over again after a pause; a
// request that comes meanwhile is answered here.

// keepRetry is the first pause before a kept connection is offered to
// the successor again; it doubles with each attempt, up to keepRetryMax.
const (
	keepRetry    = 10 * time.Millisecond
	keepRetryMax = time.Second
)

// keep serves c, which the successor did not take for why, here again,
// and reports whether it could: Shutdown is serving kept connections.
// On false the caller closes c.
func (s *HTTPServer) keep(c *httpConn, why error) bool {
	// release left a deadline in the past on the kernel socket; net/http
	// sets its own once it serves the connection again.
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return false
	}
	now := time.Now()
	kc := newHTTPConn(s, c.Conn, c.key)
	kc.awaitingFirst, kc.handedAt, kc.kept = true, now, c.kept+1
	kc.retryAt = now.Add(min(keepRetry<<min(c.kept, 10), keepRetryMax))
	s.mu.Lock()
	kl := s.kept
	if kl != nil {
		// Counted from now on, so that Shutdown waits for it while it
		// waits for net/http to take it from the listener.
		s.conns[kc] = &connTrack{hc: kc}
	}
	s.mu.Unlock()
	if kl == nil || !kl.put(kc) {
		s.forget(kc)
		return false
	}
	if kc.kept == 1 {
		s.keptConns.Add(1)
	}
	s.logger().Debug("the successor did not take an idle connection; serving it here", "remote", c.RemoteAddr(), "attempt", kc.kept, "err", why)
	return true
}

// forget stops tracking c, which nobody serves.
func (s *HTTPServer) forget(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// keptListener hands kept connections back to net/http. Close closes
// those it still holds.
type keptListener struct {
	srv  *HTTPServer
	addr net.Addr

	mu     sync.Mutex
	queue  []net.Conn
	closed bool
	more   chan struct{} // room for one: something was queued, or Close
}

func newKeptListener(srv *HTTPServer) *keptListener {
	return &keptListener{srv: srv, addr: &net.TCPAddr{}, more: make(chan struct{}, 1)}
}

// put queues c for Accept, or reports false once the listener is closed.
func (l *keptListener) put(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.queue = append(l.queue, c)
	l.signal()
	return true
}

func (l *keptListener) signal() {
	select {
	case l.more <- struct{}{}:
	default:
	}
}

// Accept returns the next kept connection.
func (l *keptListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue = l.queue[1:]
			if len(l.queue) > 0 {
				l.signal()
			}
			l.mu.Unlock()
			return c, nil
		}
		l.mu.Unlock()
		<-l.more
	}
}

// Close closes the connections not accepted yet; later puts fail.
func (l *keptListener) Close() error {
	l.mu.Lock()
	queue := l.queue
	l.queue, l.closed = nil, true
	l.signal()
	l.mu.Unlock()
	for _, c := range queue {
		l.srv.forget(c)
		c.(*httpConn).Conn.Close()
	}
	return nil
}

// Addr is a placeholder: kept connections come from the real listeners.
func (l *keptListener) Addr() net.Addr { return l.addr }
