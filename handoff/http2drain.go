package handoff

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// The HTTP/2 drain of RFC 9113 §6.8, without a fork of net/http's HTTP/2
// server. That server, told to shut down, sends one GOAWAY whose
// last-stream-id is the highest stream it has read; a stream the client
// sent meanwhile is refused (ignored, then reported to the client by that
// GOAWAY). HTTPServer instead wraps each HTTP/2 connection in an h2Conn
// that knows the frame boundaries of both directions, and drains in two
// phases:
//
//  1. at a frame boundary of what the server writes, it slips in a GOAWAY
//     with last-stream-id 2^31-1 (no new streams, please; none refused)
//     and a PING whose opaque data is the library's;
//  2. the client answers the PING after it has read the GOAWAY, so every
//     stream it opened comes before the ACK. Once the server's reader has
//     read the ACK and comes back for the next frame, it has processed
//     every frame before: only then does HTTPServer let net/http send its
//     own GOAWAY, whose last-stream-id now covers every stream.
//
// The ACK is passed on: net/http ignores a PING ACK it did not ask for.

// http2Drain is "two-phase", the drain above, or "goaway", net/http's
// single GOAWAY: the behaviour before it, which tests measure against. A
// string so that a test build can set it with
// -ldflags=-X=github.com/handoffd/handoff/handoff.http2Drain=goaway.
var http2Drain = "two-phase"

// nextProtoUnencryptedHTTP2 is net/http's TLSNextProto key for HTTP/2
// without TLS (Go 1.24 and later, and golang.org/x/net/http2): its
// handler serves any net.Conn, passed inside a *tls.Conn that exposes it
// through an UnencryptedNetConn method, whose client preface was read.
const nextProtoUnencryptedHTTP2 = "unencrypted_http2"

// clientPreface opens every HTTP/2 connection a client makes.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// drainPingData is the opaque data of the drain's PING.
var drainPingData = [8]byte{'h', 'a', 'n', 'd', 'o', 'f', 'f', 0}

const (
	frameHeaderLen = 9
	frameGoAway    = 0x7
	framePing      = 0x6
	flagAck        = 0x1
)

// drainFrames is phase 1: GOAWAY(2^31-1, NO_ERROR), then the PING.
var drainFrames = func() []byte {
	var b []byte
	b = append(b, 0, 0, 8, frameGoAway, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, 1<<31-1)
	b = binary.BigEndian.AppendUint32(b, 0) // NO_ERROR
	b = append(b, 0, 0, 8, framePing, 0, 0, 0, 0, 0)
	return append(b, drainPingData[:]...)
}()

// frameScanner follows the frames of one direction of an HTTP/2
// connection, byte by byte, as they pass.
type frameScanner struct {
	hdr  [frameHeaderLen]byte
	hdrN int // header bytes seen of the current frame
	left int // payload bytes of the current frame still to come
}

// atBoundary reports whether the bytes so far end with a whole frame.
func (f *frameScanner) atBoundary() bool { return f.hdrN == 0 }

// scan consumes the start of p up to the end of the current frame's header
// or payload, and returns how much it consumed, the payload bytes among
// them, and whether that ended the frame (f.hdr is then still the frame's).
func (f *frameScanner) scan(p []byte) (n int, payload []byte, ended bool) {
	if f.hdrN < frameHeaderLen {
		n = copy(f.hdr[f.hdrN:], p)
		f.hdrN += n
		if f.hdrN < frameHeaderLen {
			return n, nil, false
		}
		f.left = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
		if f.left > 0 {
			return n, nil, false
		}
	} else {
		n = min(f.left, len(p))
		payload = p[:n]
		f.left -= n
		if f.left > 0 {
			return n, payload, false
		}
	}
	f.hdrN = 0
	return n, payload, true
}

