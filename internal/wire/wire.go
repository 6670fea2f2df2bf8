// Package wire is the control socket's codec: the protocol's message
// types and their encoding, with every limit the decoder enforces. It is
// pure: it turns messages into bytes and back, and knows nothing about
// sockets or file descriptors. PROTOCOL.md is its specification; keep
// the two in step.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const wireMagic uint32 = 0x484f4646 // "HOFF"

// ErrProtocol is what every decoding error and every limit check wraps:
// the peer (or the caller) broke the protocol. The handoff package
// exports this very value.
var ErrProtocol = errors.New("handoff: protocol error")

// Sizes and limits of the protocol.
const (
	// HeaderSize is the size of every message's header: magic u32,
	// version u16, type u16, body length u32.
	HeaderSize = 12

	// Version is the only version this package speaks. A peer offers a
	// range in its hello; the serving side picks the highest version
	// both understand.
	Version uint16 = 1

	// MaxMessageSize bounds every message, header included. fd batches
	// are split so that they stay well below it.
	MaxMessageSize = 256 << 10

	// MaxStringLen bounds every string field (names, networks,
	// addresses, refusal reasons).
	MaxStringLen = 4096

	// MaxFDs is the kernel's limit on descriptors in one SCM_RIGHTS
	// message (SCM_MAX_FD).
	MaxFDs = 253

	// MaxBatchPayload bounds the encoded entries of one fd batch, so a
	// batch of long unix paths is split before it nears MaxMessageSize.
	MaxBatchPayload = 64 << 10
)

// Capabilities advertised in hello and welcome.
const (
	// CapConns: the peer can send or receive established connections
	// after the handover (Conn / ConnAck).
	CapConns uint64 = 1 << 0

	// CapCanary: in hello, the successor sends Release once its
	// predecessor need not stand by any more (it stops, or has handed
	// over itself), so that the predecessor can keep the sockets for a
	// canary window and roll back when the link breaks without one, and
	// it understands Proven; in welcome, the serving process understands
	// Release and sends Proven when the handover is final.
	CapCanary uint64 = 1 << 1

	// CapConnBatch: the peer sends or receives established connections
	// many to a message (Conns / ConnsAck), up to MaxFDs at a time, as
	// well as one to a message (Conn / ConnAck). In effect only with
	// CapConns.
	CapConnBatch uint64 = 1 << 2

	// CapIdleConns: in hello, the successor understands the idle flag of
	// a Conns entry (ConnEntry.Idle), carried in a flags byte per entry
	// after the entries, and may hold such a connection unadopted until
	// its peer sends; a serving process sends the flags only to such a
	// successor. In effect only with CapConnBatch.
	CapIdleConns uint64 = 1 << 3

	// SupportedCaps is every capability this package implements.
	SupportedCaps = CapConns | CapCanary | CapConnBatch | CapIdleConns
)

// Type is a message's type code, the third field of its header.
type Type uint16

// Message types; the numbers are part of the protocol.
const (
	TypeHello    Type = 1  // successor → serving: who I am, versions I speak
	TypeWelcome  Type = 2  // serving → successor: accepted; how many sockets follow
	TypeRefuse   Type = 3  // either way: no, and why; the sender then closes
	TypeFDs      Type = 4  // serving → successor: a batch of socket entries + fds
	TypeAck      Type = 5  // successor → serving: batch received
	TypeReady    Type = 6  // successor → serving: I serve; stop accepting
	TypeDone     Type = 7  // serving → successor: stopped accepting; draining
	TypeConn     Type = 8  // serving → successor: one established connection + fd
	TypeConnAck  Type = 9  // successor → serving: connection taken (or not)
	TypeRequest  Type = 10 // client → serving, instead of hello: run a request
	TypeReply    Type = 11 // serving → client: progress, then the final answer
	TypeRelease  Type = 12 // successor → predecessor: stop standing by; I stop or have handed over
	TypeProven   Type = 13 // serving → successor: the handover is final; you are the main process
	TypeConns    Type = 14 // serving → successor: a batch of established connections + fds
	TypeConnsAck Type = 15 // successor → serving: which connections of a batch were taken
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeWelcome:
		return "welcome"
	case TypeRefuse:
		return "refuse"
	case TypeFDs:
		return "fds"
	case TypeAck:
		return "ack"
	case TypeReady:
		return "ready"
	case TypeDone:
		return "done"
	case TypeConn:
		return "conn"
	case TypeConnAck:
		return "conn-ack"
	case TypeRequest:
		return "request"
	case TypeReply:
		return "reply"
	case TypeRelease:
		return "release"
	case TypeProven:
		return "proven"
	case TypeConns:
		return "conns"
	case TypeConnsAck:
		return "conns-ack"
	}
	return fmt.Sprintf("type(%d)", uint16(t))
}

