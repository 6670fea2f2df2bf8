package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// httpClient is a keep-alive HTTP/1.1 client on one raw connection; it
// never retries and never reconnects.
type httpClient struct {
	c  net.Conn
	br *bufio.Reader
}

func dialHTTP(t testing.TB, addr string) *httpClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &httpClient{c: c, br: bufio.NewReader(c)}
}

// get sends one request for path and reads its response.
func (h *httpClient) get(path string) (body string, closing bool, err error) {
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(h.c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		return "", false, err
	}
	return h.read()
}

// getUntil sends requests until one is answered by the generation called
// name, each on the same connection, without Connection: close.
func (h *httpClient) getUntil(t testing.TB, name string) {
	t.Helper()
	for n := 1; n <= 100; n++ {
		body, closing, err := h.get(fmt.Sprint("/", n))
		if err != nil || closing {
			t.Fatalf("request %d: %q, Connection: close %v, %v", n, body, closing, err)
		}
		if strings.HasPrefix(body, name+" ") {
			return
		}
	}
	t.Fatalf("connection never reached %s in 100 requests", name)
}

func (h *httpClient) read() (body string, closing bool, err error) {
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", false, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), resp.Close, nil
}

// httpGeneration is one process generation in the tests: an Upgrader
// and an HTTPServer that answers "NAME PATH".
type httpGeneration struct {
	upg    *Upgrader
	srv    *HTTPServer
	addr   string
	served chan error
}

func startHTTP(t testing.TB, cfg Config, name string, handler http.HandlerFunc) *httpGeneration {
	t.Helper()
	return startGeneration(t, cfg, &http.Server{Handler: answerName(name, handler)}, (*HTTPServer).Serve)
}

// answerName is handler, or when it is nil one that answers "NAME PATH".
func answerName(name string, handler http.HandlerFunc) http.HandlerFunc {
	if handler != nil {
		return handler
	}
	return func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s", name, r.URL.Path) }
}

// startGeneration serves srv with serve (Serve or ServeTLS) on a
// loopback listener of a fresh Upgrader, which it makes ready.
func startGeneration(t testing.TB, cfg Config, srv *http.Server, serve func(*HTTPServer, net.Listener) error) *httpGeneration {
	t.Helper()
	u := newUpgrader(t, cfg)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &httpGeneration{upg: u, addr: ln.Addr().String(), served: make(chan error, 1)}
	g.srv = &HTTPServer{Server: srv, Upgrader: u}
	go func() { g.served <- serve(g.srv, ln) }()
	t.Cleanup(func() { g.srv.Close() })
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	return g
}

// slowPath returns a handler that answers "NAME PATH" and holds /slow
// until release is closed (or the client goes away); entered is closed
// once /slow has arrived.
func slowPath(name string) (h http.HandlerFunc, entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	h = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}
	return h, entered, release
}

// waitConns waits until g's server tracks n connections.
func (g *httpGeneration) waitConns(t testing.TB, n int, what string) {
	t.Helper()
	waitFor(t, what, func() bool {
		g.srv.mu.Lock()
		defer g.srv.mu.Unlock()
		return len(g.srv.conns) == n
	})
}

// drain does what the old process does once its successor took over: it
// shuts its server down and exits. It reports how long the shutdown took.
// Each of its waits ends after waitBound, or when ctx is done; it does not
// touch a testing.T, so that it can run beside the test (startDrain).
func (g *httpGeneration) drain(ctx context.Context) (time.Duration, error) {
	return g.drainWithin(ctx, waitBound)
}

// drainWithin is drain with a shutdown deadline of d: the drain deadline
// HTTPServer works to.
func (g *httpGeneration) drainWithin(ctx context.Context, d time.Duration) (time.Duration, error) {
	defer g.upg.Close() // the process exits
	exitCtx, cancel := context.WithTimeout(ctx, waitBound)
	defer cancel()
	select {
	case <-g.upg.Exit():
	case <-exitCtx.Done():
		return 0, fmt.Errorf("waiting for Exit: %w", exitCtx.Err())
	}
	ctx, cancel = context.WithTimeout(ctx, d)
	defer cancel()
	return g.shutdown(ctx)
}

