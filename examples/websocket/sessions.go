package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/handoffd/handoff/handoff"
)

const (
	// inFlightTimeout bounds the wait for the rest of a message a client
	// was sending when its connection, which cannot move, must close.
	inFlightTimeout = 5 * time.Second
)

// longAgo is a read deadline in the past: it wakes a blocked Read.
var longAgo = time.Unix(1, 0)

// wsUpgrader does the handshake. It sets no Negotiate function, so it
// accepts no extension: permessage-deflate stays off (docs/websocket.md
// says why).
var wsUpgrader = ws.HTTPUpgrader{}

// mode is what the open sessions do next time their read stops.
type mode int32

const (
	serving     mode = iota
	handingOver      // move to the successor, between two frames
	closing          // close with 1001 after the message in flight
)

// sessions owns every open WebSocket of this process: it starts each in
// a goroutine of its own and joins them all in wait.
type sessions struct {
	upg *handoff.Upgrader
	log *slog.Logger
	pid int

	// mode is written under mu, and read without it by every session
	// leaving at once: 18,000 of them would queue for mu.
	mode atomic.Int32

	mu         sync.Mutex
	open       map[*session]struct{}
	moveCtx    context.Context // bounds the moves of a drain, from drain to wait
	moveCancel context.CancelFunc
	drainStart time.Time      // when drain began
	moved      int            // sessions handed to the successor
	closed     int            // sessions closed with 1001
	wg         sync.WaitGroup // session goroutines
	handshakes sync.WaitGroup // upgrade handlers: each may start a session
	predGone   chan struct{}  // closed once the predecessor sends no more sessions
}

func newSessions(upg *handoff.Upgrader, log *slog.Logger) *sessions {
	return &sessions{upg: upg, log: log, pid: os.Getpid(), open: map[*session]struct{}{}, predGone: make(chan struct{})}
}

// upgrade is the handler of GET /ws: the handshake, then the session.
func (s *sessions) upgrade(w http.ResponseWriter, r *http.Request) {
	// net/http's Shutdown stops waiting for this request once it is
	// hijacked, before start has counted the session: wait counts it here.
	s.handshakes.Add(1)
	defer s.handshakes.Done()
	conn, rw, _, err := wsUpgrader.Upgrade(r, w)
	if err != nil {
		// The upgrader has answered the client with the reason.
		s.log.Debug("WebSocket handshake failed", "remote", r.RemoteAddr, "err", err)
		if conn != nil {
			conn.Close()
		}
		return
	}
	conn.SetDeadline(time.Time{}) // whatever net/http had set
	// What net/http read past the request (a client may send its first
	// frame without waiting for the handshake's answer) is the session's.
	in, _ := rw.Reader.Peek(rw.Reader.Buffered())
	s.start(&session{conn: conn, in: append([]byte(nil), in...)})
}

// resume starts the sessions the predecessor hands over, until it has
// exited and sent its last one, or ctx ends.
func (s *sessions) resume(ctx context.Context) {
	for {
		c, state, err := s.upg.AcceptConn(ctx)
		if errors.Is(err, io.EOF) {
			close(s.predGone)
			return
		}
		if err != nil {
			return // ctx ended
		}
		sess, err := decodeState(state)
		if err != nil {
			s.log.Warn("closing a handed-over WebSocket with a state this program cannot read", "err", err)
			c.Close()
			continue
		}
		sess.conn = c
		s.start(sess)
	}
}

// start serves sess in a goroutine of its own. While this process is
// draining, the session finishes what is already buffered and goes on at
// once: to the successor, or closed with 1001.
func (s *sessions) start(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open[sess] = struct{}{}
	if s.currentMode() != serving {
		sess.conn.SetReadDeadline(longAgo)
	}
	s.wg.Add(1)
	go s.serve(sess)
}

// drain makes every session leave at its next frame boundary: moved to
// the successor (handOver), or closed with 1001 going away.
func (s *sessions) drain(handOver bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drainStart = time.Now()
	// One deadline for every move, not a timer each.
	s.moveCtx, s.moveCancel = context.WithTimeout(context.Background(), drainTimeout)
	if handOver {
		noCollectionWhileLeaving()
		s.mode.Store(int32(handingOver))
	} else {
		s.mode.Store(int32(closing))
	}
	s.log.Info("draining WebSockets", "sessions", len(s.open), "handover", handOver)
	for sess := range s.open {
		// Wakes a blocked Read; a session busy answering sees it at
		// its next Read, after the frames it has buffered.
		sess.conn.SetReadDeadline(longAgo)
	}
}