// h2Conn is an HTTP/2 connection as net/http's server reads and writes
// it, with the drain's two phases added (see above). net/http's HTTP/2
// server owns it as it would the connection under it, and closes it (which
// closes that connection); HTTPServer keeps it only to drain it.
type h2Conn struct {
	net.Conn          // the connection the frames travel on (a *tls.Conn over TLS)
	orig     net.Conn // the connection as net/http accepted it: HTTPServer's key

	// acked is closed once the server has processed every frame up to
	// the ACK of the drain's PING.
	acked chan struct{}

	// Write side, under wmu (net/http writes from one goroutine at a
	// time; the drain injects from another).
	wmu      sync.Mutex
	wframes  frameScanner
	wrote    bool        // a whole frame was written: the server's SETTINGS
	pending  atomic.Bool // the drain asked for phase 1's frames
	injected atomic.Bool // they were written

	// Read side: only the server's reader goroutine reads.
	preface  int // client preface bytes still to read and check (TLS)
	rframes  frameScanner
	ping     []byte // payload so far of a PING ACK frame
	inPing   bool
	ackFound bool // the ACK was read; acked closes on the next Read
	ackOnce  sync.Once
}

func newH2Conn(c net.Conn, readPreface bool) *h2Conn {
	h := &h2Conn{Conn: c, orig: c, acked: make(chan struct{})}
	if readPreface {
		h.preface = len(clientPreface)
	}
	return h
}

// h2TLSConn is an h2Conn over TLS: net/http's server asks it for the TLS
// state, as it would the *tls.Conn.
type h2TLSConn struct {
	*h2Conn
	tc *tls.Conn // the h2Conn's connection
}