// shutdown shuts g's server down within ctx and waits for Serve to
// return; it reports how long that took.
func (g *httpGeneration) shutdown(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if err := g.srv.Shutdown(ctx); err != nil {
		return 0, fmt.Errorf("Shutdown: %w", err)
	}
	select {
	case err := <-g.served:
		if !errors.Is(err, http.ErrServerClosed) {
			return 0, fmt.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	case <-ctx.Done():
		return 0, fmt.Errorf("Serve did not return after Shutdown: %w", ctx.Err())
	}
	return time.Since(start), nil
}

type drainResult struct {
	took time.Duration
	err  error
}

// startDrain runs drain beside the test; joinDrain waits for its outcome.
// The drain is joined before the test ends in any case: a test that fails
// first cancels it at cleanup.
func (g *httpGeneration) startDrain(t testing.TB) <-chan drainResult {
	return inBackground(t, g.drain)
}

// inBackground runs drain beside the test, as startDrain does.
func inBackground(t testing.TB, drain func(context.Context) (time.Duration, error)) <-chan drainResult {
	ctx, cancel := context.WithCancel(context.Background())
	result, finished := make(chan drainResult, 1), make(chan struct{})
	go func() {
		defer close(finished)
		took, err := drain(ctx)
		result <- drainResult{took, err}
	}()
	t.Cleanup(func() {
		cancel()
		recvWithin(t, finished, "the drain to end")
	})
	return result
}

// joinDrain waits for a drain startDrain began, fails the test if it
// failed, and returns how long the shutdown took.
func joinDrain(t testing.TB, drained <-chan drainResult) time.Duration {
	t.Helper()
	r := recvWithin(t, drained, "the old process to drain")
	if r.err != nil {
		t.Fatalf("drain: %v", r.err)
	}
	return r.took
}

// TestHTTPDrainWithoutSuccessor: with nobody to hand connections to,
// every HTTP/1 connection gets its next request answered with
// "Connection: close", nothing in flight is cut, and Shutdown waits for
// all of it.
func TestHTTPDrainWithoutSuccessor(t *testing.T) {
	checkLeaks(t)
	handler, entered, release := slowPath("old")
	g := startHTTP(t, testConfig(t), "old", handler)
	idle := dialHTTP(t, g.addr)
	if _, _, err := idle.get("/1"); err != nil {
		t.Fatal(err)
	}
	fresh := dialHTTP(t, g.addr) // accepted, no request yet
	inflight := dialHTTP(t, g.addr)
	fmt.Fprintf(inflight.c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
	recvWithin(t, entered, "the slow request to reach its handler")
	g.waitConns(t, 3, "three connections")

	g.upg.Stop()
	done := make(chan error, 1)
	go func() { done <- g.srv.Shutdown(context.Background()) }()
	waitFor(t, "the drain to start", g.srv.draining.Load)

	for name, c := range map[string]*httpClient{"idle": idle, "fresh": fresh} {
		body, closing, err := c.get("/2")
		if err != nil || body != "old /2" || !closing {
			t.Fatalf("%s connection: %q, Connection: close %v, %v", name, body, closing, err)
		}
		if _, err := c.br.ReadByte(); err != io.EOF {
			t.Fatalf("%s connection still open after Connection: close: %v", name, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	if body, _, err := inflight.read(); err != nil || body != "old /slow" {
		t.Fatalf("in-flight request: %q, %v", body, err)
	}
	if body, closing, err := inflight.get("/3"); err != nil || body != "old /3" || !closing {
		t.Fatalf("after the in-flight request: %q, Connection: close %v, %v", body, closing, err)
	}
	if err := recvWithin(t, done, "Shutdown to return once the last request is answered"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestHTTPHandoffKeepsConnection: after a takeover, idle keep-alive
// connections move to the successor over the same TCP connection; the old
// process does not wait for them.
func TestHTTPHandoffKeepsConnection(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	handler, entered, release := slowPath("old")
	old := startHTTP(t, cfg, "old", handler)
	idle := dialHTTP(t, old.addr)
	if body, _, err := idle.get("/1"); err != nil || body != "old /1" {
		t.Fatalf("%q, %v", body, err)
	}
	fresh := dialHTTP(t, old.addr)
	inflight := dialHTTP(t, old.addr)
	fmt.Fprintf(inflight.c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
	recvWithin(t, entered, "the slow request to reach its handler")
	old.waitConns(t, 3, "three connections")

	startHTTP(t, cfg, "new", nil)
	drained := old.startDrain(t)
	old.waitConns(t, 1, "the idle connections to be handed over")
	for name, c := range map[string]*httpClient{"idle": idle, "fresh": fresh} {
		body, closing, err := c.get("/2")
		if err != nil || body != "new /2" || closing {
			t.Fatalf("%s connection after the takeover: %q, Connection: close %v, %v", name, body, closing, err)
		}
	}
	close(release)
	if body, closing, err := inflight.read(); err != nil || body != "old /slow" || closing {
		t.Fatalf("in-flight request: %q, Connection: close %v, %v", body, closing, err)
	}
	// The request that follows may still reach the old process, if it
	// arrives before the connection goes idle; it is answered there and
	// the connection moves right after.
	inflight.getUntil(t, "new")
	if took := joinDrain(t, drained); took > 5*time.Second {
		t.Fatalf("old process drained in %v despite handing connections over", took)
	}
}

// TestHTTPBusyConnectionMovesAfterResponse: a connection answered within
// busyWindow when the drain starts stays until its next response, then
// moves; a fresh one moves at once.
func TestHTTPBusyConnectionMovesAfterResponse(t *testing.T) {
	checkLeaks(t)
	defer func(w time.Duration) { busyWindow = w }(busyWindow)
	busyWindow = time.Minute // longer than the test
	cfg := testConfig(t)
	old := startHTTP(t, cfg, "old", nil)
	busy := dialHTTP(t, old.addr)
	if body, _, err := busy.get("/1"); err != nil || body != "old /1" {
		t.Fatalf("%q, %v", body, err)
	}
	fresh := dialHTTP(t, old.addr)
	old.waitConns(t, 2, "two connections")

	startHTTP(t, cfg, "new", nil)
	drained := old.startDrain(t)
	// The pass that handed the fresh connection over skipped the busy one.
	old.waitConns(t, 1, "the fresh connection to be handed over")
	if body, closing, err := busy.get("/2"); err != nil || body != "old /2" || closing {
		t.Fatalf("busy connection's next request: %q, Connection: close %v, %v", body, closing, err)
	}
	if body, closing, err := fresh.get("/3"); err != nil || body != "new /3" || closing {
		t.Fatalf("fresh connection after the move: %q, Connection: close %v, %v", body, closing, err)
	}
	// The busy connection moves once /2 is answered, unless /3 reaches
	// net/http's read-ahead first (see TestHTTPHandoffKeepsConnection).
	busy.getUntil(t, "new")
	joinDrain(t, drained)
}

// TestHTTPHandoffRace: keep-alive clients send requests back to back
// through 20 handovers. Every request is answered exactly once (the
// path, echoed back, matches), on the connection it was sent on.
func TestHTTPHandoffRace(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	gen := startHTTP(t, cfg, "gen1", nil)
	const clients = 4
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		requests atomic.Int64
	)
	errs := make(chan error, clients)
	for i := range clients {
		c := dialHTTP(t, gen.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load() && n < 1_000_000; n++ {
				path := fmt.Sprintf("/c%d/%d", i, n)
				body, closing, err := c.get(path)
				if err == nil && (closing || !strings.HasSuffix(body, " "+path)) {
					err = fmt.Errorf("answer %q (Connection: close %v)", body, closing)
				}
				if err != nil {
					errs <- fmt.Errorf("client %d, request %s: %w", i, path, err)
					return
				}
				requests.Add(1)
			}
		}()
	}
	for n := 2; n <= 21; n++ {
		before := requests.Load()
		waitFor(t, "requests to flow", func() bool { return requests.Load() > before+20 || len(errs) > 0 })
		next := startHTTP(t, cfg, fmt.Sprint("gen", n), nil)
		if _, err := gen.drain(context.Background()); err != nil {
			t.Fatalf("drain of generation %d: %v", n-1, err)
		}
		gen = next
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d requests over %d connections through 20 handovers", requests.Load(), clients)
}

// TestHTTPPipelinedDuringDrain: two requests sent in one write while the
// old process drains are both answered, in order, exactly once.
func TestHTTPPipelinedDuringDrain(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := startHTTP(t, cfg, "old", nil)
	c := dialHTTP(t, old.addr)
	if _, _, err := c.get("/0"); err != nil {
		t.Fatal(err)
	}
	startHTTP(t, cfg, "new", nil)
	drained := old.startDrain(t)
	for round := range 20 {
		c.c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c.c, "GET /a%d HTTP/1.1\r\nHost: t\r\n\r\nGET /b%d HTTP/1.1\r\nHost: t\r\n\r\n", round, round)
		for _, want := range []string{fmt.Sprint("/a", round), fmt.Sprint("/b", round)} {
			body, _, err := c.read()
			if err != nil || !strings.HasSuffix(body, " "+want) {
				t.Fatalf("pipelined %s: %q, %v", want, body, err)
			}
		}
	}
	joinDrain(t, drained)
}

// TestHTTPDrainWaitsForPredecessor: a process that has handed over in
// turn does not exit while its predecessor may still send it connections:
// a keep-alive connection that goes idle in the oldest process only after
// two handovers still reaches the newest.
func TestHTTPDrainWaitsForPredecessor(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	handler, entered, release := slowPath("gen1")
	gen1 := startHTTP(t, cfg, "gen1", handler)
	c := dialHTTP(t, gen1.addr)
	fmt.Fprintf(c.c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
	recvWithin(t, entered, "the slow request to reach its handler")
	gen2 := startHTTP(t, cfg, "gen2", nil)
	gen1Drained := gen1.startDrain(t)
	startHTTP(t, cfg, "gen3", nil)
	gen2Drained := gen2.startDrain(t)
	close(release)
	if body, _, err := c.read(); err != nil || body != "gen1 /slow" {
		t.Fatalf("in-flight request: %q, %v", body, err)
	}
	c.getUntil(t, "gen3")
	joinDrain(t, gen1Drained)
	joinDrain(t, gen2Drained)
}

// TestHTTPHijackedConnHandsOver: a connection a handler hijacked from
// HTTPServer (a WebSocket) goes to the successor with SendConn, bytes the
// client sent meanwhile included, and its client sees one connection.
func TestHTTPHijackedConnHandsOver(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	hijacked := make(chan net.Conn, 1)
	old := startHTTP(t, cfg, "old", func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		hijacked <- c
	})
	client := dialHTTP(t, old.addr)
	fmt.Fprintf(client.c, "GET /up HTTP/1.1\r\nHost: test\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
	if line, err := client.br.ReadString('\n'); err != nil || !strings.Contains(line, "101") {
		t.Fatalf("upgrade answered %q, %v", line, err)
	}
	c := recvWithin(t, hijacked, "the handler to hijack the connection")
	fmt.Fprint(client.c, "sent to the old process\n")

	succ := newUpgrader(t, cfg)
	if _, err := succ.Listen("tcp", "127.0.0.1:0"); err != nil { // the same arguments: the same socket
		t.Fatal(err)
	}
	if err := succ.Ready(); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, old.upg.Exit(), "the old process's Exit")
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if err := old.upg.SendConn(ctx, c, []byte("state")); err != nil {
		t.Fatalf("SendConn of a hijacked connection: %v", err)
	}
	got, state, err := succ.AcceptConn(ctx)
	if err != nil || string(state) != "state" {
		t.Fatalf("AcceptConn: state %q, %v", state, err)
	}
	defer got.Close()
	got.SetReadDeadline(time.Now().Add(waitBound))
	line, err := bufio.NewReader(got).ReadString('\n')
	if err != nil || line != "sent to the old process\n" {
		t.Fatalf("the successor read %q, %v", line, err)
	}
	fmt.Fprint(got, "from the successor\n")
	client.c.SetReadDeadline(time.Now().Add(waitBound))
	for {
		line, err := client.br.ReadString('\n')
		if err != nil {
			t.Fatalf("client: %v", err)
		}
		if line == "from the successor\n" {
			break
		}
	}
}

// TestWavesGoOnIfMiscounted: should the count of connections released and
// not yet let go ever be off (here set far too high), the drain still
// releases a wave every shutdownPollInterval: the idle connections move
// in well under the time the drain would otherwise wait (half its
// deadline, then net/http's Shutdown).
func TestWavesGoOnIfMiscounted(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := startHTTP(t, cfg, "old", nil)
	idle := []*httpClient{dialHTTP(t, old.addr), dialHTTP(t, old.addr)}
	for _, c := range idle {
		if body, _, err := c.get("/1"); err != nil || body != "old /1" {
			t.Fatalf("%q, %v", body, err)
		}
	}
	old.waitConns(t, 2, "the connections to be idle")
	old.srv.waking.Store(1 << 20)
	startHTTP(t, cfg, "new", nil)
	if took := joinDrain(t, old.startDrain(t)); took > waitBound/4 {
		t.Fatalf("drain took %v", took)
	}
	for _, c := range idle {
		if body, _, err := c.get("/2"); err != nil || body != "new /2" {
			t.Fatalf("after the drain: %q, %v", body, err)
		}
	}
}
