package wire

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// wireSamples is one message of each type, with edge values, and doubles
// as the fuzz corpus.
func wireSamples() []Message {
	many := make([]Entry, MaxFDs)
	for i := range many {
		many[i] = Entry{Kind: KindListener, Network: "tcp", Address: "127.0.0.1:0", Name: strings.Repeat("n", i%7)}
	}
	manyConns := make([]ConnEntry, MaxFDs)
	for i := range manyConns {
		manyConns[i] = ConnEntry{Key: "tcp|127.0.0.1:8080"}
	}
	return []Message{
		Hello{MinVersion: 1, MaxVersion: 1, Caps: CapConns, PID: 4242, Name: "api"},
		Hello{MinVersion: 0, MaxVersion: 65535, Caps: ^uint64(0), PID: ^uint32(0), Name: strings.Repeat("x", MaxStringLen)},
		Welcome{Version: 1, Caps: CapConns, PID: 1, Generation: 7, Sockets: 10000},
		Hello{MinVersion: 1, MaxVersion: 1, Caps: SupportedCaps, PID: 4242, Name: "api", Build: Build{Version: "v0.1.0", Revision: "380d2cc1a2b3+dirty"}},
		Welcome{Version: 1, Caps: SupportedCaps, PID: 1, Generation: 7, Sockets: 3, Build: Build{Revision: "380d2cc"}},
		Refusal{Code: 1, Reason: "upgrade in progress"},
		Refusal{Code: 999, Reason: ""},
		FDBatch{Seq: 3, Entries: []Entry{{Kind: KindPacket, Network: "udp", Address: "[::1]:53", Name: "dns"}, {Kind: KindControl, Network: "unixpacket", Address: "/run/a.sock"}}},
		FDBatch{Seq: 0, Entries: many},
		Ack{Seq: 41},
		Ready{PID: 99, Keys: []string{"web", "tcp|:8080"}},
		Ready{PID: 99},
		Done{},
		Conn{ID: 1 << 40, Key: "web", State: []byte{0, 1, 2, 255}},
		Conn{ID: 0},
		ConnAck{ID: 5, OK: true},
		ConnAck{ID: 6, OK: false, Reason: "no listener"},
		Request{Name: "reload"},
		Reply{Text: "started successor 42"},
		Reply{Final: true, Text: "ok", Data: []byte(`{"pid":1}`)},
		Release{Reason: "stopping"},
		Proven{},
		Conns{ID: 7, Entries: []ConnEntry{{Key: "web", State: []byte{1, 2}}, {Key: ""}, {Key: "tcp|:8080"}}},
		Conns{ID: 1 << 50, Entries: manyConns},
		Conns{ID: 9, Entries: []ConnEntry{{Key: "", State: []byte("ws"), Idle: true}, {Key: "tcp|:8080"}, {Idle: true}}},
		ConnsAck{ID: 7, OK: []bool{true, false, true}, Reason: "out of descriptors"},
		ConnsAck{ID: 8, OK: make([]bool, MaxFDs)},
	}
}

// normalize makes empty and nil slices compare equal.
func normalize(m Message) Message {
	switch m := m.(type) {
	case FDBatch:
		if len(m.Entries) == 0 {
			m.Entries = nil
		}
		return m
	case Ready:
		if len(m.Keys) == 0 {
			m.Keys = nil
		}
		return m
	case Conn:
		if len(m.State) == 0 {
			m.State = nil
		}
		return m
	case Conns:
		if len(m.Entries) == 0 {
			m.Entries = nil
		}
		for i, e := range m.Entries {
			if len(e.State) == 0 {
				m.Entries[i].State = nil
			}
		}
		return m
	case ConnsAck:
		if len(m.OK) == 0 {
			m.OK = nil
		}
		return m
	case Reply:
		if len(m.Data) == 0 {
			m.Data = nil
		}
		return m
	}
	return m
}

// TestConnsFlagsOnlyWhenIdle: a batch with no idle entry is encoded as
// before CapIdleConns, byte for byte, so that a successor without it
// reads it; one with an idle entry carries a flags byte per entry, after
// the entries, which such a successor would not read (it ignores what
// follows the entries) and a receiver of this version does.
func TestConnsFlagsOnlyWhenIdle(t *testing.T) {
	plain := Conns{ID: 3, Entries: []ConnEntry{{Key: "a", State: []byte{1}}, {Key: ""}}}
	b, err := Encode(plain)
	if err != nil {
		t.Fatal(err)
	}
	// header, id, count, then each entry: key (u16 + bytes), state (u32 + bytes)
	if want := HeaderSize + 8 + 2 + (2 + 1 + 4 + 1) + (2 + 0 + 4 + 0); len(b) != want {
		t.Fatalf("a batch without idle entries is %d bytes; want %d, the layout without flags", len(b), want)
	}
	idle := plain
	idle.Entries = []ConnEntry{plain.Entries[0], {Key: "", Idle: true}}
	bi, err := Encode(idle)
	if err != nil {
		t.Fatal(err)
	}
	if len(bi) != len(b)+2 || bi[len(bi)-2] != 0 || bi[len(bi)-1] != FlagIdle {
		t.Fatalf("a batch with an idle entry ends % x; want a flags byte per entry, % x", bi[len(b):], []byte{0, FlagIdle})
	}
	got, err := Decode(bi)
	if err != nil {
		t.Fatal(err)
	}
	if e := got.(Conns).Entries; e[0].Idle || !e[1].Idle {
		t.Fatalf("decoded entries %+v; want only the second idle", e)
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range wireSamples() {
		t.Run(m.Type().String(), func(t *testing.T) {
			b, err := Encode(m)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if want := normalize(m); !reflect.DeepEqual(normalize(got), want) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, want)
			}
		})
	}
}