// ConnectionState is the TLS connection's.
func (c h2TLSConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// unencryptedConn carries a connection to net/http's handler for
// nextProtoUnencryptedHTTP2 inside a *tls.Conn, as net/http itself does.
type unencryptedConn struct {
	net.Conn // nil: never used
	conn     net.Conn
}

// UnencryptedNetConn is the connection carried.
func (c unencryptedConn) UnencryptedNetConn() net.Conn { return c.conn }

func asUnencrypted(c net.Conn) *tls.Conn { return tls.Client(unencryptedConn{conn: c}, nil) }

// startDrain begins phase 1: the GOAWAY and PING go out at the next frame
// boundary after the server's first frame. A write that finds the
// connection busy leaves it to the server's own next Write.
func (c *h2Conn) startDrain() {
	c.pending.Store(true)
	c.tryInject()
}

// tryInject injects phase 1's frames now, if they are due and nothing is
// being written.
func (c *h2Conn) tryInject() {
	if !c.pending.Load() || c.injected.Load() || !c.wmu.TryLock() {
		return
	}
	c.injectLocked(nil)
	c.wmu.Unlock()
}

// injectLocked writes phase 1's frames if due at this boundary.
func (c *h2Conn) injectLocked(err *error) {
	if !c.pending.Load() || c.injected.Load() || !c.wrote || !c.wframes.atBoundary() {
		return
	}
	c.injected.Store(true)
	if _, werr := c.Conn.Write(drainFrames); werr != nil && err != nil {
		*err = werr
	}
}

// Write writes p, with phase 1's frames between two of its frames once
// the drain asked for them.
func (c *h2Conn) Write(p []byte) (n int, err error) {
	c.wmu.Lock()
	n, err = c.writeLocked(p)
	c.wmu.Unlock()
	// A drain that found this Write under way left the frames to it.
	c.tryInject()
	return n, err
}

func (c *h2Conn) writeLocked(p []byte) (int, error) {
	done := 0 // bytes of p written
	for i := 0; i < len(p); {
		if c.pending.Load() && !c.injected.Load() && c.wrote && c.wframes.atBoundary() && i > done {
			m, err := c.Conn.Write(p[done:i])
			done += m
			if err != nil {
				return done, err
			}
		}
		if done == i {
			var err error
			if c.injectLocked(&err); err != nil {
				return done, err
			}
		}
		n, _, ended := c.wframes.scan(p[i:])
		i += n
		if ended {
			c.wrote = true
		}
	}
	if done < len(p) {
		m, err := c.Conn.Write(p[done:])
		done += m
		if err != nil {
			return done, err
		}
	}
	var err error
	c.injectLocked(&err)
	return done, err
}

// Read reads what the client sent, checking the client preface first on
// TLS (net/http's handler is told it was read) and watching for the ACK
// of the drain's PING.
func (c *h2Conn) Read(p []byte) (int, error) {
	if c.ackFound {
		// The server comes back for more: it processed the ACK and so
		// every frame the client sent before it.
		c.ackFound = false
		c.ackOnce.Do(func() { close(c.acked) })
	}
	if c.preface > 0 {
		buf := make([]byte, c.preface)
		if _, err := io.ReadFull(c.Conn, buf); err != nil {
			return 0, err
		}
		if !bytes.Equal(buf, []byte(clientPreface)) {
			return 0, fmt.Errorf("handoff: bogus HTTP/2 client preface %q", buf)
		}
		c.preface = 0
	}
	n, err := c.Conn.Read(p)
	for b := p[:n]; len(b) > 0; {
		m, payload, ended := c.rframes.scan(b)
		b = b[m:]
		h := &c.rframes.hdr
		if c.rframes.hdrN == frameHeaderLen && payload == nil && !ended {
			// A header just completed, with a payload to come.
			c.inPing = h[3] == framePing && h[4]&flagAck != 0 && c.rframes.left == len(drainPingData) &&
				binary.BigEndian.Uint32(h[5:])&(1<<31-1) == 0
			c.ping = c.ping[:0]
		}
		if c.inPing {
			c.ping = append(c.ping, payload...)
			if ended {
				c.inPing = false
				if bytes.Equal(c.ping, drainPingData[:]) {
					c.ackFound = true
				}
			}
		}
	}
	return n, err
}

// drainAcked reports whether phase 1 is over: the ACK was processed.
func (c *h2Conn) drainAcked() bool {
	select {
	case <-c.acked:
		return true
	default:
		return false
	}
}

// wrapHTTP2 makes net/http's HTTP/2 server serve every connection through
// an h2Conn: h2c ones through its handler for nextProtoUnencryptedHTTP2,
// as before, and TLS ones too, instead of its "h2" handler (the h2Conn
// reads the client preface that the "h2" handler would have). Without
// that handler (an HTTP/2 server that has none) HTTP/2 connections drain
// with the server's single GOAWAY.
//
// It runs once, at the first Accept: net/http fills in TLSNextProto when
// Serve starts, and no connection reads it before an Accept returns.
func (s *HTTPServer) wrapHTTP2() {
	srv := s.Server
	serveH2, ok := srv.TLSNextProto[nextProtoUnencryptedHTTP2]
	if !ok || http2Drain != "two-phase" {
		return
	}
	next := maps.Clone(srv.TLSNextProto)
	next[nextProtoUnencryptedHTTP2] = func(hs *http.Server, tc *tls.Conn, h http.Handler) {
		inner, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok {
			serveH2(hs, tc, h)
			return
		}
		c := newH2Conn(inner.UnencryptedNetConn(), false)
		s.trackHTTP2(c)
		serveH2(hs, asUnencrypted(c), h)
	}
	if _, ok := srv.TLSNextProto["h2"]; ok {
		next["h2"] = func(hs *http.Server, tc *tls.Conn, h http.Handler) {
			c := newH2Conn(tc, true)
			s.trackHTTP2(c)
			serveH2(hs, asUnencrypted(h2TLSConn{h2Conn: c, tc: tc}), h)
		}
	}
	srv.TLSNextProto = next
}

// trackHTTP2 notes that c's connection speaks HTTP/2, and starts its
// drain if HTTPServer is draining.
func (s *HTTPServer) trackHTTP2(c *h2Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.conns[c.orig]
	if t == nil {
		return
	}
	t.h2.Store(true)
	t.h2c = c
	if s.draining.Load() {
		c.startDrain()
	}
}

// startHTTP2Drain starts phase 1 on every HTTP/2 connection. A
// connection being written to gets it from its writer; one that is not,
// from a goroutine that Shutdown joins (a write blocks while the client
// does not read, until the connection closes).
func (s *HTTPServer) startHTTP2Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.conns {
		if c := t.h2c; c != nil {
			s.injecting.Add(1)
			go func() {
				defer s.injecting.Done()
				c.startDrain()
			}()
		}
	}
}

// http2Draining returns how many HTTP/2 connections have not yet had
// phase 1's PING acknowledged.
func (s *HTTPServer) http2Draining() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, t := range s.conns {
		if t.h2c != nil && !t.h2c.drainAcked() {
			n++
		}
	}
	return n
}
