package handoff

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// HTTP/2 frame types and flags the raw client below uses.
const (
	h2Data         = 0x0
	h2Headers      = 0x1
	h2RSTStream    = 0x3
	h2Settings     = 0x4
	h2FlagEndStrm  = 0x1
	h2FlagEndHdrs  = 0x4
	h2StatusOKHPAK = 0x88 // HPACK: indexed ":status: 200"
)

// h2Frame is one frame as the raw client read it.
type h2Frame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
}

// h2Client is an HTTP/2 client on one raw connection that writes and reads
// frames by hand: it never retries, and it sends a stream whenever the
// test says, whatever GOAWAY it has read.
type h2Client struct {
	c       net.Conn
	scheme  string
	wmu     sync.Mutex
	frames  chan h2Frame // closed when reading fails
	done    chan struct{}
	started bool

	mu    sync.Mutex
	order []byte // the types of the frames read, in order
}

func dialH2(t *testing.T, addr string, tlsConf *tls.Config) *h2Client {
	t.Helper()
	h := connectH2(t, addr)
	h.start(t, tlsConf)
	return h
}

// connectH2 opens the TCP connection only: start speaks on it.
func connectH2(t *testing.T, addr string) *h2Client {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2Client{c: raw, scheme: "http", frames: make(chan h2Frame, 64), done: make(chan struct{})}
	t.Cleanup(func() {
		raw.Close()
		if h.started {
			<-h.done
		}
	})
	return h
}

// start does the TLS handshake (ALPN h2) when tlsConf is set, sends the
// client preface and SETTINGS, and starts reading frames.
func (h *h2Client) start(t *testing.T, tlsConf *tls.Config) {
	t.Helper()
	if tlsConf != nil {
		tc := tls.Client(h.c, tlsConf)
		tc.SetDeadline(time.Now().Add(waitBound))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tc.SetDeadline(time.Time{})
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN chose %q, not h2", p)
		}
		h.c, h.scheme = tc, "https"
	}
	h.write(t, []byte(clientPreface))
	h.writeFrame(t, h2Settings, 0, 0, nil)
	h.started = true
	go h.read()
}

func (h *h2Client) read() {
	defer close(h.done)
	defer close(h.frames)
	for {
		var hdr [frameHeaderLen]byte
		if _, err := io.ReadFull(h.c, hdr[:]); err != nil {
			return
		}
		f := h2Frame{typ: hdr[3], flags: hdr[4], stream: binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1)}
		f.payload = make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(h.c, f.payload); err != nil {
			return
		}
		h.mu.Lock()
		h.order = append(h.order, f.typ)
		h.mu.Unlock()
		h.frames <- f
	}
}

func (h *h2Client) write(t *testing.T, b []byte) {
	t.Helper()
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.c.SetWriteDeadline(time.Now().Add(waitBound))
	if _, err := h.c.Write(b); err != nil {
		t.Fatalf("client write: %v", err)
	}
}

func (h *h2Client) writeFrame(t *testing.T, typ, flags byte, stream uint32, payload []byte) {
	t.Helper()
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
	b = binary.BigEndian.AppendUint32(b, stream)
	h.write(t, append(b, payload...))
}

// get opens stream id with GET path, headers and END_STREAM in one frame.
// The header block is HPACK without Huffman or indexing.
func (h *h2Client) get(t *testing.T, id uint32, path string) {
	t.Helper()
	block := []byte{0x82} // :method: GET
	if h.scheme == "https" {
		block = append(block, 0x87)
	} else {
		block = append(block, 0x86)
	}
	literal := func(nameIndex byte, v string) {
		block = append(block, nameIndex, byte(len(v)))
		block = append(block, v...)
	}
	literal(0x04, path)   // :path
	literal(0x01, "test") // :authority
	h.writeFrame(t, h2Headers, h2FlagEndHdrs|h2FlagEndStrm, id, block)
}

// next returns the next frame, answering PINGs and SETTINGS on the way
// unless answerPing is false; ok is false once the connection is closed.
func (h *h2Client) next(t *testing.T, answerPing bool) (f h2Frame, ok bool) {
	t.Helper()
	for {
		select {
		case f, ok = <-h.frames:
		case <-time.After(waitBound):
			t.Fatalf("no frame from the server in %v", waitBound)
		}
		if !ok {
			return f, false
		}
		switch {
		case f.typ == h2Settings && f.flags&flagAck == 0:
			h.writeFrame(t, h2Settings, flagAck, 0, nil)
			continue
		case f.typ == framePing && f.flags&flagAck == 0 && answerPing:
			h.writeFrame(t, framePing, flagAck, 0, f.payload)
		}
		return f, true
	}
}

