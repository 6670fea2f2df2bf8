//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/ctl"
	"golang.org/x/sys/unix"
)

// Socket modes (-socket-mode, and per socket in `handoff status`).
const (
	// modeAuto: a socket per child generation where one can be had,
	// shared otherwise.
	modeAuto = "auto"
	// modeShared: every child gets a duplicate of the wrapper's socket.
	modeShared = "shared"
	// modePerGeneration: the socket is per child generation.
	modePerGeneration = "per-generation"
)

// listenSocket is one -listen as the wrapper holds it: fd is a
// close-on-exec duplicate of the Upgrader's socket (which the Upgrader
// owns). In shared mode (group nil) every child gets fd itself: all share
// one open file description, whose flags (O_NONBLOCK) the wrapper does
// not change. In per-generation mode fd is the anchor of group and no
// child gets it.
type listenSocket struct {
	spec   listenSpec
	fd     int
	addr   net.Addr
	group  *reuseGroup
	shared string // why the socket is shared; "" in per-generation mode
}

// wrapperSockets owns the wrapper's duplicates, the generation sockets
// and the steering. Only the supervisor's goroutine calls its methods,
// and open, which runs before it; mu guards what status reads (socks, as
// open appends them) and created.
type wrapperSockets struct {
	mode        string // -socket-mode
	nonblocking bool   // -nonblocking
	log         *slog.Logger

	number int // generations made

	mu      sync.Mutex
	socks   []*listenSocket
	created bool // the Upgrader created the socket being opened (control ran)
	first   int  // the first generation socket control bound before it; -1: none
}

// newWrapperSockets is the sockets of a wrapper run with -socket-mode
// mode; open opens them.
func newWrapperSockets(mode string, nonblocking bool, log *slog.Logger) *wrapperSockets {
	return &wrapperSockets{mode: mode, nonblocking: nonblocking, log: log, first: -1}
}

// control is hooks.Wrapper.SocketControl: in auto mode it binds a TCP or
// UDP socket that the Upgrader creates with SO_REUSEPORT, so that
// generation sockets can join it. SO_REUSEPORT would let a bind beside a
// socket that another process of the same user holds succeed, so an
// address with a fixed port is first bound without it: in use, the
// Listen fails as it would without the wrapper. Then, for a fixed port,
// it binds the first generation socket, steered to, before the
// Upgrader's socket exists: no connection can reach the one socket that
// nobody accepts from. (With port 0 the port is not known yet; nobody
// can connect before the wrapper says which it is.)
func (w *wrapperSockets) control(network, address string, rc syscall.RawConn) error {
	if w.mode != modeAuto || !reusable(network) {
		return nil
	}
	var domain, v6only int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		if domain == unix.AF_INET6 {
			if v6only, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); serr != nil {
				return
			}
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt", serr)
	}
	first := -1
	if _, port, err := net.SplitHostPort(address); err == nil && port != "0" {
		if err := probeFree(network, address); err != nil {
			return err
		}
		first = w.bindFirst(network, address, domain, v6only)
	}
	w.mu.Lock()
	w.created, w.first = true, first
	w.mu.Unlock()
	return nil
}

// bindFirst binds the first generation socket at address and steers its
// new group to it; -1 if it cannot (open then falls back to binding it
// after the Upgrader's socket, or to a shared socket).
func (w *wrapperSockets) bindFirst(network, address string, domain, v6only int) int {
	sa, err := sockaddrOf(domain, address)
	if err != nil {
		return -1
	}
	fd, err := openMember(domain, v6only, sa, !strings.HasPrefix(network, "udp"))
	if err != nil {
		w.log.Warn("cannot bind the first generation socket before the wrapper's", "address", address, "err", err)
		return -1
	}
	if err := attachIndex(fd, 0); err != nil {
		unix.Close(fd)
		return -1
	}
	return fd
}

// takeFirst returns and forgets the socket control bound first, if any.
func (w *wrapperSockets) takeFirst() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	fd := w.first
	w.first = -1
	return fd
}

