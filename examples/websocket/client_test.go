//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// wsClient is a WebSocket client on one connection that never
// reconnects and never retries: a close frame, a reset or an answer out
// of order is an error it reports.
type wsClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialWS(t testing.TB, addr string) *wsClient {
	t.Helper()
	return dial(t, ws.Dialer{}, "ws://"+addr+"/ws")
}

// dialWSS dials over TLS, trusting any certificate.
func dialWSS(t testing.TB, addr string) *wsClient {
	t.Helper()
	return dial(t, ws.Dialer{TLSConfig: &tls.Config{InsecureSkipVerify: true}}, "wss://"+addr+"/ws")
}

func dial(t testing.TB, d ws.Dialer, url string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return &wsClient{conn: conn, br: br}
}

// send sends a text message in one frame.
func (c *wsClient) send(msg string) error {
	return c.sendFrame(ws.OpText, true, msg)
}

// sendFrame sends one frame, masked, as a client must.
func (c *wsClient) sendFrame(op ws.OpCode, fin bool, payload string) error {
	b, err := c.frame(op, fin, payload)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(b)
	return err
}

func (c *wsClient) frame(op ws.OpCode, fin bool, payload string) ([]byte, error) {
	return ws.CompileFrame(ws.MaskFrame(ws.NewFrame(op, fin, []byte(payload))))
}

// errClosed is what read returns for a close frame from the server.
type errClosed struct {
	code   ws.StatusCode
	reason string
}

func (e *errClosed) Error() string { return fmt.Sprintf("close frame %d %q", e.code, e.reason) }

// read reads the next message from the server, within bound.
func (c *wsClient) read(bound time.Duration) (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(bound))
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return "", err
	}
	if h.Length > 1<<20 {
		return "", fmt.Errorf("a frame of %d bytes", h.Length)
	}
	f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
	if _, err := io.ReadFull(c.br, f.Payload); err != nil {
		return "", err
	}
	if f.Header.Masked {
		return "", errors.New("the server masked a frame")
	}
	switch f.Header.OpCode {
	case ws.OpText, ws.OpBinary:
		if !f.Header.Fin {
			return "", errors.New("the server fragmented an answer")
		}
		return string(f.Payload), nil
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(f.Payload)
		return "", &errClosed{code, reason}
	}
	return "", fmt.Errorf("unexpected frame %v", f.Header.OpCode)
}

// answer is one parsed answer, "PID MSG #N".
type answer struct {
	pid   int
	msg   string
	count uint64
}

func parseAnswer(s string) (answer, error) {
	sp := strings.IndexByte(s, ' ')
	hash := strings.LastIndex(s, " #")
	if sp < 0 || hash < sp {
		return answer{}, fmt.Errorf("answer %q is not PID MSG #N", s)
	}
	pid, err1 := strconv.Atoi(s[:sp])
	n, err2 := strconv.ParseUint(s[hash+2:], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return answer{}, fmt.Errorf("answer %q: %w", s, err)
	}
	return answer{pid: pid, msg: s[sp+1 : hash], count: n}, nil
}

// ask sends msg and reads its answer.
func (c *wsClient) ask(msg string) (answer, error) {
	if err := c.send(msg); err != nil {
		return answer{}, err
	}
	s, err := c.read(30 * time.Second)
	if err != nil {
		return answer{}, err
	}
	return parseAnswer(s)
}
