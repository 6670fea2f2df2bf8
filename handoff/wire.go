package handoff

import (
	"encoding/binary"
	"fmt"
)

// The wire codec is pure: it turns messages into bytes and back, and knows
// nothing about sockets or file descriptors. PROTOCOL.md is its
// specification; keep the two in step.

const wireMagic uint32 = 0x484f4646 // "HOFF"

const (
	headerSize = 12 // magic u32, version u16, type u16, length u32

	// protocolVersion is the only version this package speaks. A peer
	// offers a range in its hello; the serving side picks the highest
	// version both understand.
	protocolVersion uint16 = 1

	// maxMessageSize bounds every message, header included. fd batches
	// are split so that they stay well below it.
	maxMessageSize = 256 << 10

	// maxStringLen bounds every string field (names, networks,
	// addresses, refusal reasons).
	maxStringLen = 4096

	// maxFDsPerMessage is the kernel's limit on descriptors in one
	// SCM_RIGHTS message (SCM_MAX_FD).
	maxFDsPerMessage = 253

	// maxBatchPayload bounds the encoded entries of one fd batch, so a
	// batch of long unix paths is split before it nears maxMessageSize.
	maxBatchPayload = 64 << 10
)

// capabilities advertised in hello and welcome.
const (
	// capConns: the peer can send or receive established connections
	// after the handover (msgConn / msgConnAck).
	capConns uint64 = 1 << 0

	supportedCaps = capConns
)

type msgType uint16

const (
	msgHello   msgType = 1  // successor → serving: who I am, versions I speak
	msgWelcome msgType = 2  // serving → successor: accepted; how many sockets follow
	msgRefuse  msgType = 3  // either way: no, and why; the sender then closes
	msgFDs     msgType = 4  // serving → successor: a batch of socket entries + fds
	msgAck     msgType = 5  // successor → serving: batch received
	msgReady   msgType = 6  // successor → serving: I serve; stop accepting
	msgDone    msgType = 7  // serving → successor: stopped accepting; draining
	msgConn    msgType = 8  // serving → successor: one established connection + fd
	msgConnAck msgType = 9  // successor → serving: connection taken (or not)
	msgRequest msgType = 10 // client → serving, instead of hello: run a request
	msgReply   msgType = 11 // serving → client: progress, then the final answer
)

func (t msgType) String() string {
	switch t {
	case msgHello:
		return "hello"
	case msgWelcome:
		return "welcome"
	case msgRefuse:
		return "refuse"
	case msgFDs:
		return "fds"
	case msgAck:
		return "ack"
	case msgReady:
		return "ready"
	case msgDone:
		return "done"
	case msgConn:
		return "conn"
	case msgConnAck:
		return "conn-ack"
	case msgRequest:
		return "request"
	case msgReply:
		return "reply"
	}
	return fmt.Sprintf("type(%d)", uint16(t))
}

// A message is one protocol message. fds travel beside it, never in it.
type message interface {
	msgType() msgType
	appendBody(b []byte) []byte
}

type hello struct {
	MinVersion uint16
	MaxVersion uint16
	Caps       uint64
	PID        uint32
	Name       string
}

type welcome struct {
	Version    uint16
	Caps       uint64
	PID        uint32
	Generation uint32
	Sockets    uint32 // total number of entries (and fds) in the batches that follow
}

type refusal struct {
	Code   RefusalCode
	Reason string
}

// sockKind says what a passed descriptor is.
type sockKind uint8

const (
	kindListener sockKind = 1 // stream listener: tcp, unix
	kindPacket   sockKind = 2 // datagram socket: udp, unixgram
	kindControl  sockKind = 3 // the control socket's own listener
)