// closeFD closes fd unless it is -1.
func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// reusable reports whether network's sockets can have SO_REUSEPORT.
func reusable(network string) bool {
	return strings.HasPrefix(network, "tcp") || strings.HasPrefix(network, "udp")
}

// probeFree binds address without SO_REUSEPORT and closes it again.
// network is Control's ("tcp6" for a dual-stack socket on 0.0.0.0): the
// probe uses its family-agnostic name, as the Listen did.
func probeFree(network, address string) error {
	network = strings.TrimRight(network, "46")
	var lc net.ListenConfig
	if strings.HasPrefix(network, "udp") {
		pc, err := lc.ListenPacket(context.Background(), network, address)
		if err != nil {
			return err
		}
		return pc.Close()
	}
	ln, err := lc.Listen(context.Background(), network, address)
	if err != nil {
		return err
	}
	return ln.Close()
}

// open opens (or inherits) every socket through upg, duplicates it, and
// chooses its mode, which it logs. On error, what was duplicated is
// closed; the sockets themselves belong to upg.
func (w *wrapperSockets) open(upg *handoff.Upgrader, specs []listenSpec) error {
	for _, spec := range specs {
		w.mu.Lock()
		w.created = false
		w.mu.Unlock()
		var (
			sc   syscall.Conn
			addr net.Addr
		)
		if spec.stream() {
			ln, err := upg.ListenNamed(spec.name, spec.network, spec.address)
			if err != nil {
				closeFD(w.takeFirst())
				w.close()
				return err
			}
			sc, addr = ln.(syscall.Conn), ln.Addr()
		} else {
			pc, err := upg.ListenPacketNamed(spec.name, spec.network, spec.address)
			if err != nil {
				closeFD(w.takeFirst())
				w.close()
				return err
			}
			sc, addr = pc.(syscall.Conn), pc.LocalAddr()
		}
		first := w.takeFirst()
		fd, err := ctl.DupFD(sc)
		if err != nil {
			closeFD(first)
			w.close()
			return fmt.Errorf("%s: %w", spec, err)
		}
		s := &listenSocket{spec: spec, fd: fd, addr: addr}
		w.mu.Lock()
		w.socks = append(w.socks, s)
		created := w.created
		w.mu.Unlock()
		switch {
		case w.mode == modeShared:
			s.shared = "-socket-mode shared"
		case !reusable(spec.network):
			s.shared = "a unix socket cannot have a socket per generation (no SO_REUSEPORT)"
		case !created:
			s.shared = "inherited (from systemd, its fd store, or a wrapper this one took over from): its reuseport group, if any, is not this wrapper's"
		default:
			if s.group, err = newReuseGroup(fd, spec.stream(), first); err != nil {
				s.shared = "no steering: " + err.Error()
			} else {
				first = -1 // the group's
			}
		}
		closeFD(first) // a shared socket's group is the anchor alone
		if s.group != nil {
			w.log.Info("socket per child generation", "socket", spec.String(), "address", addr.String())
		} else {
			w.log.Warn("socket shared by every child", "socket", spec.String(), "address", addr.String(), "why", s.shared)
		}
	}
	return nil
}

// close closes every generation socket left and the duplicates.
func (w *wrapperSockets) close() {
	for _, s := range w.socks {
		if s.group != nil {
			s.group.close()
		}
		unix.Close(s.fd)
	}
	w.mu.Lock()
	w.socks = nil
	w.mu.Unlock()
}

// generation is the sockets one child generation gets as fds 3..: its
// own socket for each -listen in per-generation mode, the shared
// duplicate for the others. Its own sockets are one of each group's two
// generation sockets (slot), which the wrapperSockets owns and the
// generation after next gets again.
type generation struct {
	number int
	slot   int
	fds    []int
	own    []bool // fds[i] is this generation's own socket
}

// files are the fds for the spawner.
func (g *generation) files() []uintptr {
	if g == nil {
		return nil
	}
	files := make([]uintptr, len(g.fds))
	for i, fd := range g.fds {
		files[i] = uintptr(fd)
	}
	return files
}

