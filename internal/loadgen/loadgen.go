// Package loadgen is an HTTP load generator that never retries: every
// request that does not get a complete 200 response counts as a failure,
// classified by what went wrong. It speaks HTTP/1.1, over TCP or TLS, on
// raw connections, so that nothing between it and the server hides a
// reset or an early close; and HTTP/2, h2c or over TLS, through
// net/http's Transport, every request of which that the Transport sent
// again counts as failed (kind Retried): the figure is what a client that
// never retries would see.
package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Mode says how requests use connections.
type Mode int

const (
	// KeepAlive sends request after request on one connection, opening a
	// new one only when the server says "Connection: close".
	KeepAlive Mode = iota
	// NewConn opens a connection for every request.
	NewConn
	// Mixed runs half the workers in each mode.
	Mixed
)

func (m Mode) String() string {
	switch m {
	case KeepAlive:
		return "keepalive"
	case NewConn:
		return "newconn"
	case Mixed:
		return "mixed"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode is the inverse of Mode.String.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{KeepAlive, NewConn, Mixed} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (keepalive, newconn, mixed)", s)
}

// Kind classifies a failed request.
type Kind string

// Failure kinds.
const (
	Refused Kind = "refused" // the connection was refused
	Reset   Kind = "reset"   // the connection was reset
	EOF     Kind = "eof"     // the connection closed before a complete response
	Timeout Kind = "timeout" // no complete response in time
	Status  Kind = "status"  // a response other than 200
	// Retried: HTTP/2 only, net/http's Transport wrote the request again
	// (on another connection, or after REFUSED_STREAM), whatever came of
	// it: a client that never retries would have failed it.
	Retried Kind = "retried"
	Other   Kind = "other"
)

// Kinds lists the failure kinds in report order.
var Kinds = []Kind{Refused, Reset, EOF, Timeout, Status, Retried, Other}

// Defaults for the zero fields of Config.
const (
	DefaultWorkers     = 4
	DefaultTimeout     = 5 * time.Second
	DefaultMaxRequests = 10_000_000
	DefaultStreams     = 4
)

// Config describes a load run. Load only ever goes to Addr, which should
// be on loopback or in a network namespace of the caller's.
type Config struct {
	Addr        string        // host:port of the server
	Mode        Mode          // how requests use connections
	Workers     int           // concurrent clients; zero means DefaultWorkers
	MaxRequests int64         // stop after this many; zero means DefaultMaxRequests
	Timeout     time.Duration // per request; zero means DefaultTimeout
	Path        string        // request path; zero means "/"
	// Interval paces each client: it starts a request at most every
	// Interval, whatever became of the last one, so that every server gets
	// the same offered load and one that refuses at once is not sent
	// requests in a tight loop. Zero means back to back.
	Interval time.Duration
	// Protocol is what requests speak; zero means HTTP1.
	Protocol Protocol
	// TLSConfig is the client's for TLS and H2, its NextProtos replaced by
	// the protocol's; nil means one that skips verifying the server's
	// certificate (a test server's, self-signed, on loopback).
	TLSConfig *tls.Config
	// Streams is, for HTTP/2 with connections kept (KeepAlive, and the
	// keep-alive half of Mixed), how many clients share one connection, so
	// that as many streams are in flight on it; zero means DefaultStreams.
	Streams int
	// Dial, when set, opens every TCP connection to Addr in place of a
	// net.Dialer, by ctx's deadline (to reach a network namespace of the
	// caller's, say); TLS runs over what it returns.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Result is what a run saw.
type Result struct {
	Requests int64          // requests sent (or attempted)
	OK       int64          // complete 200 responses
	Failures map[Kind]int64 // failed requests by kind
	Errors   []string       // the first few failures, for diagnosis
	Latency  Histogram      // of successful requests
	// Moved is the latency of each first response from another server
	// process on a connection kept open: the connection moved there.
	Moved   Histogram
	PIDs    map[int]int64   // successful responses by server pid (first body line)
	Elapsed time.Duration   // wall time of the run
	First   time.Time       // when the run started
	Failed  []time.Duration // offsets from First at which requests failed
	Conns   int64           // connections opened
	// Rerouted counts HTTP/2 requests that net/http's Transport moved to
	// another connection before writing them (the one it had picked was
	// going away): nothing reached a server before, so they are no
	// failure (they succeeded if they are not in Failures).
	Rerouted int64
}

// FailedCount counts all failures.
func (r *Result) FailedCount() int64 {
	var n int64
	for _, c := range r.Failures {
		n += c
	}
	return n
}

// OutageSpan is the time from the first failure to the last, or zero.
func (r *Result) OutageSpan() time.Duration {
	if len(r.Failed) == 0 {
		return 0
	}
	lo, hi := r.Failed[0], r.Failed[0]
	for _, d := range r.Failed {
		lo, hi = min(lo, d), max(hi, d)
	}
	return hi - lo
}

// String summarises r in one line.
func (r *Result) String() string {
	var fails []string
	for _, k := range Kinds {
		if n := r.Failures[k]; n > 0 {
			fails = append(fails, fmt.Sprintf("%s=%d", k, n))
		}
	}
	if len(fails) == 0 {
		fails = []string{"none"}
	}
	return fmt.Sprintf("%d requests, %d ok, failed: %s; p50 %v p99 %v max %v; %d server pids",
		r.Requests, r.OK, strings.Join(fails, " "), r.Latency.Quantile(0.5), r.Latency.Quantile(0.99), r.Latency.Max(), len(r.PIDs))
}

const maxErrors = 10

// Run sends load until ctx ends or MaxRequests were sent.
func Run(ctx context.Context, cfg Config) *Result {
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if cfg.Streams <= 0 {
		cfg.Streams = DefaultStreams
	}
	var h2 *h2pool
	if cfg.Protocol.HTTP2() {
		h2 = &h2pool{cfg: cfg}
	}
	var tlsConfig *tls.Config
	if cfg.Protocol == TLS {
		tlsConfig = cfg.tlsConfig()
	}
	start := time.Now()
	budget := &budget{left: cfg.MaxRequests}
	results := make([]*Result, cfg.Workers)
	var wg sync.WaitGroup
	for i := range results {
		mode := cfg.Mode
		if mode == Mixed {
			mode = []Mode{KeepAlive, NewConn}[i%2]
		}
		w := &worker{cfg: cfg, mode: mode, start: start, res: newResult(start), tls: tlsConfig}
		if h2 != nil {
			w.h2 = h2.transport(mode)
		}
		results[i] = w.res
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, budget)
		}()
	}
	wg.Wait()
	total := newResult(start)
	for _, r := range results {
		total.merge(r)
	}
	if h2 != nil {
		h2.close()
	}
	total.Elapsed = time.Since(start)
	return total
}