func (k sockKind) String() string {
	switch k {
	case kindListener:
		return "listener"
	case kindPacket:
		return "packet"
	case kindControl:
		return "control"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// An entry describes one socket in the inventory.
type entry struct {
	Kind    sockKind
	Network string // as given to Listen: "tcp", "udp6", "unix", ...
	Address string // as given to Listen, so ":0" finds its socket again
	Name    string // optional name (systemd FileDescriptorName=)
}

type fdBatch struct {
	Seq     uint32
	Entries []entry // one fd per entry rides along in SCM_RIGHTS, in order
}

type ack struct{ Seq uint32 }

type ready struct {
	PID  uint32
	Keys []string // socket keys the successor serves; connections for them may follow
}

type done struct{}

type connMsg struct {
	ID    uint64
	Key   string // socket key the connection was accepted on; "" for AcceptConn
	State []byte // opaque application state
}

type connAck struct {
	ID     uint64
	OK     bool
	Reason string
}

type request struct {
	Name string // "reload" or "status"
}

// reply answers a request: progress lines, then a final reply on success.
// A failed request gets a refusal instead.
type reply struct {
	Final bool   // the last reply; before it, progress lines
	Text  string // a progress line, or the outcome
	Data  []byte // with Final: the request's result (status: JSON)
}

func (hello) msgType() msgType   { return msgHello }
func (welcome) msgType() msgType { return msgWelcome }
func (refusal) msgType() msgType { return msgRefuse }
func (fdBatch) msgType() msgType { return msgFDs }
func (ack) msgType() msgType     { return msgAck }
func (ready) msgType() msgType   { return msgReady }
func (done) msgType() msgType    { return msgDone }
func (connMsg) msgType() msgType { return msgConn }
func (connAck) msgType() msgType { return msgConnAck }
func (request) msgType() msgType { return msgRequest }
func (reply) msgType() msgType   { return msgReply }
func (m hello) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, m.MinVersion)
	b = binary.BigEndian.AppendUint16(b, m.MaxVersion)
	b = binary.BigEndian.AppendUint64(b, m.Caps)
	b = binary.BigEndian.AppendUint32(b, m.PID)
	return appendString(b, m.Name)
}

func (m welcome) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = binary.BigEndian.AppendUint64(b, m.Caps)
	b = binary.BigEndian.AppendUint32(b, m.PID)
	b = binary.BigEndian.AppendUint32(b, m.Generation)
	return binary.BigEndian.AppendUint32(b, m.Sockets)
}

func (m refusal) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	return appendString(b, m.Reason)
}

func (m fdBatch) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Entries)))
	for _, e := range m.Entries {
		b = e.appendTo(b)
	}
	return b
}

func (e entry) appendTo(b []byte) []byte {
	b = append(b, byte(e.Kind))
	b = appendString(b, e.Network)
	b = appendString(b, e.Address)
	return appendString(b, e.Name)
}

// encodedLen is the number of bytes e adds to an fd batch.
func (e entry) encodedLen() int {
	return 1 + 3*2 + len(e.Network) + len(e.Address) + len(e.Name)
}

func (m ack) appendBody(b []byte) []byte { return binary.BigEndian.AppendUint32(b, m.Seq) }

func (m ready) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.PID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Keys)))
	for _, k := range m.Keys {
		b = appendString(b, k)
	}
	return b
}

func (done) appendBody(b []byte) []byte { return b }

func (m connMsg) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = appendString(b, m.Key)
	return appendBytes(b, m.State)
}

func (m connAck) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = append(b, boolByte(m.OK))
	return appendString(b, m.Reason)
}

func (m request) appendBody(b []byte) []byte { return appendString(b, m.Name) }

