//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/hooks"
	"golang.org/x/sys/unix"
)

func init() {
	// nonblock: exits 0 if fd 3's O_NONBLOCK is as WANT_NONBLOCK says.
	helpers["nonblock"] = func() int {
		fl, err := unix.FcntlInt(3, unix.F_GETFL, 0)
		if err != nil {
			return 1
		}
		if strconv.FormatBool(fl&unix.O_NONBLOCK != 0) != os.Getenv("WANT_NONBLOCK") {
			fmt.Fprintf(os.Stderr, "fd 3 O_NONBLOCK %v, want %s\n", fl&unix.O_NONBLOCK != 0, os.Getenv("WANT_NONBLOCK"))
			return 1
		}
		return 0
	}
}

// testGroupSockets is wrapperSockets with one socket per generation on
// network (tcp or udp) at 127.0.0.1, its anchor made as the Upgrader
// makes one (through control); all closed at cleanup.
func testGroupSockets(t *testing.T, network string, nonblocking bool) *wrapperSockets {
	t.Helper()
	w := newWrapperSockets(modeAuto, nonblocking, slog.New(slog.DiscardHandler))
	lc := net.ListenConfig{Control: w.control}
	lc.SetMultipathTCP(false) // as the Upgrader makes it
	var (
		sc   syscall.Conn
		addr net.Addr
	)
	if network == "udp" {
		pc, err := lc.ListenPacket(context.Background(), network, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		sc, addr = pc.(syscall.Conn), pc.LocalAddr()
	} else {
		ln, err := lc.Listen(context.Background(), network, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		sc, addr = ln.(syscall.Conn), ln.Addr()
	}
	if !w.created {
		t.Fatal("control did not run")
	}
	rc, _ := sc.SyscallConn()
	var fd int
	var derr error
	rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		t.Fatal(derr)
	}
	spec := listenSpec{network: network, address: addr.String()}
	group, err := newReuseGroup(fd, spec.stream(), -1)
	if err != nil {
		t.Fatal(err)
	}
	w.socks = []*listenSocket{{spec: spec, fd: fd, addr: addr, group: group}}
	t.Cleanup(w.close)
	return w
}

// arrivals sends n connections (or datagrams) to w's address and
// returns how many each of the fds received, the anchor's first.
func arrivals(t *testing.T, w *wrapperSockets, n int, gens ...*generation) []int {
	t.Helper()
	s := w.socks[0]
	fds := []int{s.fd}
	for _, g := range gens {
		fds = append(fds, g.fds[0])
	}
	for _, fd := range fds {
		unix.SetNonblock(fd, true)
	}
	if s.spec.stream() {
		var conns []net.Conn
		for range n {
			c, err := net.DialTimeout("tcp", s.addr.String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
	} else {
		c, err := net.Dial("udp", s.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range n {
			if _, err := c.Write([]byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := make([]int, len(fds))
	take := func() int { // what arrived by now, taken
		total := 0
		for i, fd := range fds {
			for {
				var err error
				if s.spec.stream() {
					var nfd int
					nfd, _, err = unix.Accept4(fd, unix.SOCK_CLOEXEC)
					if err == nil {
						unix.Close(nfd)
					}
				} else {
					_, _, err = unix.Recvfrom(fd, make([]byte, 64), unix.MSG_DONTWAIT)
				}
				if err != nil {
					break
				}
				got[i]++
			}
			total += got[i]
		}
		return total
	}
	waitUntil(t, fmt.Sprintf("%d connections or datagrams arrive", n), func() bool { return take() == n })
	return got
}

// TestSteering: new connections (datagrams) go only to the socket of the
// generation steered to, never to the anchor or another generation's:
// the first generation at once, a new one only once steered to, through
// generations that take the two generation sockets in turn, and to the
// anchors for a wrapper that takes over.
func TestSteering(t *testing.T) {
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			w := testGroupSockets(t, network, false)
			const n = 20
			want := func(step string, got []int, to int) {
				t.Helper()
				for i, k := range got {
					if (i == to && k != n) || (i != to && k != 0) {
						t.Fatalf("%s: arrivals per socket (anchor, generations...) %v; want all %d at index %d", step, got, n, to)
					}
				}
			}
			next := func(serving *generation) *generation {
				t.Helper()
				g, err := w.newGeneration(serving)
				if err != nil {
					t.Fatal(err)
				}
				return g
			}
			g1 := next(nil)
			want("first generation", arrivals(t, w, n, g1), 1)
			g2 := next(g1)
			if g2.fds[0] == g1.fds[0] {
				t.Fatal("the second generation got the first one's socket")
			}
			want("second generation started, not steered to", arrivals(t, w, n, g1, g2), 1)
			if err := w.steer(g2); err != nil {
				t.Fatal(err)
			}
			want("steered to the second generation", arrivals(t, w, n, g1, g2), 2)
			g3 := next(g2) // the first one's socket again
			if g3.fds[0] != g1.fds[0] {
				t.Fatal("the third generation did not get the first one's socket")
			}
			want("third generation started, not steered to", arrivals(t, w, n, g3, g2), 2)
			if err := w.steer(g3); err != nil {
				t.Fatal(err)
			}
			want("steered to the third generation", arrivals(t, w, n, g3, g2), 1)
			if err := w.steer(nil); err != nil {
				t.Fatal(err)
			}
			want("steered to the anchor (a takeover)", arrivals(t, w, n, g3, g2), 0)
		})
	}
}

// TestGenerationBlocking: a child gets its own sockets blocking, as
// systemd passes them, also a child restarted on sockets that its
// predecessor made non-blocking; with -nonblocking, non-blocking.
func TestGenerationBlocking(t *testing.T) {
	for _, nonblocking := range []bool{false, true} {
		t.Run("nonblocking="+strconv.FormatBool(nonblocking), func(t *testing.T) {
			w := testGroupSockets(t, "tcp", nonblocking)
			g, err := w.newGeneration(nil)
			if err != nil {
				t.Fatal(err)
			}
			sp := newTestSpawner(t)
			for _, before := range []bool{true, false} { // a child may have changed it
				if err := unix.SetNonblock(g.fds[0], before); err != nil {
					t.Fatal(err)
				}
				if err := w.prepare(g); err != nil {
					t.Fatal(err)
				}
				c := startHelper(t, sp, "nonblock", []string{"WANT_NONBLOCK=" + strconv.FormatBool(nonblocking)}, g.fds[0])
				waitExit(t, c)
				if c.status.ExitStatus() != 0 {
					t.Fatalf("the child saw the wrong O_NONBLOCK (set to %v before prepare): %s", before, c.describe())
				}
			}
		})
	}
}

// TestDrain: drain waits while connections queue on a generation's
// socket, and returns once they have been accepted.
func TestDrain(t *testing.T) {
	w := testGroupSockets(t, "tcp", false)
	g, err := w.newGeneration(nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c, err := net.DialTimeout("tcp", w.socks[0].addr.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.drain(ctx, g); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain with 3 queued: %v; want a deadline error", err)
	}
	for range 3 {
		fd, _, err := unix.Accept4(g.fds[0], unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.drain(ctx, g); err != nil {
		t.Fatalf("drain of an empty queue: %v", err)
	}
}

// freePort is a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freeWildPort is a port free on every address a moment ago, below the
// kernel's ephemeral range (32768 and up by default): a port from that
// range may meanwhile be any connection's local port (other tests' load),
// which a bind to 0.0.0.0 conflicts with and one to 127.0.0.1 may not.
func freeWildPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

// TestOpenSockets: through a real Upgrader, a TCP and a UDP socket at a
// fixed port are per generation, a unix socket is shared; the first
// generation's socket exists before the Upgrader's, so that what arrives
// before the first child starts waits for it, never on the anchor; and a
// second wrapper's bind to a port in use fails, SO_REUSEPORT
// notwithstanding.
func TestOpenSockets(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	dir := t.TempDir()
	wild := strconv.Itoa(freeWildPort(t)) // "tcp" on 0.0.0.0: Go makes a dual-stack [::] socket
	specs := []listenSpec{{network: "tcp", address: "127.0.0.1:" + port}, {network: "udp", address: "127.0.0.1:" + port}, {network: "unix", address: dir + "/u.sock"},
		{network: "tcp", address: "0.0.0.0:" + wild}}
	open := func(name string) (*wrapperSockets, error) {
		upg, err := handoff.New(context.Background(), handoff.Config{Name: name, Socket: dir + "/" + name + ".sock"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { upg.Close() })
		w := newWrapperSockets(modeAuto, false, slog.New(slog.DiscardHandler))
		hooks.Wrap(upg, hooks.Wrapper{Reload: func(context.Context, func(string), bool) error { return nil }, StatusDetail: func() any { return nil }, SocketControl: w.control})
		err = w.open(upg, specs)
		t.Cleanup(w.close)
		return w, err
	}
	w, err := open("a")
	if err != nil {
		t.Fatal(err)
	}
	var modes []string
	for _, m := range w.modes() {
		modes = append(modes, m.Mode)
	}
	if fmt.Sprint(modes) != "[per-generation per-generation shared per-generation]" {
		t.Fatalf("modes %v", w.modes())
	}
	for i, network := range []string{"tcp", "udp", "", "tcp on 0.0.0.0"} {
		if network == "" {
			continue
		}
		if len(w.socks[i].group.gens) != 1 {
			t.Fatalf("%s: %d generation sockets bound with the Upgrader's, want the first one", network, len(w.socks[i].group.gens))
		}
		one := &wrapperSockets{socks: w.socks[i : i+1]}
		g := &generation{fds: []int{w.socks[i].group.gens[0]}}
		if got := arrivals(t, one, 5, g); got[0] != 0 || got[1] != 5 {
			t.Errorf("%s before the first child: arrivals (anchor, first generation) %v; want all on the first generation's", network, got)
		}
	}
	g, err := w.newGeneration(nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.fds[0] != w.socks[0].group.gens[0] || g.fds[2] != w.socks[2].fd || !g.own[0] || !g.own[1] || g.own[2] {
		t.Fatalf("first generation %+v", g)
	}
	if _, err := open("b"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a second wrapper on the same port: %v; want EADDRINUSE", err)
	}
}