// A Message is one protocol message. fds travel beside it, never in it.
type Message interface {
	Type() Type
	appendBody(b []byte) []byte
}

// Hello is the first message of a process that wants to take over.
type Hello struct {
	MinVersion uint16
	MaxVersion uint16
	Caps       uint64
	PID        uint32
	Name       string // the service's name
	Build      Build  // appended; see Build
}

// Welcome accepts a Hello: the batches of sockets follow.
type Welcome struct {
	Version    uint16
	Caps       uint64
	PID        uint32
	Generation uint32
	Sockets    uint32 // total number of entries (and fds) in the batches that follow
	Build      Build  // appended; see Build
}

// Build names the build a peer runs: its main module's version and VCS
// revision, as Go stamped them. It is appended to hello and welcome after
// the fields of the first release, and only when not empty (or when a
// later field follows it): a peer that predates it sends none (the zero
// Build), and a receiver that predates it ignores it, as it ignores every
// field it does not know.
type Build struct {
	Version  string
	Revision string
}

func (b Build) appendTo(p []byte) []byte {
	if b == (Build{}) {
		return p
	}
	return appendString(appendString(p, b.Version), b.Revision)
}

// build reads a Build if the body goes on.
func (r *reader) build() Build {
	if r.err != nil || len(r.b) == 0 {
		return Build{}
	}
	return Build{Version: r.str(), Revision: r.str()}
}

// Refusal says no, and why; its sender closes the connection next.
type Refusal struct {
	Code   uint16 // a handoff.RefusalCode
	Reason string
}

// Kind says what a passed descriptor is.
type Kind uint8

// Kinds of descriptor.
const (
	KindListener Kind = 1 // stream listener: tcp, unix
	KindPacket   Kind = 2 // datagram socket: udp, unixgram
	KindControl  Kind = 3 // the control socket's own listener
)