func (m reply) appendBody(b []byte) []byte {
	b = append(b, boolByte(m.Final))
	b = appendString(b, m.Text)
	return appendBytes(b, m.Data)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, p []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

// encode returns m framed with a header. It fails only if m is too large
// or has a field longer than the protocol allows.
func encode(m message) ([]byte, error) {
	b := make([]byte, headerSize, 64)
	b = m.appendBody(b)
	if len(b) > maxMessageSize {
		return nil, fmt.Errorf("%w: %s message of %d bytes exceeds %d", ErrProtocol, m.msgType(), len(b), maxMessageSize)
	}
	if err := checkLimits(m); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint32(b[0:], wireMagic)
	binary.BigEndian.PutUint16(b[4:], protocolVersion)
	binary.BigEndian.PutUint16(b[6:], uint16(m.msgType()))
	binary.BigEndian.PutUint32(b[8:], uint32(len(b)-headerSize))
	return b, nil
}

// checkLimits rejects fields the decoder would reject, so that a bad
// message fails on the sending side with a clear error.
func checkLimits(m message) error {
	var strs []string
	switch m := m.(type) {
	case hello:
		strs = []string{m.Name}
	case refusal:
		strs = []string{m.Reason}
	case fdBatch:
		if len(m.Entries) > maxFDsPerMessage {
			return fmt.Errorf("%w: batch of %d entries exceeds %d", ErrProtocol, len(m.Entries), maxFDsPerMessage)
		}
		for _, e := range m.Entries {
			strs = append(strs, e.Network, e.Address, e.Name)
		}
	case ready:
		if len(m.Keys) > 1<<16-1 {
			return fmt.Errorf("%w: %d keys in ready", ErrProtocol, len(m.Keys))
		}
		strs = m.Keys
	case connMsg:
		strs = []string{m.Key}
	case connAck:
		strs = []string{m.Reason}
	case request:
		strs = []string{m.Name}
	case reply:
		strs = []string{m.Text}
	}
	for _, s := range strs {
		if len(s) > maxStringLen {
			return fmt.Errorf("%w: string field of %d bytes exceeds %d", ErrProtocol, len(s), maxStringLen)
		}
	}
	return nil
}

// decode parses one framed message. Fields a later protocol version may
// append are ignored; anything malformed is an ErrProtocol error.
func decode(b []byte) (message, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("%w: short message (%d bytes)", ErrProtocol, len(b))
	}
	if magic := binary.BigEndian.Uint32(b[0:]); magic != wireMagic {
		return nil, fmt.Errorf("%w: bad magic %#08x", ErrProtocol, magic)
	}
	version := binary.BigEndian.Uint16(b[4:])
	typ := msgType(binary.BigEndian.Uint16(b[6:]))
	length := binary.BigEndian.Uint32(b[8:])
	if int64(length) != int64(len(b)-headerSize) {
		return nil, fmt.Errorf("%w: header says %d body bytes, message has %d", ErrProtocol, length, len(b)-headerSize)
	}
	// hello, request and refuse keep their layout in every version, so
	// any peer can say who it is or what it wants, or why it says no.
	if version != protocolVersion && typ != msgHello && typ != msgRequest && typ != msgRefuse {
		return nil, fmt.Errorf("%w: %s message in unsupported protocol version %d", ErrProtocol, typ, version)
	}
	r := &reader{b: b[headerSize:]}
	var m message
	switch typ {
	case msgHello:
		m = hello{MinVersion: r.u16(), MaxVersion: r.u16(), Caps: r.u64(), PID: r.u32(), Name: r.str()}
	case msgWelcome:
		m = welcome{Version: r.u16(), Caps: r.u64(), PID: r.u32(), Generation: r.u32(), Sockets: r.u32()}
	case msgRefuse:
		m = refusal{Code: RefusalCode(r.u16()), Reason: r.str()}
	case msgFDs:
		batch := fdBatch{Seq: r.u32()}
		n := int(r.u16())
		if n > maxFDsPerMessage {
			return nil, fmt.Errorf("%w: batch of %d entries exceeds %d", ErrProtocol, n, maxFDsPerMessage)
		}
		for i := 0; i < n && r.err == nil; i++ {
			batch.Entries = append(batch.Entries, entry{Kind: sockKind(r.u8()), Network: r.str(), Address: r.str(), Name: r.str()})
		}
		m = batch
	case msgAck:
		m = ack{Seq: r.u32()}
	case msgReady:
		rd := ready{PID: r.u32()}
		n := int(r.u16())
		for i := 0; i < n && r.err == nil; i++ {
			rd.Keys = append(rd.Keys, r.str())
		}
		m = rd
	case msgDone:
		m = done{}
	case msgConn:
		m = connMsg{ID: r.u64(), Key: r.str(), State: r.bytes()}
	case msgConnAck:
		m = connAck{ID: r.u64(), OK: r.u8() != 0, Reason: r.str()}
	case msgRequest:
		m = request{Name: r.str()}
	case msgReply:
		m = reply{Final: r.u8() != 0, Text: r.str(), Data: r.bytes()}
	default:
		return nil, fmt.Errorf("%w: unknown message %s", ErrProtocol, typ)
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %s message: %w", ErrProtocol, typ, r.err)
	}
	return m, nil
}

// reader consumes a message body; the first short read sticks in err.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = fmt.Errorf("truncated: want %d bytes, have %d", n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *reader) str() string {
	n := int(r.u16())
	if r.err == nil && n > maxStringLen {
		r.err = fmt.Errorf("string of %d bytes exceeds %d", n, maxStringLen)
		return ""
	}
	return string(r.take(n))
}

func (r *reader) bytes() []byte {
	n := r.u32()
	if r.err == nil && n > maxMessageSize {
		r.err = fmt.Errorf("field of %d bytes exceeds %d", n, maxMessageSize)
		return nil
	}
	p := r.take(int(n))
	if p == nil {
		return nil
	}
	return append([]byte(nil), p...)
}
