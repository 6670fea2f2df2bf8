package loadgen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// protoServer answers "4242" over every protocol the load generator
// speaks, and 500 to a request that did not come over want.
func protoServer(t *testing.T, want Protocol) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := (r.ProtoMajor == 2); got != want.HTTP2() || (r.TLS != nil) != want.Secure() {
			http.Error(w, fmt.Sprintf("%s, TLS %v: not %s", r.Proto, r.TLS != nil, want), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "4242\nhello\n")
	}))
	var ps http.Protocols
	ps.SetHTTP1(true)
	ps.SetHTTP2(true)
	ps.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &ps
	if want.Secure() {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestRunProtocols: each protocol is spoken as asked, in every mode; on
// HTTP/2 with connections kept, Streams clients share one.
func TestRunProtocols(t *testing.T) {
	const n = 80
	for _, proto := range []Protocol{TLS, H2C, H2} {
		addr := protoServer(t, proto)
		for _, mode := range []Mode{KeepAlive, NewConn, Mixed} {
			t.Run(proto.String()+"/"+mode.String(), func(t *testing.T) {
				r := Run(context.Background(), Config{Addr: addr, Protocol: proto, Mode: mode, Workers: 8, Streams: 4, MaxRequests: n})
				if r.Requests != n || r.OK != n || r.FailedCount() != 0 || r.PIDs[4242] != n {
					t.Fatalf("%v (%v)", r, r.Errors)
				}
				keep := map[Mode]int64{KeepAlive: 8, NewConn: 0, Mixed: 4}[mode] // clients keeping connections
				if proto.HTTP2() {
					keep /= 4
				}
				// Mixed: the kept connection(s), and one per request of the other
				// half, which may get none of the shared budget on a busy machine.
				bounds := map[Mode][2]int64{KeepAlive: {keep, keep}, NewConn: {n, n}, Mixed: {keep, keep + n - 1}}[mode]
				if lo, hi := bounds[0], bounds[1]; r.Conns < lo || r.Conns > hi {
					t.Errorf("%d connections, want %d to %d", r.Conns, lo, hi)
				}
			})
		}
	}
}

// TestRunTLSConfig: a given TLS configuration is used, its roots checked.
func TestRunTLSConfig(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "7\n") }))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	trusted := x509.NewCertPool()
	trusted.AddCert(srv.Certificate())
	for _, tt := range []struct {
		name  string
		roots *x509.CertPool
		ok    bool
	}{{"trusted", trusted, true}, {"untrusted", x509.NewCertPool(), false}} {
		for _, proto := range []Protocol{TLS, H2} {
			t.Run(tt.name+"/"+proto.String(), func(t *testing.T) {
				r := Run(context.Background(), Config{Addr: addr, Protocol: proto, Workers: 1, MaxRequests: 2, TLSConfig: &tls.Config{RootCAs: tt.roots}})
				if tt.ok && r.PIDs[7] != 2 || !tt.ok && r.Failures[Other] != 2 {
					t.Fatalf("%v (%v), want ok %v", r, r.Errors, tt.ok)
				}
			})
		}
	}
}

// TestRunTLSClassifiesFailures: over TLS, a connection reset in the
// handshake is a reset, closed there an EOF.
func TestRunTLSClassifiesFailures(t *testing.T) {
	for _, tt := range []struct {
		name string
		fn   func(c *net.TCPConn)
		want Kind
	}{
		{"reset", func(c *net.TCPConn) { c.SetLinger(0); c.Close() }, Reset},
		{"eof", func(c *net.TCPConn) { c.Close() }, EOF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawServer(t, func(c *net.TCPConn, conn int) {
				var h [5]byte // the ClientHello's record header, then the rest
				if _, err := io.ReadFull(c, h[:]); err == nil {
					io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(h[3:])))
				}
				tt.fn(c)
			})
			r := Run(context.Background(), Config{Addr: addr, Protocol: TLS, Workers: 1, MaxRequests: 3})
			if r.Failures[tt.want] != 3 {
				t.Fatalf("%v, want 3 %s failures (%v)", r, tt.want, r.Errors)
			}
		})
	}
}

// rawServer runs a TCP server that treats the conn-th connection (from
// 0) with fn, which owns it.
func rawServer(t *testing.T, fn func(c *net.TCPConn, conn int)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c.(*net.TCPConn), n)
			}()
		}
	}()
	return ln.Addr().String()
}

// What the raw HTTP/2 server does with a stream.
type h2Action int

const (
	h2Answer       h2Action = iota // 200, body "4242"
	h2GoAwayBefore                 // GOAWAY naming the stream before: refused, and close
	h2GoAwayClose                  // GOAWAY naming the stream (accepted), then close unanswered
	h2Reset                        // RST_STREAM INTERNAL_ERROR
)

