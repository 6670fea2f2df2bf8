//go:build linux

package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/handoffd/handoff/internal/testbed"
)

// TestWebSocketsAcrossRestarts: WS_CLIENTS clients (200) each send a
// message every WS_INTERVAL_MS (10 ms) across WS_RESTARTS (20) SIGHUP
// upgrades. Every message is answered exactly once and in order, on the
// same connection, with no close frame; every connection is answered by
// every generation, and its counter runs on from process to process. A
// stop at the end closes each with 1001 going away.
func TestWebSocketsAcrossRestarts(t *testing.T) {
	nClients := envInt(t, "WS_CLIENTS", 200)
	restarts := envInt(t, "WS_RESTARTS", 20)
	interval := time.Duration(envInt(t, "WS_INTERVAL_MS", 10)) * time.Millisecond
	s, pid := startService(t)

	clients := make([]*loadClient, nClients)
	for i := range clients {
		clients[i] = &loadClient{wsClient: dialWS(t, s.Addr), id: i, stop: make(chan struct{}), done: make(chan struct{})}
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(2)
		go func() { defer wg.Done(); c.sendLoop(interval) }()
		go func() { defer wg.Done(); c.readLoop() }()
	}
	stopped := false
	stopAll := func() {
		if !stopped {
			stopped = true
			for _, c := range clients {
				close(c.stop)
			}
		}
	}
	defer func() { stopAll(); wg.Wait() }()

	answeredBy := func(pid int) func() bool {
		return func() bool {
			failIfAny(t, clients)
			for _, c := range clients {
				if int(c.lastPID.Load()) != pid {
					return false
				}
			}
			return true
		}
	}
	testbed.Eventually(t, time.Minute, "every client answered by the first process", answeredBy(pid))
	pids := []int{pid}
	var took []time.Duration
	for r := range restarts {
		start := time.Now()
		pid = upgrade(t, s, pid)
		took = append(took, time.Since(start))
		pids = append(pids, pid)
		testbed.Eventually(t, time.Minute, fmt.Sprintf("every client answered by process %d after restart %d", pid, r+1), answeredBy(pid))
	}
	stopAll()
	for _, c := range clients {
		if err := c.waitAnswered(time.Minute); err != nil {
			t.Fatalf("client %d: %v", c.id, err)
		}
	}
	var total uint64
	for _, c := range clients {
		if got := c.gens.Load(); got != int64(len(pids)) {
			t.Errorf("client %d was answered by %d processes in turn, want %d", c.id, got, len(pids))
		}
		total += c.answered.Load()
	}
	moves := drainsInLog(t, s)
	if len(moves) != restarts {
		t.Fatalf("%d drains in the log after %d restarts", len(moves), restarts)
	}
	var moveTook []time.Duration
	for i, d := range moves {
		if d.moved != nClients || d.closed != 0 {
			t.Errorf("drain %d moved %d WebSockets and closed %d; want %d moved", i+1, d.moved, d.closed, nClients)
		}
		moveTook = append(moveTook, d.took)
	}
	t.Logf("%d clients, one message each every %v, %d restarts: %d messages, every one answered once and in order, by %d processes in turn; "+
		"SIGHUP to the old process's exit: median %v, max %v; successor ready to every WebSocket moved: median %v, max %v",
		nClients, interval, restarts, total, len(pids), testbed.Median(took), maxOf(took), testbed.Median(moveTook), maxOf(moveTook))

	// A stop with no successor: each WebSocket gets 1001, nothing else.
	s.Signal(pid, syscall.SIGTERM)
	for _, c := range clients {
		select {
		case <-c.done:
		case <-time.After(time.Minute):
			t.Fatalf("client %d: no close frame a minute after SIGTERM", c.id)
		}
		var ce *errClosed
		if err := c.failure(); !errors.As(err, &ce) || ce.code != ws.StatusGoingAway {
			t.Fatalf("client %d after SIGTERM: %v, want a close frame 1001", c.id, err)
		}
	}
	if st := s.WaitExit(pid, time.Minute); st.ExitStatus() != 0 {
		t.Fatalf("the last process exited with %v", st)
	}
}

// drain is what a process's log says of its drain: how many WebSockets it
// moved and closed, and how long from its start to the last one gone.
type drain struct {
	moved, closed int
	took          time.Duration
}