// startH2 serves h on a fresh loopback listener over h2c, or over TLS
// with ALPN h2 when tlsOn; it returns the address and the client's TLS
// config (nil for h2c). hook, if set, is the server's ConnState.
func startH2(t *testing.T, h http.Handler, hook func(net.Conn, http.ConnState), tlsOn bool) (*HTTPServer, string, *tls.Config) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	srv := &HTTPServer{Server: &http.Server{Handler: h, Protocols: &p, ConnState: hook}}
	served := make(chan error, 1)
	var clientConf *tls.Config
	if tlsOn {
		srv.Server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{testbed.SelfSigned(t)}}
		clientConf = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}
		go func() { served <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { served <- srv.Serve(ln) }()
	}
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-served:
			if err != http.ErrServerClosed {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(waitBound):
			t.Errorf("Serve did not return in %v", waitBound)
		}
	})
	return srv, ln.Addr().String(), clientConf
}

// TestHTTP2DrainRefusesNoStream: a stream the client opens after the
// drain's first GOAWAY, before it answered the PING, is served, not
// refused, over h2c and over TLS. net/http's single GOAWAY alone names
// the highest stream read so far and ignores the later one.
func TestHTTP2DrainRefusesNoStream(t *testing.T) {
	for _, tt := range []struct {
		name string
		tls  bool
	}{{"h2c", false}, {"tls", true}} {
		t.Run(tt.name, func(t *testing.T) {
			handler, entered, release := slowPath("old")
			srv, addr, clientConf := startH2(t, handler, nil, tt.tls)
			cl := dialH2(t, addr, clientConf)
			cl.get(t, 1, "/slow")
			select {
			case <-entered:
			case <-time.After(waitBound):
				t.Fatalf("/slow not served in %v", waitBound)
			}

			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitBound)
				defer cancel()
				shut <- srv.Shutdown(ctx)
			}()

			var goAways []uint32
			var f h2Frame
			ok := true
			for ok && f.typ != frameGoAway {
				// The PING is the next frame: not answered yet.
				f, ok = cl.next(t, false)
			}
			if !ok {
				t.Fatal("connection closed before a GOAWAY")
			}
			goAways = append(goAways, binary.BigEndian.Uint32(f.payload)&(1<<31-1))
			// A stream already on its way when the GOAWAY arrived.
			cl.get(t, 3, "/late")
			close(release)

			status := map[uint32]string{}
			ended := map[uint32]bool{}
			for ok && !(ended[1] && ended[3]) {
				if f, ok = cl.next(t, true); !ok {
					break
				}
				switch f.typ {
				case frameGoAway:
					goAways = append(goAways, binary.BigEndian.Uint32(f.payload)&(1<<31-1))
				case h2Headers:
					if len(f.payload) > 0 && f.payload[0] == h2StatusOKHPAK {
						status[f.stream] = "200"
					} else {
						status[f.stream] = fmt.Sprintf("not 200: % x", f.payload)
					}
					ended[f.stream] = ended[f.stream] || f.flags&h2FlagEndStrm != 0
				case h2Data:
					ended[f.stream] = ended[f.stream] || f.flags&h2FlagEndStrm != 0
				case h2RSTStream:
					status[f.stream] = fmt.Sprintf("reset: % x", f.payload)
					ended[f.stream] = true
				}
			}
			if goAways[0] != 1<<31-1 {
				t.Errorf("first GOAWAY's last-stream-id %d, not 2^31-1: stream 3 is refused", goAways[0])
			}
			for _, id := range []uint32{1, 3} {
				if status[id] != "200" || !ended[id] {
					t.Errorf("stream %d: status %q, ended %v; want a whole 200 (GOAWAYs: %v)", id, status[id], ended[id], goAways)
				}
			}
			if last := goAways[len(goAways)-1]; last < 3 {
				t.Errorf("last GOAWAY's last-stream-id %d leaves stream 3 out (GOAWAYs: %v)", last, goAways)
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(waitBound):
				t.Fatalf("Shutdown did not return in %v", waitBound)
			}
		})
	}
}

