package main

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// TestStateRoundTrip: what a session moves with comes out as it went in.
func TestStateRoundTrip(t *testing.T) {
	for _, sess := range []*session{
		{},
		{count: 7, in: []byte{0x81, 0x85}},
		{count: 1 << 40, in: []byte("rest"), msg: fragments{started: true, op: ws.OpText, data: []byte("so far")}},
		{count: 3, msg: fragments{started: true, op: ws.OpBinary}},
	} {
		got, err := decodeState(sess.state())
		if err != nil {
			t.Fatalf("%+v: %v", sess, err)
		}
		if got.count != sess.count || !bytes.Equal(got.in, sess.in) || got.msg.started != sess.msg.started ||
			got.msg.op != sess.msg.op || !bytes.Equal(got.msg.data, sess.msg.data) {
			t.Fatalf("%+v came back as %+v", sess, got)
		}
	}
}

// TestStateRefused: a state this program did not write is refused, not
// guessed at.
func TestStateRefused(t *testing.T) {
	good := (&session{count: 1, msg: fragments{started: true, data: []byte("abc")}}).state()
	bad := map[string][]byte{
		"empty":            nil,
		"short":            good[:stateHeader-1],
		"other version":    append([]byte{stateVersion + 1}, good[1:]...),
		"message too long": good[:stateHeader+2],
		"data, no message": (&session{msg: fragments{data: []byte("x")}}).state(),
	}
	for name, b := range bad {
		if _, err := decodeState(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestNextFrameWaitsForWholeFrame: cut anywhere, a frame is whole only
// with its last byte; the bytes after it stay for the next.
func TestNextFrameWaitsForWholeFrame(t *testing.T) {
	for _, size := range []int{0, 5, 125, 126, 300, maxMessage} {
		f, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame(bytes.Repeat([]byte("x"), size))))
		if err != nil {
			t.Fatal(err)
		}
		buf := append(f, 0x81) // and the first byte of the next frame
		for cut := 0; cut < len(f); cut++ {
			if _, _, n, err := nextFrame(buf[:cut]); n != 0 || err != nil {
				t.Fatalf("size %d cut at %d: a frame of %d, %v", size, cut, n, err)
			}
		}
		h, payload, n, err := nextFrame(buf)
		if err != nil || n != len(f) || len(payload) != size || h.OpCode != ws.OpText {
			t.Fatalf("size %d: frame of %d (want %d), payload %d, %v", size, n, len(f), len(payload), err)
		}
	}
	huge := []byte{0x81, 0xff, 0, 0, 0, 0, 0x7f, 0, 0, 0, 1, 2, 3, 4} // 2 GB declared
	if _, _, _, err := nextFrame(huge); err == nil {
		t.Fatal("a frame over maxMessage was not refused")
	}
}