// drainsInLog reads every drain from the service's log, in order.
func drainsInLog(t *testing.T, s *testbed.Service) []drain {
	t.Helper()
	var ds []drain
	for _, line := range strings.Split(string(s.LogFrom(0)), "\n") {
		if !strings.Contains(line, `msg="every WebSocket is gone"`) {
			continue
		}
		var d drain
		var took string
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "moved":
				d.moved, _ = strconv.Atoi(v)
			case "closed":
				d.closed, _ = strconv.Atoi(v)
			case "took":
				took = v
			}
		}
		var err error
		if d.took, err = time.ParseDuration(took); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		ds = append(ds, d)
	}
	return ds
}

// loadClient sends numbered messages on one WebSocket and checks that
// each is answered once, in order, with the counter one up.
type loadClient struct {
	*wsClient
	id   int
	stop chan struct{} // closed: send no more
	done chan struct{} // closed when readLoop returns

	sent     atomic.Uint64 // messages sent
	answered atomic.Uint64 // answers read, each the next expected
	lastPID  atomic.Int64  // the process that sent the last answer
	gens     atomic.Int64  // how many times the answering pid changed, plus one
	mu       sync.Mutex
	err      error
}

func (c *loadClient) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *loadClient) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// sendLoop sends "c<id> <k>" every interval until stop. Every seventh
// message goes in two writes, cut inside the frame, and every eleventh
// in two fragments: restarts catch them half sent.
func (c *loadClient) sendLoop(interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for k := uint64(0); ; k++ {
		select {
		case <-c.stop:
			return
		case <-c.done:
			return
		case <-tick.C:
		}
		msg := fmt.Sprintf("c%d %d", c.id, k)
		var err error
		switch {
		case k%11 == 10:
			if err = c.sendFrame(ws.OpText, false, msg[:3]); err == nil {
				err = c.sendFrame(ws.OpContinuation, true, msg[3:])
			}
		case k%7 == 6:
			var b []byte
			if b, err = c.frame(ws.OpText, true, msg); err == nil {
				if _, err = c.conn.Write(b[:len(b)/2]); err == nil {
					_, err = c.conn.Write(b[len(b)/2:])
				}
			}
		default:
			err = c.send(msg)
		}
		if err != nil {
			c.fail(fmt.Errorf("sending message %d: %w", k, err))
			return
		}
		c.sent.Add(1)
	}
}

// readLoop reads answers until an error, which it records: a failure,
// or, at the end, the close frame the test waits for.
func (c *loadClient) readLoop() {
	defer close(c.done)
	for {
		s, err := c.read(time.Minute)
		if err != nil {
			c.fail(fmt.Errorf("after %d answers: %w", c.answered.Load(), err))
			return
		}
		a, err := parseAnswer(s)
		k := c.answered.Load()
		if err == nil && (a.msg != fmt.Sprintf("c%d %d", c.id, k) || a.count != k+1) {
			err = fmt.Errorf("answer %d is %q, want message %d with count %d", k, s, k, k+1)
		}
		if err != nil {
			c.fail(err)
			return
		}
		if int64(a.pid) != c.lastPID.Load() {
			c.lastPID.Store(int64(a.pid))
			c.gens.Add(1)
		}
		c.answered.Add(1)
	}
}

