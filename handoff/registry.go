package handoff

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// Where an inherited socket came from.
const (
	fromPredecessor = "predecessor"
	fromSystemd     = "systemd"          // a socket unit
	fromFDStore     = "systemd fd store" // stored by an earlier process
)

// inheritedFD is a socket received from a predecessor or from systemd that
// no Listen call has claimed yet. The registry owns fd. It stays a bare
// descriptor until claimed: making an *os.File registers it with the
// runtime's poller, which for 10,000 sockets costs more than passing them.
type inheritedFD struct {
	wire.Entry
	fd     int
	source string
}

// heldBySystemd reports whether systemd passed the socket, and holds it.
func (in *inheritedFD) heldBySystemd() bool {
	return in.source == fromSystemd || in.source == fromFDStore
}

// socket is a listening or packet socket this process serves.
type socket struct {
	wire.Entry
	source string    // "" when this process created it
	ln     *listener // kindListener
	pc     net.PacketConn
}

func (s *socket) conn() syscall.Conn {
	if s.ln != nil {
		return s.ln
	}
	return s.pc.(syscall.Conn)
}

// boundAddress is where the socket is bound.
func (s *socket) boundAddress() string {
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.pc.LocalAddr().String()
}

// ownsFile reports whether the socket's file is this process's to
// remove: a unix socket it created, or one its predecessor passed once
// this process serves (serving). systemd's stay: their unit holds them.
func (s *socket) ownsFile(serving bool) bool {
	return isUnixNetwork(s.Network) && (s.source == "" || (s.source == fromPredecessor && serving))
}

// removeFile removes the socket's file if it is still this socket's.
func (s *socket) removeFile() {
	rc, err := s.conn().SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) { ctl.RemoveSocketFile(int(fd), s.Address) })
	}
}

func (s *socket) close() error {
	if s.ln != nil {
		return s.ln.Close()
	}
	return s.pc.Close()
}

// registry holds every socket of the process: inherited ones not yet
// claimed, and those in use.
type registry struct {
	mu        sync.Mutex
	inherited []*inheritedFD
	sockets   []*socket
	closed    bool
	// claimed counts the predecessor's sockets that Listen calls claimed.
	claimed int
	// serving: this process has become the server (Ready, past the
	// commit point), so the unix socket files of the predecessor's
	// sockets are its own to remove.
	serving bool
	// control is applied to every socket the registry creates
	// (hooks.Wrapper.SocketControl); nil for a program's Upgrader.
	control func(network, address string, c syscall.RawConn) error
}

// describe names a socket for a person: "web (tcp 127.0.0.1:8080)", or
// "tcp 127.0.0.1:8080" without a name.
func describe(e wire.Entry) string {
	where := e.Network + " " + e.Address
	if e.Name != "" {
		return e.Name + " (" + where + ")"
	}
	return where
}

// describeKey names the socket whose key is key for a person: its name,
// or "tcp 127.0.0.1:8080" for the key "tcp|127.0.0.1:8080".
func describeKey(key string) string {
	if network, address, ok := strings.Cut(key, "|"); ok {
		return network + " " + address
	}
	return key
}

// describe names the inherited socket for a person.
func (in *inheritedFD) describe() string { return describe(in.Entry) }

// inherit takes ownership of fd.
func (r *registry) inherit(e wire.Entry, fd int, source string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inherited = append(r.inherited, &inheritedFD{Entry: e, fd: fd, source: source})
}

var (
	listenNetworks = map[string]bool{"tcp": true, "tcp4": true, "tcp6": true, "unix": true, "unixpacket": true}
	packetNetworks = map[string]bool{"udp": true, "udp4": true, "udp6": true, "unixgram": true}
)

func isUnixNetwork(network string) bool {
	return network == "unix" || network == "unixpacket" || network == "unixgram"
}