// TestH2ConnInjectsAtFrameBoundary: phase 1's frames go out whole,
// between two whole frames of what the server writes and after its first,
// however the server's writes cut its frames.
func TestH2ConnInjectsAtFrameBoundary(t *testing.T) {
	frame := func(typ byte, n int) []byte {
		b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, 0, 0, 0, 0, 1}
		return append(b, bytes.Repeat([]byte{typ}, n)...)
	}
	var stream []byte
	var frames [][]byte
	for i, n := range []int{6, 0, 1000, 17, 16384, 3, 0, 40000} {
		f := frame(byte(i+1), n)
		frames = append(frames, f)
		stream = append(stream, f...)
	}
	for _, tt := range []struct {
		name    string
		chunk   int // the server's writes: chunk bytes each
		drainAt int // startDrain before the write that starts here
	}{
		{"before the first frame", 5, 0},
		{"mid-frame", 7, 1000},
		{"whole writes", len(stream), 0},
		{"large writes", 4096, 8192},
		{"byte by byte", 1, 20000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			got := make(chan []byte, 1)
			go func() {
				all, _ := io.ReadAll(b)
				got <- all
			}()
			c := newH2Conn(a, false)
			for i := 0; i < len(stream); i += tt.chunk {
				if i >= tt.drainAt && !c.pending.Load() {
					c.startDrain()
				}
				end := min(i+tt.chunk, len(stream))
				if n, err := c.Write(stream[i:end]); n != end-i || err != nil {
					t.Fatalf("Write: %d of %d, %v", n, end-i, err)
				}
			}
			a.Close()
			out := <-got
			i := bytes.Index(out, drainFrames)
			if i < 0 || bytes.Count(out, drainFrames) != 1 {
				t.Fatalf("phase 1's frames not written exactly once")
			}
			if rest := append(out[:i:i], out[i+len(drainFrames):]...); !bytes.Equal(rest, stream) {
				t.Fatalf("the server's bytes changed")
			}
			at := 0
			for k, f := range frames {
				if at == i {
					if k == 0 {
						t.Fatalf("injected before the server's first frame")
					}
					return
				}
				at += len(f)
				if at > i {
					t.Fatalf("injected inside frame %d", k)
				}
			}
			if at != i {
				t.Fatalf("injected at %d, past the end", i)
			}
		})
	}
}

// TestHTTP2WrappedConnection: behind the drain's wrapping, handlers still
// see HTTP/2 and the TLS state, and Server.ConnState hooks the connection
// net/http accepted, not the wrapping.
func TestHTTP2WrappedConnection(t *testing.T) {
	for _, tt := range []struct {
		name string
		tls  bool
	}{{"h2c", false}, {"tls", true}} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var hooked []string
			srv, addr, clientConf := startH2(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%d %v", r.ProtoMajor, r.TLS != nil)
			}), func(c net.Conn, st http.ConnState) {
				mu.Lock()
				defer mu.Unlock()
				hooked = append(hooked, fmt.Sprintf("%T", c))
			}, tt.tls)
			tr := &http.Transport{TLSClientConfig: clientConf}
			defer tr.CloseIdleConnections()
			var p http.Protocols
			url := "http://" + addr + "/"
			if tt.tls {
				p.SetHTTP2(true)
				url = "https://" + addr + "/"
			} else {
				p.SetUnencryptedHTTP2(true)
			}
			tr.Protocols = &p
			resp, err := (&http.Client{Transport: tr, Timeout: waitBound}).Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("2 %v", tt.tls); string(body) != want {
				t.Errorf("handler saw %q, want %q", body, want)
			}
			srv.mu.Lock()
			wrapped := 0
			for _, ct := range srv.conns {
				if ct.h2c != nil {
					wrapped++
				}
			}
			srv.mu.Unlock()
			if wrapped != 1 {
				t.Errorf("%d wrapped HTTP/2 connections, want 1", wrapped)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, typ := range hooked {
				if typ == "*handoff.h2Conn" || typ == "handoff.h2TLSConn" {
					t.Errorf("ConnState got the wrapping %s (hooks: %v)", typ, hooked)
				}
			}
		})
	}
}