func (k Kind) String() string {
	switch k {
	case KindListener:
		return "listener"
	case KindPacket:
		return "packet"
	case KindControl:
		return "control"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// An Entry describes one socket in the inventory.
type Entry struct {
	Kind    Kind
	Network string // as given to Listen: "tcp", "udp6", "unix", ...
	Address string // as given to Listen, so ":0" finds its socket again
	Name    string // optional name (systemd FileDescriptorName=)
}

// FDBatch carries up to MaxFDs socket descriptions; the descriptors
// themselves ride beside it in SCM_RIGHTS, one per entry, in order.
type FDBatch struct {
	Seq     uint32
	Entries []Entry
}

// Ack acknowledges the FDBatch with the same Seq.
type Ack struct{ Seq uint32 }

// Ready says the successor serves: the serving side stops accepting.
type Ready struct {
	PID  uint32
	Keys []string // socket keys the successor serves; connections for them may follow
}

// Done confirms Ready: the old process has stopped accepting and drains.
type Done struct{}

// Conn carries one established connection (its fd rides beside it).
type Conn struct {
	ID    uint64
	Key   string // socket key the connection was accepted on; "" for AcceptConn
	State []byte // opaque application state
}

// ConnAck answers the Conn with the same ID.
type ConnAck struct {
	ID     uint64
	OK     bool
	Reason string // why not, when !OK
}

// Conns carries a batch of established connections, at most MaxFDs; their
// fds ride beside it, the i-th for the i-th entry.
type Conns struct {
	ID      uint64
	Entries []ConnEntry
}

// ConnEntry is one connection of a Conns batch.
type ConnEntry struct {
	Key   string // as in Conn
	State []byte // as in Conn
	// Idle says the connection's peer speaks next: its server has
	// nothing to send until the peer does (CapIdleConns).
	Idle bool
}

// FlagIdle is ConnEntry.Idle in an entry's flags byte; the other bits
// are zero, and a receiver ignores them.
const FlagIdle = 1 << 0

// EncodedLen is the most bytes e adds to a Conns message: its flags byte
// included.
func (e ConnEntry) EncodedLen() int { return 2 + len(e.Key) + 4 + len(e.State) + 1 }

// ConnsAck answers the Conns with the same ID: OK[i] says whether the
// successor took the i-th connection; Reason, why it did not take the
// first one it refused.
type ConnsAck struct {
	ID     uint64
	OK     []bool
	Reason string
}

// Request is a client's first message instead of a Hello.
type Request struct {
	Name string // "reload" or "status"
}

// Reply answers a request: progress lines, then a final Reply on success.
// A failed request gets a Refusal instead.
type Reply struct {
	Final bool   // the last reply; before it, progress lines
	Text  string // a progress line, or the outcome
	Data  []byte // with Final: the request's result (status: JSON)
}

// Release tells the predecessor that it need not stand by to roll back:
// the successor is stopping, or has handed over to a successor of its own.
type Release struct {
	Reason string
}

// Proven tells the successor that the handover is final (the canary
// window passed, or there was none): it is the service's main process now.
type Proven struct{}

func (Hello) Type() Type    { return TypeHello }
func (Welcome) Type() Type  { return TypeWelcome }
func (Refusal) Type() Type  { return TypeRefuse }
func (FDBatch) Type() Type  { return TypeFDs }
func (Ack) Type() Type      { return TypeAck }
func (Ready) Type() Type    { return TypeReady }
func (Done) Type() Type     { return TypeDone }
func (Conn) Type() Type     { return TypeConn }
func (ConnAck) Type() Type  { return TypeConnAck }
func (Request) Type() Type  { return TypeRequest }
func (Reply) Type() Type    { return TypeReply }
func (Release) Type() Type  { return TypeRelease }
func (Proven) Type() Type   { return TypeProven }
func (Conns) Type() Type    { return TypeConns }
func (ConnsAck) Type() Type { return TypeConnsAck }
func (m Hello) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, m.MinVersion)
	b = binary.BigEndian.AppendUint16(b, m.MaxVersion)
	b = binary.BigEndian.AppendUint64(b, m.Caps)
	b = binary.BigEndian.AppendUint32(b, m.PID)
	b = appendString(b, m.Name)
	return m.Build.appendTo(b)
}

func (m Welcome) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = binary.BigEndian.AppendUint64(b, m.Caps)
	b = binary.BigEndian.AppendUint32(b, m.PID)
	b = binary.BigEndian.AppendUint32(b, m.Generation)
	b = binary.BigEndian.AppendUint32(b, m.Sockets)
	return m.Build.appendTo(b)
}

func (m Refusal) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	return appendString(b, m.Reason)
}

func (m FDBatch) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Entries)))
	for _, e := range m.Entries {
		b = e.appendTo(b)
	}
	return b
}

func (e Entry) appendTo(b []byte) []byte {
	b = append(b, byte(e.Kind))
	b = appendString(b, e.Network)
	b = appendString(b, e.Address)
	return appendString(b, e.Name)
}

// EncodedLen is the number of bytes e adds to an fd batch.
func (e Entry) EncodedLen() int {
	return 1 + 3*2 + len(e.Network) + len(e.Address) + len(e.Name)
}

func (m Ack) appendBody(b []byte) []byte { return binary.BigEndian.AppendUint32(b, m.Seq) }

func (m Ready) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.PID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Keys)))
	for _, k := range m.Keys {
		b = appendString(b, k)
	}
	return b
}

func (Done) appendBody(b []byte) []byte { return b }

func (m Conn) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = appendString(b, m.Key)
	return appendBytes(b, m.State)
}

func (m ConnAck) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = append(b, boolByte(m.OK))
	return appendString(b, m.Reason)
}