// TestWireGolden pins the byte layout that PROTOCOL.md documents.
func TestWireGolden(t *testing.T) {
	b, err := Encode(Hello{MinVersion: 1, MaxVersion: 1, Caps: 1, PID: 42, Name: "api"})
	if err != nil {
		t.Fatal(err)
	}
	const want = "484f4646" + "0001" + "0001" + "00000015" + // header: magic, version 1, hello, 21 bytes
		"0001" + "0001" + "0000000000000001" + "0000002a" + "0003" + "617069"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("hello encodes as\n%s\nwant\n%s", got, want)
	}
	b, err = Encode(Hello{MinVersion: 1, MaxVersion: 1, Caps: 1, PID: 42, Name: "api", Build: Build{Version: "v1", Revision: "ab"}})
	if err != nil {
		t.Fatal(err)
	}
	const withBuild = "484f4646" + "0001" + "0001" + "0000001d" + // 29 bytes: the build appended
		"0001" + "0001" + "0000000000000001" + "0000002a" + "0003" + "617069" + "0002" + "7631" + "0002" + "6162"
	if got := hex.EncodeToString(b); got != withBuild {
		t.Fatalf("hello with a build encodes as\n%s\nwant\n%s", got, withBuild)
	}
}

func header(version, typ uint16, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, wireMagic)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint16(b, typ)
	return binary.BigEndian.AppendUint32(b, length)
}

func TestWireDecodeErrors(t *testing.T) {
	valid, err := Encode(Ready{PID: 1, Keys: []string{"web"}})
	if err != nil {
		t.Fatal(err)
	}
	tooLong := append(header(1, uint16(TypeRefuse), 4), 0, 0, 0xff, 0xff)
	bigBatch := append(header(1, uint16(TypeFDs), 6), 0, 0, 0, 0, 0x01, 0x00) // 256 entries
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short header", valid[:HeaderSize-1]},
		{"bad magic", append([]byte("XOFF"), valid[4:]...)},
		{"cut in the middle", valid[:len(valid)-2]},
		{"huge length", header(1, uint16(TypeReady), 1<<31)},
		{"trailing garbage beyond length", append(append([]byte(nil), valid...), 1, 2, 3)},
		{"unknown type", header(1, 77, 0)},
		{"type zero", header(1, 0, 0)},
		{"future version of a ready", append(header(2, uint16(TypeReady), uint32(len(valid)-HeaderSize)), valid[HeaderSize:]...)},
		{"string longer than allowed", tooLong},
		{"batch over the kernel limit", bigBatch},
		{"truncated body", append(header(1, uint16(TypeWelcome), 3), 0, 1, 2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.b)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode = %#v, %v; want ErrProtocol", m, err)
			}
		})
	}
}

// TestWireHelloEvolves: hello keeps its layout in every version, and a
// later version may append fields (after the build) that this one ignores.
func TestWireHelloEvolves(t *testing.T) {
	b, err := Encode(Hello{MinVersion: 2, MaxVersion: 5, PID: 7, Name: "api", Build: Build{Version: "v9"}})
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, 0xde, 0xad) // a field from the future
	binary.BigEndian.PutUint16(b[4:], 5)
	binary.BigEndian.PutUint32(b[8:], uint32(len(b)-HeaderSize))
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if h := m.(Hello); h.MinVersion != 2 || h.MaxVersion != 5 || h.Name != "api" || h.Build.Version != "v9" {
		t.Fatalf("decoded %#v", h)
	}
}

func TestWireEncodeLimits(t *testing.T) {
	for _, m := range []Message{
		Hello{Name: strings.Repeat("x", MaxStringLen+1)},
		Welcome{Build: Build{Revision: strings.Repeat("x", MaxStringLen+1)}},
		FDBatch{Entries: make([]Entry, MaxFDs+1)},
		Conn{State: make([]byte, MaxMessageSize)},
		Conns{Entries: make([]ConnEntry, MaxFDs+1)},
		ConnsAck{OK: make([]bool, MaxFDs+1)},
	} {
		if _, err := Encode(m); !errors.Is(err, ErrProtocol) {
			t.Errorf("encode(%s) = %v, want ErrProtocol", m.Type(), err)
		}
	}
}

// FuzzDecode: decoding arbitrary bytes never panics, and whatever decodes
// encodes again to something that decodes to the same message.
func FuzzDecode(f *testing.F) {
	for _, m := range wireSamples() {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("HOFF"))
	f.Add(header(1, uint16(TypeFDs), 1<<20))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v is not ErrProtocol", err)
			}
			return
		}
		b2, err := Encode(m)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", m, err)
		}
		m2, err := Decode(b2)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("unstable: %#v vs %#v", m, m2)
		}
	})
}