// wait waits until the predecessor sends no more sessions and every
// session has left; when ctx ends first, it closes what is left. Call it
// once the HTTP server has shut down: no handshake begins after that.
func (s *sessions) wait(ctx context.Context) {
	s.handshakes.Wait() // the last ones are past start
	select {
	case <-s.predGone:
	case <-ctx.Done():
		s.log.Warn("predecessor still sending sessions at the drain's deadline")
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		s.log.Warn("closing the WebSockets left at the drain's deadline", "sessions", len(s.open))
		for sess := range s.open {
			sess.conn.Close()
		}
		s.mu.Unlock()
		<-done // each session returns once its connection is closed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.moveCancel != nil {
		s.moveCancel()
	}
	s.log.Info("every WebSocket is gone", "moved", s.moved, "closed", s.closed, "took", time.Since(s.drainStart))
}

// count notes how a session left during the drain.
func (s *sessions) count(moved bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if moved {
		s.moved++
	} else {
		s.closed++
	}
}

func (s *sessions) currentMode() mode { return mode(s.mode.Load()) }

func (s *sessions) forget(sess *session) {
	s.mu.Lock()
	delete(s.open, sess)
	s.mu.Unlock()
}

// serve runs one session: it answers every complete message buffered,
// reads more, and, when a drain's deadline stops the read, leaves between
// two frames.
func (s *sessions) serve(sess *session) {
	defer s.wg.Done()
	defer s.forget(sess)
	buf := make([]byte, readSize)
	for {
		if err := sess.answerBuffered(s.pid); err != nil {
			s.end(sess, err)
			return
		}
		n, err := sess.conn.Read(buf)
		sess.in = append(sess.in, buf[:n]...)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			sess.conn.Close() // the client went away, or the connection broke
			return
		}
		if s.currentMode() == handingOver && s.move(sess) {
			s.count(true)
			return
		}
		s.goAway(sess)
		s.count(false)
		return
	}
}

// move hands sess to the successor and reports whether it is gone from
// here; if not, it is still this process's to close. The session is
// idle, between two frames, and this server never speaks first: the
// successor may hold it unadopted until its client sends
// (SendIdleConn), which makes the move cheap for the successor.
func (s *sessions) move(sess *session) bool {
	// drain set moveCtx before the mode that sent sess here: the mode's
	// atomic store and load order the two.
	err := s.upg.SendIdleConn(s.moveCtx, sess.conn, sess.state())
	switch {
	case err == nil:
		return true
	case errors.Is(err, handoff.ErrConnUnknown):
		// The successor may have it; SendConn has closed it here.
		s.log.Warn("a WebSocket may not have reached the successor", "err", err)
		return true
	default:
		s.log.Warn("cannot hand a WebSocket over; closing it with 1001 after its message in flight", "err", err)
		return false
	}
}

// goAway closes sess with 1001 going away, after answering the message the
// client is in the middle of sending, if any.
func (s *sessions) goAway(sess *session) {
	buf := make([]byte, readSize)
	for sess.midMessage() {
		sess.conn.SetReadDeadline(time.Now().Add(inFlightTimeout))
		n, err := sess.conn.Read(buf)
		sess.in = append(sess.in, buf[:n]...)
		if err := sess.answerBuffered(s.pid); err != nil {
			s.end(sess, err)
			return
		}
		if err != nil {
			break // no more of it is coming
		}
	}
	if sess.midMessage() {
		s.log.Warn("closing a WebSocket in the middle of a message the client never finished")
	}
	sess.closeWith(ws.StatusGoingAway, "going away")
}

// end closes sess after answerBuffered failed with err.
func (s *sessions) end(sess *session, err error) {
	var pe *protocolError
	switch {
	case errors.Is(err, errClientClosed):
		sess.conn.Close() // closing handshake done
	case errors.As(err, &pe):
		s.log.Info("closing a WebSocket that broke the protocol", "err", err)
		sess.closeWith(pe.code, pe.reason)
	default:
		sess.conn.Close() // a write failed: nothing more can be sent
	}
}

// noCollectionWhileLeaving turns the garbage collector off for the rest of
// this process, which will exit once its sessions have moved: a collection
// during the move would scan every session goroutine's stack for nothing
// (a sixth of the old process's CPU with 18,000 WebSockets). A memory limit
// of twice what the runtime holds now still bounds a drain that allocates
// more than it should.
func noCollectionWhileLeaving() {
	sample := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return // unknown to this runtime: leave the collector as it is
	}
	debug.SetMemoryLimit(int64(2 * sample[0].Value.Uint64()))
	debug.SetGCPercent(-1)
}
