package loadgen

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
)

// HTTP/2 goes through net/http's Transport, which speaks h2c with prior
// knowledge and h2 by ALPN (Transport.Protocols, Go 1.24) without
// golang.org/x/net. It retries on its own, silently: a stream that a
// GOAWAY or REFUSED_STREAM refused, or that was sent on a connection that
// died, is sent again on another connection. A client that never retries
// would have failed it, so the load generator watches every request with
// httptrace and counts one that was written more than once as failed,
// kind Retried, whether the second attempt succeeded or not.

// h2pool owns the HTTP/2 transports of a run. Workers that keep
// connections share a transport Streams at a time, so that that many
// streams are in flight on each connection; workers that open a
// connection for every request share one transport that keeps none.
type h2pool struct {
	cfg        Config
	transports []*http.Transport
	group      *http.Transport // the keep-alive transport being filled
	members    int             // workers on group
	single     *http.Transport // for NewConn workers
}

// transport returns the transport for the next worker, in mode.
func (p *h2pool) transport(mode Mode) *http.Transport {
	if mode == NewConn {
		if p.single == nil {
			p.single = p.newTransport(true)
		}
		return p.single
	}
	if p.group == nil || p.members == p.cfg.Streams {
		p.group, p.members = p.newTransport(false), 0
	}
	p.members++
	return p.group
}

// newTransport returns a transport that speaks only the run's HTTP/2; with
// single, each connection carries one request.
func (p *h2pool) newTransport(single bool) *http.Transport {
	var protocols http.Protocols
	if p.cfg.Protocol == H2 {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	t := &http.Transport{
		Protocols:       &protocols,
		TLSClientConfig: p.cfg.tlsConfig(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			defer cancel()
			return p.cfg.dialTCP(ctx, network, addr)
		},
		TLSHandshakeTimeout: p.cfg.Timeout,
		DisableKeepAlives:   single,
		DisableCompression:  true,
	}
	p.transports = append(p.transports, t)
	return t
}

// close closes the connections of every transport; the run is over, so
// none is in use.
func (p *h2pool) close() {
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// attempts follows one request through the transport: each attempt gets
// a connection (GotConn) and, if it gets that far, writes the request's
// headers (WroteHeaders), in a goroutine of the transport's.
type attempts struct {
	conns, wrote atomic.Int32
	fresh        atomic.Int32 // connections that carry their first request
	resent       atomic.Bool  // an attempt after one that had written the request
}

func (a *attempts) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		// The transport may dial more connections than it uses (requests
		// that start together each dial one, and all but one are closed):
		// a connection counts once it carries a request.
		GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				a.fresh.Add(1)
			}
			if a.conns.Add(1) > 1 && a.wrote.Load() > 0 {
				a.resent.Store(true)
			}
		},
		WroteHeaders: func() {
			if a.wrote.Add(1) > 1 {
				a.resent.Store(true)
			}
		},
	}
}

// retried is a request that the transport wrote more than once.
type retriedError struct{ err error }

func (e *retriedError) Error() string {
	if e.err == nil {
		return "sent again by the transport (answered on the retry)"
	}
	return fmt.Sprintf("sent again by the transport: %v", e.err)
}

func (e *retriedError) Unwrap() error { return e.err }

// requestH2 sends one request over HTTP/2 and returns the pid on the
// first line of the response body. A request that the transport moved to
// another connection before writing it, because the one it had picked
// was going away, reached no server before and is no failure: it is
// counted in Rerouted.
func (w *worker) requestH2() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	var a attempts
	scheme := "http"
	if w.cfg.Protocol == H2 {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, a.trace()), http.MethodGet, scheme+"://"+w.cfg.Addr+w.cfg.Path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := w.h2.RoundTrip(req)
	w.res.Conns += int64(a.fresh.Load())
	if a.resent.Load() {
		if err == nil {
			resp.Body.Close()
		}
		return 0, &retriedError{err}
	}
	if a.conns.Load() > 1 {
		w.res.Rerouted++
	}
	if err != nil {
		return 0, err
	}
	if resp.ProtoMajor != 2 {
		resp.Body.Close()
		return 0, fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
	}
	body, err := readOK(resp)
	if err != nil {
		return 0, err
	}
	return pidOf(body), nil
}