// open returns the socket for want: an inherited one that matches, or a
// new one. It fails if this process already serves the same key.
func (r *registry) open(ctx context.Context, want wire.Entry) (*socket, error) {
	switch {
	case want.Kind == wire.KindListener && !listenNetworks[want.Network],
		want.Kind == wire.KindPacket && !packetNetworks[want.Network]:
		return nil, wrongNetwork(want)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	for _, s := range r.sockets {
		if s.Key() == want.Key() {
			return nil, errorf("handoff: socket %s is already in use", describe(want))
		}
	}
	s := &socket{Entry: want}
	var err error
	if i := r.match(want); i >= 0 {
		in := r.inherited[i]
		r.inherited = append(r.inherited[:i], r.inherited[i+1:]...)
		s.source = in.source
		if in.source == fromPredecessor {
			r.claimed++
		}
		err = s.fromFD(in.fd)
	} else {
		err = s.create(ctx, r.control)
	}
	if err != nil {
		return nil, errorf("handoff: %s %s: %w", map[wire.Kind]string{wire.KindListener: "listen on", wire.KindPacket: "listen for packets on"}[want.Kind], describe(want), err)
	}
	r.sockets = append(r.sockets, s)
	return s, nil
}

// wrongNetwork says that want's network is not one its call serves, and
// which call does.
func wrongNetwork(want wire.Entry) error {
	switch {
	case want.Kind == wire.KindListener && packetNetworks[want.Network]:
		return errorf("handoff: Listen cannot serve network %q: it is for datagrams; use ListenPacket", want.Network)
	case want.Kind == wire.KindPacket && listenNetworks[want.Network]:
		return errorf("handoff: ListenPacket cannot serve network %q: it is for streams; use Listen", want.Network)
	case want.Kind == wire.KindListener:
		return errorf("handoff: Listen cannot serve network %q: want tcp, tcp4, tcp6, unix or unixpacket", want.Network)
	}
	return errorf("handoff: ListenPacket cannot serve network %q: want udp, udp4, udp6 or unixgram", want.Network)
}

// match finds the inherited socket for want: first the predecessor's
// socket with the same name, network and address; then a socket from the
// fd store with the same key; then a systemd socket with the same name;
// then a systemd socket bound to the same address.
func (r *registry) match(want wire.Entry) int {
	for i, in := range r.inherited {
		if in.source == fromPredecessor && in.Entry == want {
			return i
		}
	}
	for i, in := range r.inherited {
		if in.source == fromFDStore && in.Kind == want.Kind && in.Name == want.Key() {
			return i
		}
	}
	for i, in := range r.inherited {
		if in.heldBySystemd() && in.Kind == want.Kind && want.Name != "" && in.Name == want.Name {
			return i
		}
	}
	for i, in := range r.inherited {
		if in.heldBySystemd() && in.Kind == want.Kind && sameAddress(want, in.Entry) {
			return i
		}
	}
	return -1
}

// sameAddress reports whether a socket bound at have serves what want asks
// for. An unspecified host matches any unspecified address; port 0 never
// matches, since it asks for a new port.
func sameAddress(want, have wire.Entry) bool {
	if isUnixNetwork(want.Network) || isUnixNetwork(have.Network) {
		return isUnixNetwork(want.Network) && isUnixNetwork(have.Network) && want.Address != "" && want.Address == have.Address
	}
	wantHost, wantPort, err1 := net.SplitHostPort(want.Address)
	haveHost, havePort, err2 := net.SplitHostPort(have.Address)
	if err1 != nil || err2 != nil {
		return false
	}
	wp, err1 := strconv.Atoi(wantPort)
	hp, err2 := strconv.Atoi(havePort)
	if err1 != nil || err2 != nil || wp == 0 || wp != hp {
		return false
	}
	wantIP, haveIP := net.ParseIP(wantHost), net.ParseIP(haveHost)
	if wantHost == "" || (wantIP != nil && wantIP.IsUnspecified()) {
		return haveIP == nil || haveIP.IsUnspecified()
	}
	return wantIP != nil && wantIP.Equal(haveIP)
}

// fromFD makes s serve the inherited socket fd, and closes fd.
func (s *socket) fromFD(fd int) error {
	f := os.NewFile(uintptr(fd), s.Key())
	defer f.Close()
	if s.Kind == wire.KindPacket {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return err
		}
		s.pc = pc
		return nil
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return err
	}
	s.ln = newListener(ln, s.Key())
	return nil
}

// create opens a new socket for s, with control as the ListenConfig's
// Control (nil: none). A unix socket file that nobody listens on any more
// is replaced; a live one is not.
func (s *socket) create(ctx context.Context, control func(network, address string, c syscall.RawConn) error) error {
	lc := net.ListenConfig{Control: control}
	if control != nil {
		lc.SetMultipathTCP(false) // see hooks.Wrapper.SocketControl
	}
	open := func() error {
		if s.Kind == wire.KindPacket {
			pc, err := lc.ListenPacket(ctx, s.Network, s.Address)
			if err == nil {
				s.pc = pc
			}
			return err
		}
		ln, err := lc.Listen(ctx, s.Network, s.Address)
		if err != nil {
			return err
		}
		if ul, ok := ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false) // a successor may be serving the path
		}
		s.ln = newListener(ln, s.Key())
		return nil
	}
	err := open()
	if err != nil && isUnixNetwork(s.Network) && errors.Is(err, syscall.EADDRINUSE) && staleUnixSocket(s.Network, s.Address) {
		os.Remove(s.Address)
		err = open()
	}
	return err
}

// staleUnixSocket reports whether the socket file at path has no listener.
func staleUnixSocket(network, path string) bool {
	c, err := net.Dial(network, path)
	if err == nil {
		c.Close()
		return false
	}
	return ctl.IsConnRefused(err)
}

// inventory returns the sockets in use, which a successor receives.
func (r *registry) inventory() []*socket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*socket(nil), r.sockets...)
}