// rawH2C is an HTTP/2 server (prior knowledge) written by hand, frame by
// frame, that does with every stream on its conn-th connection what act
// says: net/http's server cannot be told to refuse a stream.
func rawH2C(t *testing.T, act func(conn int) h2Action) string {
	return rawServer(t, func(c *net.TCPConn, conn int) {
		write := func(typ, flags byte, stream uint32, payload []byte) {
			var h [9]byte
			h[0], h[1], h[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
			h[3], h[4] = typ, flags
			binary.BigEndian.PutUint32(h[5:], stream)
			c.Write(append(h[:], payload...))
		}
		goAway := func(last uint32) {
			write(0x7, 0, 0, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, last), 0))
		}
		if _, err := io.ReadFull(c, make([]byte, 24)); err != nil { // the client preface
			return
		}
		write(0x4, 0, 0, nil) // SETTINGS
		for {
			var h [9]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				return
			}
			n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
				return
			}
			typ, flags, stream := h[3], h[4], binary.BigEndian.Uint32(h[5:])&0x7fffffff
			switch {
			case typ == 0x4 && flags&0x1 == 0: // SETTINGS: ACK it
				write(0x4, 0x1, 0, nil)
			case typ == 0x1: // HEADERS: a request
				switch act(conn) {
				case h2Answer:
					write(0x1, 0x4, stream, []byte{0x88}) // END_HEADERS, HPACK ":status: 200"
					write(0x0, 0x1, stream, []byte("4242\n"))
				case h2GoAwayBefore:
					goAway(max(stream, 2) - 2)
					return
				case h2GoAwayClose:
					goAway(stream)
					return
				case h2Reset:
					write(0x3, 0, stream, binary.BigEndian.AppendUint32(nil, 0x2))
				}
			}
		}
	})
}

// TestRunH2CountsRetries: a stream that net/http's Transport sends again
// after a GOAWAY refused it counts as failed, kind retried, though the
// retry was answered; the server's other failures are classified as over
// HTTP/1.1.
func TestRunH2CountsRetries(t *testing.T) {
	tests := []struct {
		name  string
		act   func(conn int) h2Action
		want  map[Kind]int64
		ok    int64
		conns int64
	}{
		{"answered", func(int) h2Action { return h2Answer }, nil, 3, 1},
		{"refused once, answered on the retry", func(conn int) h2Action {
			if conn == 0 {
				return h2GoAwayBefore
			}
			return h2Answer
		}, map[Kind]int64{Retried: 1}, 2, 2},
		{"accepted, then closed", func(int) h2Action { return h2GoAwayClose }, map[Kind]int64{EOF: 3}, 0, 3},
		{"reset", func(int) h2Action { return h2Reset }, map[Kind]int64{Reset: 3}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawH2C(t, tt.act)
			r := Run(context.Background(), Config{Addr: addr, Protocol: H2C, Workers: 1, MaxRequests: 3})
			for _, k := range Kinds {
				if r.Failures[k] != tt.want[k] {
					t.Fatalf("%v, want %v failed, %d ok (%v)", r, tt.want, tt.ok, r.Errors)
				}
			}
			if r.OK != tt.ok || r.PIDs[4242] != tt.ok || r.Conns != tt.conns {
				t.Fatalf("%v, %d conns; want %d ok on %d conns (%v)", r, r.Conns, tt.ok, tt.conns, r.Errors)
			}
		})
	}
}

// TestRunDial: Config.Dial opens every connection, over every protocol,
// whatever Addr says (here a loopback port nothing listens on).
func TestRunDial(t *testing.T) {
	const n = 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := ln.Addr().String()
	ln.Close()
	for _, proto := range []Protocol{HTTP1, TLS, H2C, H2} {
		addr := protoServer(t, proto)
		t.Run(proto.String(), func(t *testing.T) {
			var mu sync.Mutex
			var dialed []string
			dial := func(ctx context.Context, network, to string) (net.Conn, error) {
				mu.Lock()
				dialed = append(dialed, network+" "+to)
				mu.Unlock()
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			}
			r := Run(context.Background(), Config{Addr: nowhere, Protocol: proto, Mode: NewConn, Workers: 1, MaxRequests: n, Dial: dial})
			if r.OK != n || r.FailedCount() != 0 || r.PIDs[4242] != n {
				t.Fatalf("%v (%v)", r, r.Errors)
			}
			if len(dialed) != n || dialed[0] != "tcp "+nowhere {
				t.Fatalf("Dial called %d times (%q), want %d for tcp %s", len(dialed), dialed, n, nowhere)
			}
		})
	}
}