func newResult(start time.Time) *Result {
	return &Result{Failures: map[Kind]int64{}, PIDs: map[int]int64{}, First: start}
}

func (r *Result) merge(o *Result) {
	r.Requests += o.Requests
	r.OK += o.OK
	r.Conns += o.Conns
	r.Rerouted += o.Rerouted
	for k, n := range o.Failures {
		r.Failures[k] += n
	}
	for pid, n := range o.PIDs {
		r.PIDs[pid] += n
	}
	r.Latency.Merge(&o.Latency)
	r.Moved.Merge(&o.Moved)
	r.Failed = append(r.Failed, o.Failed...)
	for _, e := range o.Errors {
		if len(r.Errors) < maxErrors {
			r.Errors = append(r.Errors, e)
		}
	}
}

// budget hands out the run's requests to the workers.
type budget struct {
	mu   sync.Mutex
	left int64
}

func (b *budget) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left <= 0 {
		return false
	}
	b.left--
	return true
}

type worker struct {
	cfg   Config
	mode  Mode
	start time.Time
	res   *Result
	tls   *tls.Config     // for TLS: the connections' configuration
	h2    *http.Transport // for HTTP/2: the transport, shared with other workers

	conn    net.Conn
	br      *bufio.Reader
	connPID int // the server pid that last answered on conn
}