// inodes identifies the generation's sockets in /proc.
func (g *generation) inodes() map[uint64]bool {
	m := map[uint64]bool{}
	if g == nil {
		return m
	}
	for _, fd := range g.fds {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			m[st.Ino] = true
		}
	}
	return m
}

// newGeneration makes the sockets of a new child generation beside
// serving's (nil: none serves), on the generation sockets serving does
// not have. The first generation gets the connections at once; a later
// one only once steer sends them to it.
func (w *wrapperSockets) newGeneration(serving *generation) (*generation, error) {
	w.number++
	g := &generation{number: w.number}
	if serving != nil {
		g.slot = (serving.slot + 1) % generationSockets
	}
	for _, s := range w.socks {
		if s.group == nil {
			g.fds, g.own = append(g.fds, s.fd), append(g.own, false)
			continue
		}
		fd, err := s.group.slot(g.slot)
		if err != nil {
			return nil, fmt.Errorf("a socket for child generation %d on %s: %w", g.number, s.addr, err)
		}
		g.fds, g.own = append(g.fds, fd), append(g.own, true)
		if s.group.target == s.group.anchor { // nobody serves it yet
			if err := s.group.steer(fd); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// prepare sets the O_NONBLOCK of g's own sockets for a child about to
// start: clear, as systemd passes sockets (NonBlocking=false), unless
// -nonblocking. A child may have changed it (Go's net.FileListener sets
// it), and a restarted child gets the same sockets.
func (w *wrapperSockets) prepare(g *generation) error {
	if g == nil {
		return nil
	}
	for i, fd := range g.fds {
		if g.own[i] {
			if err := unix.SetNonblock(fd, w.nonblocking); err != nil {
				return os.NewSyscallError("fcntl O_NONBLOCK", err)
			}
		}
	}
	return nil
}

// steer sends every new connection on every per-generation socket to g;
// g nil: to the anchors, which a wrapper taking over this one passes to
// its children.
func (w *wrapperSockets) steer(g *generation) error {
	var errs []error
	for i, s := range w.socks {
		if s.group == nil {
			continue
		}
		target := s.group.anchor
		if g != nil {
			target = g.fds[i]
		}
		if err := s.group.steer(target); err != nil {
			errs = append(errs, fmt.Errorf("steer %s: %w", s.addr, err))
		}
	}
	return errors.Join(errs...)
}

// drain waits until nothing waits on g's own sockets to be accepted or
// read, and has not for drainQuiet, or until ctx ends. Call it once
// connections are steered elsewhere.
func (w *wrapperSockets) drain(ctx context.Context, g *generation) error {
	if g == nil {
		return nil
	}
	return waitDrained(ctx, func() (int, error) {
		total := 0
		for i, s := range w.socks {
			if s.group == nil {
				continue
			}
			n, err := s.group.queued(g.fds[i])
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	})
}

// perGeneration reports whether any socket is per generation.
func (w *wrapperSockets) perGeneration() bool {
	for _, s := range w.socks {
		if s.group != nil {
			return true
		}
	}
	return false
}

// count is LISTEN_FDS.
func (w *wrapperSockets) count() int { return len(w.socks) }

// fdNames is LISTEN_FDNAMES.
func (w *wrapperSockets) fdNames() string {
	specs := make([]listenSpec, len(w.socks))
	for i, s := range w.socks {
		specs[i] = s.spec
	}
	return listenFDNames(specs)
}

// modes is what `handoff status` shows of the sockets.
func (w *wrapperSockets) modes() []socketMode {
	w.mu.Lock()
	defer w.mu.Unlock()
	modes := make([]socketMode, 0, len(w.socks))
	for _, s := range w.socks {
		m := socketMode{Socket: s.spec.String(), Address: s.addr.String(), Mode: modePerGeneration, Why: s.shared}
		if s.group == nil {
			m.Mode = modeShared
		}
		modes = append(modes, m)
	}
	return modes
}

// parseSocketMode checks -socket-mode.
func parseSocketMode(s string) (string, error) {
	switch s {
	case modeAuto, modeShared:
		return s, nil
	}
	return "", usageErrorf("-socket-mode: %q is not auto or shared", s)
}