func (m Conns) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Entries)))
	flags := false
	for _, e := range m.Entries {
		b = appendString(b, e.Key)
		b = appendBytes(b, e.State)
		flags = flags || e.Idle
	}
	if !flags {
		return b // as a receiver without CapIdleConns reads it
	}
	for _, e := range m.Entries {
		var f byte
		if e.Idle {
			f |= FlagIdle
		}
		b = append(b, f)
	}
	return b
}

func (m ConnsAck) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.OK)))
	for _, ok := range m.OK {
		b = append(b, boolByte(ok))
	}
	return appendString(b, m.Reason)
}

func (m Request) appendBody(b []byte) []byte { return appendString(b, m.Name) }

func (m Release) appendBody(b []byte) []byte { return appendString(b, m.Reason) }

func (Proven) appendBody(b []byte) []byte { return b }

func (m Reply) appendBody(b []byte) []byte {
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

// Encode returns m framed with a header. It fails only if m is too large
// or has a field longer than the protocol allows.
func Encode(m Message) ([]byte, error) {
	b := make([]byte, HeaderSize, 64)
	b = m.appendBody(b)
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %s message of %d bytes exceeds %d", ErrProtocol, m.Type(), len(b), MaxMessageSize)
	}
	if err := checkLimits(m); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint32(b[0:], wireMagic)
	binary.BigEndian.PutUint16(b[4:], Version)
	binary.BigEndian.PutUint16(b[6:], uint16(m.Type()))
	binary.BigEndian.PutUint32(b[8:], uint32(len(b)-HeaderSize))
	return b, nil
}

// checkLimits rejects fields the decoder would reject, so that a bad
// message fails on the sending side with a clear error.
func checkLimits(m Message) error {
	var strs []string
	switch m := m.(type) {
	case Hello:
		strs = []string{m.Name, m.Build.Version, m.Build.Revision}
	case Welcome:
		strs = []string{m.Build.Version, m.Build.Revision}
	case Refusal:
		strs = []string{m.Reason}
	case FDBatch:
		if len(m.Entries) > MaxFDs {
			return fmt.Errorf("%w: batch of %d entries exceeds %d", ErrProtocol, len(m.Entries), MaxFDs)
		}
		for _, e := range m.Entries {
			strs = append(strs, e.Network, e.Address, e.Name)
		}
	case Ready:
		if len(m.Keys) > 1<<16-1 {
			return fmt.Errorf("%w: %d keys in ready", ErrProtocol, len(m.Keys))
		}
		strs = m.Keys
	case Conn:
		strs = []string{m.Key}
	case ConnAck:
		strs = []string{m.Reason}
	case Conns:
		if len(m.Entries) > MaxFDs {
			return fmt.Errorf("%w: batch of %d connections exceeds %d", ErrProtocol, len(m.Entries), MaxFDs)
		}
		for _, e := range m.Entries {
			strs = append(strs, e.Key)
		}
	case ConnsAck:
		if len(m.OK) > MaxFDs {
			return fmt.Errorf("%w: ack of %d connections exceeds %d", ErrProtocol, len(m.OK), MaxFDs)
		}
		strs = []string{m.Reason}
	case Request:
		strs = []string{m.Name}
	case Reply:
		strs = []string{m.Text}
	}
	for _, s := range strs {
		if len(s) > MaxStringLen {
			return fmt.Errorf("%w: string field of %d bytes exceeds %d", ErrProtocol, len(s), MaxStringLen)
		}
	}
	return nil
}