func (w *worker) run(ctx context.Context, b *budget) {
	defer w.closeConn()
	next := time.Now()
	for ctx.Err() == nil && b.take() {
		if !w.pace(ctx, &next) {
			return
		}
		t0 := time.Now()
		pid, err := w.request()
		w.res.Requests++
		if err != nil {
			w.fail(t0, err)
			continue
		}
		took := time.Since(t0)
		w.res.OK++
		w.res.Latency.Record(took)
		w.res.PIDs[pid]++
		if w.conn != nil { // kept open
			if w.connPID != 0 && pid != w.connPID {
				w.res.Moved.Record(took)
			}
			w.connPID = pid
		}
	}
}

// pace waits until *next, the start of this client's next request, and
// moves *next on by the interval (from now, when the client is behind). It
// reports false if ctx ended first.
func (w *worker) pace(ctx context.Context, next *time.Time) bool {
	if w.cfg.Interval <= 0 {
		return true
	}
	if wait := time.Until(*next); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	*next = later(next.Add(w.cfg.Interval), time.Now())
	return true
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (w *worker) fail(t0 time.Time, err error) {
	w.closeConn()
	kind := classify(err)
	w.res.Failures[kind]++
	w.res.Failed = append(w.res.Failed, t0.Sub(w.start))
	if len(w.res.Errors) < maxErrors {
		w.res.Errors = append(w.res.Errors, fmt.Sprintf("%s at +%v (%s): %v", kind, t0.Sub(w.start).Round(time.Millisecond), t0.UTC().Format("15:04:05.000"), err))
	}
}

func (w *worker) closeConn() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.br, w.connPID = nil, nil, 0
	}
}

// statusError is a complete response with a status other than 200.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.code) }

// request sends one request and returns the pid on the first line of the
// response body.
func (w *worker) request() (int, error) {
	if w.h2 != nil {
		return w.requestH2()
	}
	deadline := time.Now().Add(w.cfg.Timeout)
	if w.conn == nil {
		c, err := w.dial(deadline)
		if err != nil {
			return 0, err
		}
		w.conn, w.br = c, bufio.NewReader(c)
		w.res.Conns++
	}
	w.conn.SetDeadline(deadline)
	closing := w.mode == NewConn
	req := "GET " + w.cfg.Path + " HTTP/1.1\r\nHost: " + w.cfg.Addr + "\r\n"
	if closing {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(w.conn, req+"\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		return 0, err
	}
	body, err := readOK(resp)
	if err != nil {
		return 0, err
	}
	if closing || resp.Close {
		w.closeConn()
	}
	return pidOf(body), nil
}

// dial opens a connection for HTTP/1.1, over TLS for the TLS protocol
// (the handshake done), by deadline.
func (w *worker) dial(deadline time.Time) (net.Conn, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := w.cfg.dialTCP(ctx, "tcp", w.cfg.Addr)
	if err != nil || w.tls == nil {
		return c, err
	}
	tc := tls.Client(c, w.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// dialTCP opens a TCP connection with cfg.Dial, or a net.Dialer.
func (cfg Config) dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	if cfg.Dial != nil {
		return cfg.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// readOK reads and closes the body of resp, a complete response only if
// its status is 200.
func readOK(resp *http.Response) ([]byte, error) {
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{resp.StatusCode}
	}
	return body, nil
}

// pidOf reads the pid on the first line of a response body, or 0.
func pidOf(body []byte) int {
	line, _, _ := strings.Cut(string(body), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func classify(err error) Kind {
	var se *statusError
	var re *retriedError
	switch {
	case errors.As(err, &re):
		return Retried
	case errors.As(err, &se):
		return Status
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return Timeout
	}
	// net/http's HTTP/2 errors are of unexported types: a stream the
	// server reset (RST_STREAM), and a connection it closed after its
	// GOAWAY with the stream unanswered.
	switch msg := err.Error(); {
	case strings.Contains(msg, "stream error:"):
		return Reset
	case strings.Contains(msg, "server sent GOAWAY and closed the connection"):
		return EOF
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Timeout
	}
	return Other
}
