package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

const (
	// readSize is how much one Read asks for.
	readSize = 32 << 10
	// maxMessage bounds a message, fragments and all; a larger one is
	// refused with 1009. At a frame boundary a session holds at most the
	// fragments of one message and the start of one frame, so that its
	// state stays under 2*maxMessage and fits the 256 KiB a conn message
	// of the handoff protocol carries (PROTOCOL.md).
	maxMessage = 64 << 10
	// writeTimeout bounds one answer's write: a client that reads
	// nothing for this long is cut off.
	writeTimeout = 10 * time.Second
	// closeTimeout bounds the wait for the client's side of a closing
	// handshake.
	closeTimeout = 2 * time.Second
)

// errClientClosed: the client sent a close frame, and was answered.
var errClientClosed = errors.New("the client closed the WebSocket")

// A protocolError closes the connection with its code.
type protocolError struct {
	code   ws.StatusCode
	reason string
}

func (e *protocolError) Error() string { return fmt.Sprintf("%d %s", e.code, e.reason) }

// A session is one WebSocket. Everything a successor needs to resume it
// is here, and state encodes it: the connection is always either waiting
// for bytes or between two frames, so the frames it has read but not
// answered are all in in, and nothing else of the connection's is
// anywhere but in the kernel.
type session struct {
	conn net.Conn
	// count is how many messages have been answered on this WebSocket,
	// by this process and its predecessors: the per-connection state.
	count uint64
	// in is what was read from conn and not yet answered: whole frames,
	// then at most the start of one.
	in []byte
	// msg is a fragmented message begun: its opcode and the payload
	// of the fragments so far (unmasked). Zero when none is.
	msg fragments
}

type fragments struct {
	started bool
	op      ws.OpCode
	data    []byte
}

// midMessage reports whether the client is in the middle of sending a
// message: a frame not yet whole, or fragments without the last.
func (sess *session) midMessage() bool { return len(sess.in) > 0 || sess.msg.started }

// answerBuffered handles every whole frame in sess.in and keeps what
// follows them.
func (sess *session) answerBuffered(pid int) error {
	used := 0
	defer func() { sess.in = append(sess.in[:0], sess.in[used:]...) }()
	for {
		h, payload, n, err := nextFrame(sess.in[used:])
		if err != nil || n == 0 {
			return err
		}
		if err := sess.handle(pid, h, payload); err != nil {
			return err
		}
		used += n
	}
}

// nextFrame returns the first frame in b and its length in b, or n == 0
// if b does not hold a whole frame yet.
func nextFrame(b []byte) (h ws.Header, payload []byte, n int, err error) {
	r := bytes.NewReader(b)
	h, err = ws.ReadHeader(r)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return h, nil, 0, nil
	}
	if err != nil {
		return h, nil, 0, &protocolError{ws.StatusProtocolError, err.Error()}
	}
	if h.Length > maxMessage {
		return h, nil, 0, &protocolError{ws.StatusMessageTooBig, "message too big"}
	}
	start := len(b) - r.Len()
	end := start + int(h.Length)
	if len(b) < end {
		return h, nil, 0, nil
	}
	return h, b[start:end], end, nil
}

// handle acts on one frame from the client.
func (sess *session) handle(pid int, h ws.Header, payload []byte) error {
	st := ws.StateServerSide
	if sess.msg.started {
		st |= ws.StateFragmented
	}
	// CheckHeader also refuses a frame out of place in a fragmented
	// message, and RSV bits: no extension was negotiated.
	if err := ws.CheckHeader(h, st); err != nil {
		return &protocolError{ws.StatusProtocolError, err.Error()}
	}
	ws.Cipher(payload, h.Mask, 0)
	switch h.OpCode {
	case ws.OpText, ws.OpBinary:
		if !h.Fin {
			sess.msg = fragments{started: true, op: h.OpCode, data: append([]byte(nil), payload...)}
			return nil
		}
		return sess.answer(pid, h.OpCode, payload)
	case ws.OpContinuation:
		if len(sess.msg.data)+len(payload) > maxMessage {
			return &protocolError{ws.StatusMessageTooBig, "message too big"}
		}
		sess.msg.data = append(sess.msg.data, payload...)
		if !h.Fin {
			return nil
		}
		op, data := sess.msg.op, sess.msg.data
		sess.msg = fragments{}
		return sess.answer(pid, op, data)
	case ws.OpPing:
		return sess.write(ws.NewPongFrame(payload))
	case ws.OpPong:
		return nil
	case ws.OpClose:
		// Echo the status code, as RFC 6455 section 5.5.1 suggests.
		code, _ := ws.ParseCloseFrameData(payload)
		sess.write(ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
		return errClientClosed
	}
	return &protocolError{ws.StatusProtocolError, "unknown opcode"}
}

// answer answers message X with "PID X #N", N counting the messages
// answered on this WebSocket.
func (sess *session) answer(pid int, op ws.OpCode, msg []byte) error {
	if op == ws.OpText && !utf8.Valid(msg) {
		return &protocolError{ws.StatusInvalidFramePayloadData, "text message not UTF-8"}
	}
	sess.count++
	out := make([]byte, 0, len(msg)+32)
	out = strconv.AppendInt(out, int64(pid), 10)
	out = append(out, ' ')
	out = append(out, msg...)
	out = append(out, " #"...)
	out = strconv.AppendUint(out, sess.count, 10)
	return sess.write(ws.NewFrame(op, true, out))
}

// write sends f whole, in one write: a session is never handed over or
// closed in the middle of a frame it sends.
func (sess *session) write(f ws.Frame) error {
	b, err := ws.CompileFrame(f)
	if err != nil {
		return err
	}
	sess.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = sess.conn.Write(b)
	return err
}

// closeWith starts the closing handshake with code, waits (bounded) for
// the client's close frame, and closes the connection.
func (sess *session) closeWith(code ws.StatusCode, reason string) {
	defer sess.conn.Close()
	if err := sess.write(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason))); err != nil {
		return
	}
	sess.conn.SetReadDeadline(time.Now().Add(closeTimeout))
	buf := make([]byte, readSize)
	for {
		for {
			h, _, n, err := nextFrame(sess.in)
			if err != nil || n == 0 {
				break
			}
			sess.in = sess.in[n:]
			if h.OpCode == ws.OpClose {
				return
			}
		}
		n, err := sess.conn.Read(buf)
		sess.in = append(sess.in, buf[:n]...)
		if err != nil {
			return
		}
	}
}