// TestHTTP2DrainLateConnection: a connection accepted before the drain
// that starts speaking HTTP/2 only during it gets phase 1 too, after the
// server's SETTINGS, and its stream is served.
func TestHTTP2DrainLateConnection(t *testing.T) {
	for _, tt := range []struct {
		name string
		tls  bool
	}{{"h2c", false}, {"tls", true}} {
		t.Run(tt.name, func(t *testing.T) {
			srv, addr, clientConf := startH2(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, "late")
			}), nil, tt.tls)
			cl := connectH2(t, addr)
			waitFor(t, "the connection to be accepted", func() bool {
				srv.mu.Lock()
				defer srv.mu.Unlock()
				return len(srv.conns) == 1
			})
			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitBound)
				defer cancel()
				shut <- srv.Shutdown(ctx)
			}()
			waitFor(t, "the drain to start", srv.draining.Load)
			cl.start(t, clientConf)
			for f, ok := cl.next(t, false); ok && f.typ != framePing; f, ok = cl.next(t, false) {
				if f.typ == frameGoAway && binary.BigEndian.Uint32(f.payload)&(1<<31-1) != 1<<31-1 {
					t.Fatalf("GOAWAY with last-stream-id %d before the PING", binary.BigEndian.Uint32(f.payload))
				}
			}
			cl.mu.Lock()
			seen := bytes.Clone(cl.order)
			cl.mu.Unlock()
			if i := bytes.IndexByte(seen, framePing); i >= 0 {
				seen = seen[:i+1] // the reader reads on
			}
			if len(seen) < 3 || seen[0] != h2Settings || seen[len(seen)-2] != frameGoAway || seen[len(seen)-1] != framePing {
				t.Fatalf("frame types up to the PING: %v; want the server's SETTINGS first, then phase 1's GOAWAY and PING", seen)
			}
			cl.get(t, 1, "/")
			cl.writeFrame(t, framePing, flagAck, 0, drainPingData[:])
			served := false
			for f, ok := cl.next(t, true); ok; f, ok = cl.next(t, true) {
				if f.stream == 1 && f.typ == h2Headers && len(f.payload) > 0 && f.payload[0] == h2StatusOKHPAK {
					served = true
				}
			}
			if !served {
				t.Error("stream 1, sent after phase 1 and before the ACK, got no 200")
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(waitBound):
				t.Fatalf("Shutdown did not return in %v", waitBound)
			}
		})
	}
}

// TestH2ConnAckOnlyOnceProcessed: the drain's PING ACK counts only once
// the server comes back to read past it (it has then processed every
// frame before), however the reads cut it; another PING ACK, or a PING
// with the drain's data but no ACK flag, does not count. Over TLS the
// client preface is read and checked first.
func TestH2ConnAckOnlyOnceProcessed(t *testing.T) {
	frame := func(typ, flags byte, payload []byte) []byte {
		b := []byte{0, 0, byte(len(payload)), typ, flags, 0, 0, 0, 0}
		return append(b, payload...)
	}
	other := []byte("otherpng")
	var in []byte
	in = append(in, frame(h2Settings, 0, nil)...)
	in = append(in, frame(framePing, flagAck, other)...)
	in = append(in, frame(framePing, 0, drainPingData[:])...)
	in = append(in, frame(h2Data, 0, drainPingData[:])...)
	notYet := len(in)
	in = append(in, frame(framePing, flagAck, drainPingData[:])...)
	ackEnd := len(in)
	in = append(in, frame(h2Settings, flagAck, nil)...)
	for _, tt := range []struct {
		name    string
		preface bool
		chunk   int
	}{{"frame reads", false, 9}, {"byte reads", false, 1}, {"large reads", false, 4096}, {"preface first", true, 7}} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			stream := in
			if tt.preface {
				stream = append([]byte(clientPreface), in...)
			}
			go func() {
				b.Write(stream)
				b.Close()
			}()
			c := newH2Conn(a, tt.preface)
			read := 0
			buf := make([]byte, tt.chunk)
			for read < len(in) {
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("Read after %d bytes: %v", read, err)
				}
				// A Read that begins past the ACK: the server processed it.
				if acked := c.drainAcked(); acked != (read >= ackEnd) {
					t.Fatalf("a Read from byte %d (the ACK ends at %d): acked %v", read, ackEnd, acked)
				}
				if !bytes.Equal(buf[:n], in[read:read+n]) {
					t.Fatalf("Read after %d bytes changed what it read", read)
				}
				read += n
				if read <= notYet && c.ackFound {
					t.Fatalf("an ACK found in the %d bytes before the drain's", read)
				}
			}
		})
	}
	t.Run("bogus preface", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go b.Write([]byte(strings.Repeat("x", len(clientPreface))))
		if _, err := newH2Conn(a, true).Read(make([]byte, 9)); err == nil {
			t.Fatal("Read accepted a bogus client preface")
		}
	})
}
