//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A reuseGroup is the SO_REUSEPORT group of one -listen address: the
// anchor (the Upgrader's socket, which no child accepts from) and two
// generation sockets bound to the same address, which child generations
// take in turn: the serving one's, and the next one's. A classic BPF
// program on the group (SO_ATTACH_REUSEPORT_CBPF) returns the index of
// the socket that gets each new connection or datagram: the serving
// generation's. The kernel numbers a group's sockets in the order they
// joined, and when one closes it moves the last into its slot, so for a
// moment the program would name a wrong index (one out of range falls
// back to a hash over every socket, the anchor too, where a connection
// would wait for ever); generation sockets are therefore never closed
// while the wrapper runs, and members is the kernel's order.
//
// Where the port is fixed the first generation socket is bound before
// the anchor, with the program already attached, so that no connection
// reaches the anchor between its listen and the steering.
type reuseGroup struct {
	stream  bool
	anchor  int   // the wrapper's duplicate of the Upgrader's socket; owned by wrapperSockets
	members []int // the kernel's order: the anchor and the generation sockets
	gens    []int // the generation sockets, by slot; the group owns them
	target  int   // the socket new connections go to: a member
}

// generationSockets is how many generation sockets a group has: one
// serves, the next child starts on the other.
const generationSockets = 2

// slot returns generation socket i (0 or 1), joining the group for it
// the first time.
func (g *reuseGroup) slot(i int) (int, error) {
	for len(g.gens) <= i {
		if _, err := g.join(); err != nil {
			return -1, err
		}
	}
	return g.gens[i], nil
}

// newReuseGroup makes a group of anchor, a duplicate of a socket bound
// with SO_REUSEPORT, and first, a generation socket bound before it (-1:
// none), which the group then owns; the caller keeps owning anchor. It
// fails, and the socket must then be shared, if anchor is not in a
// reuseport group or the kernel refuses the program.
func newReuseGroup(anchor int, stream bool, first int) (*reuseGroup, error) {
	on, err := unix.GetsockoptInt(anchor, unix.SOL_SOCKET, unix.SO_REUSEPORT)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt SO_REUSEPORT", err)
	}
	if on == 0 {
		return nil, errors.New("the socket was bound without SO_REUSEPORT")
	}
	g := &reuseGroup{stream: stream, anchor: anchor, members: []int{anchor}, target: anchor}
	if first >= 0 {
		g.members, g.gens, g.target = []int{first, anchor}, []int{first}, first
	}
	if err := g.attach(); err != nil {
		return nil, err
	}
	return g, nil
}

// attach steers the group to target.
func (g *reuseGroup) attach() error {
	index := -1
	for i, fd := range g.members {
		if fd == g.target {
			index = i
		}
	}
	if index < 0 {
		return fmt.Errorf("steering target fd %d is not in the group", g.target)
	}
	return attachIndex(g.anchor, index)
}

// attachIndex attaches to fd's reuseport group the program that sends
// everything to the socket at index.
func attachIndex(fd, index int) error {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: uint32(index)}}
	err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: 1, Filter: &prog[0]})
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err)
}