// waitAnswered waits, once sending has stopped, until every message sent
// is answered, and stops the reader.
func (c *loadClient) waitAnswered(bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for c.answered.Load() != c.sent.Load() {
		if err := c.failure(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d messages answered after %v", c.answered.Load(), c.sent.Load(), bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c.failure()
}

func failIfAny(t *testing.T, clients []*loadClient) {
	t.Helper()
	var errs []string
	for _, c := range clients {
		if err := c.failure(); err != nil {
			errs = append(errs, fmt.Sprintf("client %d: %v", c.id, err))
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d clients failed:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// TestHalfMessageMoves: a message the client is in the middle of sending
// when the process hands over (half a frame, the first fragment of two,
// or a fragment and half the next) is finished after the restart and
// answered, once, by the successor, with the counter continued.
func TestHalfMessageMoves(t *testing.T) {
	s, pid := startService(t)
	c := dialWS(t, s.Addr)
	frame := func(op ws.OpCode, fin bool, payload string) []byte {
		b, err := c.frame(op, fin, payload)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	halves := func(b []byte) ([]byte, []byte) { return b[:len(b)/2], b[len(b)/2:] }
	frameA, frameB := halves(frame(ws.OpText, true, "half a frame"))
	contA, contB := halves(frame(ws.OpContinuation, true, "in two"))
	for r, tt := range []struct {
		name          string
		before, after []byte
		want          string
	}{
		{"half a frame", frameA, frameB, "half a frame"},
		{"one fragment of two", frame(ws.OpText, false, "fragmented "), frame(ws.OpContinuation, true, "message"), "fragmented message"},
		{"a fragment and half the next", append(frame(ws.OpText, false, "split "), contA...), contB, "split in two"},
	} {
		count := uint64(2 * r)
		if a, err := c.ask("before"); err != nil || a.pid != pid || a.count != count+1 {
			t.Fatalf("%s: answer before the restart %+v, %v", tt.name, a, err)
		}
		if _, err := c.conn.Write(tt.before); err != nil {
			t.Fatal(err)
		}
		pid = upgrade(t, s, pid)
		if _, err := c.conn.Write(tt.after); err != nil {
			t.Fatal(err)
		}
		got, err := c.read(30 * time.Second)
		if want := fmt.Sprintf("%d %s #%d", pid, tt.want, count+2); err != nil || got != want {
			t.Fatalf("%s: answered %q, %v; want %q", tt.name, got, err, want)
		}
	}
}

// goesAwayAfterInFlight sends half a message on c, signals pid with sig,
// waits for logLine, sends the rest, and checks that the message is
// answered, then the connection closed with 1001, and answers the close.
func goesAwayAfterInFlight(t *testing.T, s *testbed.Service, c *wsClient, pid int, sig syscall.Signal, logLine string) {
	t.Helper()
	b, err := c.frame(ws.OpText, true, "in flight")
	if err != nil {
		t.Fatal(err)
	}
	c.conn.Write(b[:len(b)/2])
	from := s.LogSize()
	s.Signal(pid, sig)
	s.WaitLog(from, logLine, 30*time.Second)
	c.conn.Write(b[len(b)/2:])
	if got, err := c.read(30 * time.Second); err != nil || got != fmt.Sprintf("%d in flight #2", pid) {
		t.Fatalf("the message in flight was answered %q, %v", got, err)
	}
	_, err = c.read(30 * time.Second)
	var ce *errClosed
	if !errors.As(err, &ce) || ce.code != ws.StatusGoingAway {
		t.Fatalf("after the answer: %v, want a close frame 1001", err)
	}
	c.sendFrame(ws.OpClose, true, string(ws.NewCloseFrameBody(ws.StatusGoingAway, "")))
}

// TestStopAnswersInFlightThenGoesAway: a WebSocket that cannot move (here
// a stop, with no successor) is closed with 1001 going away, but only
// after the message its client was in the middle of sending is answered.
func TestStopAnswersInFlightThenGoesAway(t *testing.T) {
	s, pid := startService(t)
	c := dialWS(t, s.Addr)
	if a, err := c.ask("first"); err != nil || a.count != 1 {
		t.Fatalf("first answer %+v, %v", a, err)
	}
	goesAwayAfterInFlight(t, s, c, pid, syscall.SIGTERM, "draining WebSockets")
	if st := s.WaitExit(pid, time.Minute); st.ExitStatus() != 0 {
		t.Fatalf("exited with %v", st)
	}
}

// TestWebSocketsWaitOutCanaryWindow: with a canary window, a WebSocket
// stays with the old process, which may yet take the service back, until
// the window ends, then moves; two upgrades within one window pass it down
// the chain. Its client sees one connection throughout.
func TestWebSocketsWaitOutCanaryWindow(t *testing.T) {
	s, first := startService(t, "-canary-window=3s")
	c := dialWS(t, s.Addr)
	count := uint64(0)
	ask := func(what string) answer {
		t.Helper()
		count++
		a, err := c.ask(what)
		if err != nil || a.count != count {
			t.Fatalf("%s: %+v, %v; want count %d", what, a, err, count)
		}
		return a
	}
	ask("before")
	s.Signal(first, syscall.SIGHUP)
	second := s.WaitPID(0, first, 30*time.Second)
	// The first process is in its window: it still has the WebSocket.
	if a := ask("in the window"); a.pid != first {
		t.Logf("answered by %d, not %d: the window passed before the question", a.pid, first)
	}
	s.Signal(second, syscall.SIGHUP) // within the window: the first is released
	third := s.WaitPID(0, second, 30*time.Second)
	for _, pid := range []int{first, second} {
		if st := s.WaitExit(pid, time.Minute); st.ExitStatus() != 0 {
			t.Fatalf("process %d exited with %v", pid, st)
		}
	}
	if a := ask("after both windows"); a.pid != third {
		t.Fatalf("answered by %d; want the last process %d", a.pid, third)
	}
}
