package main

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gobwas/ws"
)

// stateVersion is the first byte of a session's state; a successor that
// does not know it closes the connection rather than guess.
const stateVersion = 1

// The state a session moves with, in the blob SendConn carries:
//
//	version  1 byte (stateVersion)
//	count    8 bytes, big endian
//	msg      1 byte: 0 no fragmented message begun, else its opcode + 1
//	msglen   4 bytes, big endian, then the fragments' payload so far
//	in       the rest: bytes read from the connection and not answered
const stateHeader = 1 + 8 + 1 + 4

// state encodes what a successor needs to resume sess.
func (sess *session) state() []byte {
	b := make([]byte, 0, stateHeader+len(sess.msg.data)+len(sess.in))
	b = append(b, stateVersion)
	b = binary.BigEndian.AppendUint64(b, sess.count)
	op := byte(0)
	if sess.msg.started {
		op = byte(sess.msg.op) + 1
	}
	b = append(b, op)
	b = binary.BigEndian.AppendUint32(b, uint32(len(sess.msg.data)))
	b = append(b, sess.msg.data...)
	return append(b, sess.in...)
}

// decodeState is state's inverse; the session it returns has no
// connection yet.
func decodeState(b []byte) (*session, error) {
	if len(b) < stateHeader {
		return nil, errors.New("state too short")
	}
	if b[0] != stateVersion {
		return nil, fmt.Errorf("state version %d, want %d", b[0], stateVersion)
	}
	sess := &session{count: binary.BigEndian.Uint64(b[1:9])}
	op := b[9]
	n := binary.BigEndian.Uint32(b[10:14])
	rest := b[stateHeader:]
	if uint64(n) > uint64(len(rest)) || n > maxMessage {
		return nil, fmt.Errorf("state's message of %d bytes in %d", n, len(rest))
	}
	if op != 0 {
		sess.msg = fragments{started: true, op: ws.OpCode(op - 1), data: append([]byte(nil), rest[:n]...)}
	} else if n != 0 {
		return nil, errors.New("state has fragments but no message")
	}
	sess.in = append([]byte(nil), rest[n:]...)
	return sess, nil
}