// pause stops every listener from accepting, leaving the sockets open,
// or resumes them all.
func (r *registry) pause(paused bool) {
	for _, s := range r.inventory() {
		switch {
		case s.ln == nil:
		case paused:
			s.ln.pause()
		default:
			s.ln.resume()
		}
	}
}

// sealListeners seals every listener (listener.seal) and returns the
// handed-over connections they held, not accepted yet; the caller owns
// them. A listener the program closes after this closes none of them.
func (r *registry) sealListeners() []queuedConn {
	var queued []queuedConn
	for _, s := range r.inventory() {
		if s.ln != nil {
			for _, c := range s.ln.sealHeld() {
				queued = append(queued, queuedConn{key: s.Key(), conn: c})
			}
		}
	}
	return queued
}

// hasPacket reports whether a datagram socket is in use.
func (r *registry) hasPacket() bool {
	for _, s := range r.inventory() {
		if s.pc != nil {
			return true
		}
	}
	return false
}

// keys lists the keys of the sockets in use.
func (r *registry) keys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.sockets))
	for _, s := range r.sockets {
		keys = append(keys, s.Key())
	}
	return keys
}

// listenerFor returns the listener serving key, or nil.
func (r *registry) listenerFor(key string) *listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sockets {
		if s.ln != nil && s.Key() == key {
			return s.ln
		}
	}
	return nil
}

// keyOf returns the key of the socket whose listener is ln.
func (r *registry) keyOf(ln net.Listener) (string, bool) {
	l, ok := ln.(*listener)
	if !ok {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sockets {
		if s.ln == l {
			return s.Key(), true
		}
	}
	return "", false
}

// takeControl removes the inherited control socket from the registry and
// returns it, or -1; the caller owns the descriptor.
func (r *registry) takeControl() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, in := range r.inherited {
		if in.Kind == wire.KindControl {
			r.inherited = append(r.inherited[:i], r.inherited[i+1:]...)
			return in.fd
		}
	}
	return -1
}

// claimsPredecessor fails unless some Listen call claimed one of the
// sockets the predecessor passed, or it passed none: a process that
// claims none serves another set of sockets, so it is another instance
// of the program, not a successor. The error lists what it left.
func (r *registry) claimsPredecessor() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var left []string
	for _, in := range r.inherited {
		if in.source == fromPredecessor && in.Kind != wire.KindControl {
			left = append(left, in.describe())
		}
	}
	if r.claimed > 0 || len(left) == 0 {
		return nil
	}
	return errorf("it serves %s", strings.Join(left, ", "))
}

// dropUnclaimed closes the inherited sockets no Listen call claimed and
// returns their descriptions. Ready calls it once this process serves,
// past the commit point; from then on the unix socket files of the
// predecessor's sockets are this process's own. The file of a
// predecessor's unix listener that this version no longer serves is
// removed, so that clients get "no such file" rather than a socket nobody
// accepts on, if it is still that socket's (ctl.RemoveSocketFile).
func (r *registry) dropUnclaimed() []inheritedFD {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.serving = true
	var dropped []inheritedFD
	kept := r.inherited[:0]
	for _, in := range r.inherited {
		if in.Kind == wire.KindControl {
			kept = append(kept, in)
			continue
		}
		if in.source == fromPredecessor && in.Kind == wire.KindListener && isUnixNetwork(in.Network) {
			ctl.RemoveSocketFile(in.fd, in.Address)
		}
		ctl.CloseFDs([]int{in.fd})
		dropped = append(dropped, *in)
	}
	r.inherited = kept
	return dropped
}

// queuedConn is a handed-over connection that no Accept took.
type queuedConn struct {
	key   string
	conn  heldConn
	state []byte // what SendConn sent with it (forwarded with it)
	idle  bool   // SendIdleConn's: forwarded as such
}

// closeSockets closes this process's copies of the sockets in use, and
// returns the handed-over connections their listeners still queued, which
// the caller now owns. With unlink, the files of the unix sockets this
// process owns are removed too (ownsFile): nobody serves them any more.
func (r *registry) closeSockets(unlink bool) []queuedConn {
	r.mu.Lock()
	sockets := r.sockets
	r.sockets = nil
	serving := r.serving
	r.mu.Unlock()
	var queued []queuedConn
	for _, s := range sockets {
		if s.ln != nil {
			for _, c := range s.ln.detach() {
				queued = append(queued, queuedConn{key: s.Key(), conn: c})
			}
		}
		if unlink && s.ownsFile(serving) {
			s.removeFile()
		}
		s.close()
	}
	return queued
}

// closeConns closes connections nobody will serve.
func closeConns(queued []queuedConn) {
	for _, q := range queued {
		q.conn.Close()
	}
}

// close closes everything the registry still holds; later opens fail.
func (r *registry) close(unlink bool) {
	r.mu.Lock()
	r.closed = true
	inherited := r.inherited
	r.inherited = nil
	r.mu.Unlock()
	for _, in := range inherited {
		ctl.CloseFDs([]int{in.fd})
	}
	closeConns(r.closeSockets(unlink))
}