// Decode parses one framed message. Fields a later protocol version may
// append are ignored; anything malformed is an ErrProtocol error.
func Decode(b []byte) (Message, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%w: short message (%d bytes)", ErrProtocol, len(b))
	}
	if magic := binary.BigEndian.Uint32(b[0:]); magic != wireMagic {
		return nil, fmt.Errorf("%w: bad magic %#08x", ErrProtocol, magic)
	}
	version := binary.BigEndian.Uint16(b[4:])
	typ := Type(binary.BigEndian.Uint16(b[6:]))
	length := binary.BigEndian.Uint32(b[8:])
	if int64(length) != int64(len(b)-HeaderSize) {
		return nil, fmt.Errorf("%w: header says %d body bytes, message has %d", ErrProtocol, length, len(b)-HeaderSize)
	}
	// hello, request and refuse keep their layout in every version, so
	// any peer can say who it is or what it wants, or why it says no.
	if version != Version && typ != TypeHello && typ != TypeRequest && typ != TypeRefuse {
		return nil, fmt.Errorf("%w: %s message in unsupported protocol version %d", ErrProtocol, typ, version)
	}
	r := &reader{b: b[HeaderSize:]}
	var m Message
	switch typ {
	case TypeHello:
		m = Hello{MinVersion: r.u16(), MaxVersion: r.u16(), Caps: r.u64(), PID: r.u32(), Name: r.str(), Build: r.build()}
	case TypeWelcome:
		m = Welcome{Version: r.u16(), Caps: r.u64(), PID: r.u32(), Generation: r.u32(), Sockets: r.u32(), Build: r.build()}
	case TypeRefuse:
		m = Refusal{Code: r.u16(), Reason: r.str()}
	case TypeFDs:
		batch := FDBatch{Seq: r.u32()}
		n := int(r.u16())
		if n > MaxFDs {
			return nil, fmt.Errorf("%w: batch of %d entries exceeds %d", ErrProtocol, n, MaxFDs)
		}
		for i := 0; i < n && r.err == nil; i++ {
			batch.Entries = append(batch.Entries, Entry{Kind: Kind(r.u8()), Network: r.str(), Address: r.str(), Name: r.str()})
		}
		m = batch
	case TypeAck:
		m = Ack{Seq: r.u32()}
	case TypeReady:
		rd := Ready{PID: r.u32()}
		n := int(r.u16())
		for i := 0; i < n && r.err == nil; i++ {
			rd.Keys = append(rd.Keys, r.str())
		}
		m = rd
	case TypeDone:
		m = Done{}
	case TypeConn:
		m = Conn{ID: r.u64(), Key: r.str(), State: r.bytes()}
	case TypeConnAck:
		m = ConnAck{ID: r.u64(), OK: r.u8() != 0, Reason: r.str()}
	case TypeConns:
		batch := Conns{ID: r.u64()}
		n := int(r.u16())
		if n > MaxFDs {
			return nil, fmt.Errorf("%w: batch of %d connections exceeds %d", ErrProtocol, n, MaxFDs)
		}
		for i := 0; i < n && r.err == nil; i++ {
			batch.Entries = append(batch.Entries, ConnEntry{Key: r.str(), State: r.bytes()})
		}
		if r.err == nil && len(r.b) > 0 { // the flags (CapIdleConns)
			for i := range batch.Entries {
				batch.Entries[i].Idle = r.u8()&FlagIdle != 0
			}
		}
		m = batch
	case TypeConnsAck:
		a := ConnsAck{ID: r.u64()}
		n := int(r.u16())
		if n > MaxFDs {
			return nil, fmt.Errorf("%w: ack of %d connections exceeds %d", ErrProtocol, n, MaxFDs)
		}
		for i := 0; i < n && r.err == nil; i++ {
			a.OK = append(a.OK, r.u8() != 0)
		}
		a.Reason = r.str()
		m = a
	case TypeRequest:
		m = Request{Name: r.str()}
	case TypeReply:
		m = Reply{Final: r.u8() != 0, Text: r.str(), Data: r.bytes()}
	case TypeRelease:
		m = Release{Reason: r.str()}
	case TypeProven:
		m = Proven{}
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
	if r.err == nil && n > MaxStringLen {
		r.err = fmt.Errorf("string of %d bytes exceeds %d", n, MaxStringLen)
		return ""
	}
	return string(r.take(n))
}

func (r *reader) bytes() []byte {
	n := r.u32()
	if r.err == nil && n > MaxMessageSize {
		r.err = fmt.Errorf("field of %d bytes exceeds %d", n, MaxMessageSize)
		return nil
	}
	p := r.take(int(n))
	if p == nil {
		return nil
	}
	return append([]byte(nil), p...)
}

// Key identifies a socket across generations: its name when it has one,
// else its network and address as the program asked for them. A ready
// message lists the keys the successor serves, and a conn message names
// the key of the socket a connection was accepted on.
func (e Entry) Key() string {
	if e.Name != "" {
		return e.Name
	}
	return e.Network + "|" + e.Address
}