// join opens a socket of the same type, bound to the anchor's address
// with SO_REUSEPORT, listening if a stream socket, and adds it to the
// group, last. New connections still go to the target. The socket is
// blocking; the group owns it (close).
func (g *reuseGroup) join() (int, error) {
	sa, err := unix.Getsockname(g.anchor)
	if err != nil {
		return -1, os.NewSyscallError("getsockname", err)
	}
	domain, err := unix.GetsockoptInt(g.anchor, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return -1, os.NewSyscallError("getsockopt SO_DOMAIN", err)
	}
	v6only := 0
	if domain == unix.AF_INET6 { // the anchor's: [::] with or without IPv4
		if v6only, err = unix.GetsockoptInt(g.anchor, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil {
			return -1, os.NewSyscallError("getsockopt IPV6_V6ONLY", err)
		}
	}
	fd, err := openMember(domain, v6only, sa, g.stream)
	if err != nil {
		return -1, err
	}
	g.members, g.gens = append(g.members, fd), append(g.gens, fd)
	return fd, nil
}

// openMember opens a blocking, close-on-exec socket of domain bound to
// sa with SO_REUSEPORT (and IPV6_V6ONLY as v6only says, for AF_INET6),
// listening if stream.
func openMember(domain, v6only int, sa unix.Sockaddr, stream bool) (int, error) {
	typ := unix.SOCK_DGRAM
	if stream {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := bindMember(fd, domain, v6only, sa, stream); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func bindMember(fd, domain, v6only int, sa unix.Sockaddr, stream bool) error {
	if stream { // as Go's net.Listen, so that TIME_WAIT does not stop it
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
	}
	if domain == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	if stream {
		if err := unix.Listen(fd, listenBacklog()); err != nil {
			return os.NewSyscallError("listen", err)
		}
	}
	return nil
}

// sockaddrOf is address (IP:PORT, as a ListenConfig's Control gets it)
// for a socket of domain.
func sockaddrOf(domain int, address string) (unix.Sockaddr, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, err
	}
	host, _, _ = strings.Cut(host, "%") // a zone: loopback and wildcards have none
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, err
	}
	if domain == unix.AF_INET {
		if !ip.Is4() && !ip.Is4In6() {
			return nil, fmt.Errorf("%s is not an IPv4 address", host)
		}
		return &unix.SockaddrInet4{Port: p, Addr: ip.Unmap().As4()}, nil
	}
	if ip.Is4() && ip.IsUnspecified() { // as Go binds "tcp" on 0.0.0.0: dual-stack [::]
		ip = netip.IPv6Unspecified()
	}
	return &unix.SockaddrInet6{Port: p, Addr: ip.As16()}, nil
}

// steer sends every new connection to fd, a member, from now on.
func (g *reuseGroup) steer(fd int) error {
	old := g.target
	g.target = fd
	if err := g.attach(); err != nil {
		g.target = old
		return err
	}
	return nil
}

// close closes the generation sockets; the anchor is the caller's.
func (g *reuseGroup) close() {
	for _, fd := range g.gens {
		unix.Close(fd)
	}
	g.members, g.gens, g.target = []int{g.anchor}, nil, g.anchor
}

// queued is how much waits on fd, a member, to be accepted or read: for
// a listening socket its accept queue (TCP_INFO's tcpi_unacked is the
// accept backlog of a listener), for a datagram socket the size of the
// next datagram (SIOCINQ; 0 when none waits).
func (g *reuseGroup) queued(fd int) (int, error) {
	if g.stream {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, os.NewSyscallError("getsockopt TCP_INFO", err)
		}
		return int(info.Unacked), nil
	}
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return n, os.NewSyscallError("ioctl SIOCINQ", err)
}

// drainQuiet is how long the sockets of a generation that no longer gets
// connections must stay empty before its child is stopped: a handshake
// begun before the steering changed completes into the old queue within
// a round trip, and the child should have read the request on what it
// accepted last (a Go server drops a request it reads after Shutdown
// began; with 50 ms one of 160 reloads under load lost one).
const drainQuiet = 100 * time.Millisecond

// drainPoll is how often drained looks.
const drainPoll = 5 * time.Millisecond

// waitDrained returns once queued reports nothing for every socket of
// the slice for drainQuiet, or ctx's error.
func waitDrained(ctx context.Context, queued func() (int, error)) error {
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	var quietSince time.Time
	for {
		n, err := queued()
		if err != nil {
			return err
		}
		switch {
		case n > 0:
			quietSince = time.Time{}
		case quietSince.IsZero():
			quietSince = time.Now()
		case time.Since(quietSince) >= drainQuiet:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d still queued: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}

// listenBacklog is the kernel's limit, as Go's net.Listen uses.
func listenBacklog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return min(n, 1<<16-1)
		}
	}
	return unix.SOMAXCONN
}
