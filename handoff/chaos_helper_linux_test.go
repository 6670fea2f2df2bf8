//go:build linux

package handoff

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/testenv"
	"github.com/handoffd/handoff/internal/wire"
)

// Helper roles for the chaos and hostile-input integration tests
// (integration/chaos_test.go, integration/hostile_test.go). Those tests
// build this package's test binary and run it, against a real
// examples/httpserver under load, as a successor that dies at a chosen
// step of the protocol, or as a hostile client of the control socket. The
// roles speak the protocol with this package's own codec.
//
// Both take httpserver's flags (only -socket matters), so that the test
// binary can also be installed in place of httpserver and started by its
// SIGHUP upgrade; they read the rest from the environment.
const (
	// envChaosFile names a file that holds the step at which
	// chaos-successor dies (a file, so that a test can choose the step
	// after the server, whose environment its successors inherit, started).
	envChaosFile = testenv.ChaosFile
	// envHostile is the attack hostile-peer makes.
	envHostile = testenv.Hostile
	// envService is the service name the roles present.
	envService = testenv.Service
)

// Steps at which chaos-successor kills itself with SIGKILL.
const (
	stepAfterConnect = "after-connect" // connected, said nothing
	stepAfterHello   = "after-hello"   // said hello, read nothing
	stepMidTransfer  = "mid-transfer"  // read welcome; the fd batch is in flight
	stepAfterFDs     = "after-fds"     // received and acknowledged every socket
	stepBeforeReady  = "before-ready"  // took over through New and Listen, not ready yet
	stepAfterReady   = "after-ready"   // sent ready, did not wait for done
	// stepHold takes over through New, says "holding sockets", waits for
	// SIGCONT (the test stops and continues it), then calls Ready and
	// exits 0 only if Ready fails because the predecessor gave up.
	stepHold = "hold"
	// stepReadyThenDie + a duration ("ready-then-die 1s") takes over
	// through New, listens on every inherited socket without accepting,
	// says ready, and dies that long after: a build that crashes in its
	// canary window. What it left in the accept queue is the old
	// process's again.
	stepReadyThenDie = "ready-then-die "
	// stepReadyThenPanic is the same, except that it accepts, and panics
	// on its first connection.
	stepReadyThenPanic = "ready-then-panic"
	// stepReadyThenDropLink takes over through New, says ready, closes
	// its link to the predecessor, and runs on (never accepting) until a
	// signal ends it: a successor whose library gave up on the link.
	stepReadyThenDropLink = "ready-then-drop-link"
)

func init() {
	registerHelper("chaos-successor", runChaosSuccessor)
	registerHelper("hostile-peer", runHostilePeer)
}

// socketFlag parses httpserver's flags and returns -socket.
func socketFlag() string {
	fs := flag.NewFlagSet("httpserver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "", "")
	fs.String("addr", "", "")
	fs.String("pidfile", "", "")
	fs.Duration("delay", 0, "")
	fs.Parse(os.Args[1:])
	return *socket
}

// die ends this process the hard way, as a crash or an OOM kill would.
func die() {
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// chaosConn connects to the serving process like New does: through the
// socketpair its Upgrade passed, else through the control socket.
func chaosConn(socket string) (*ctl.Conn, error) {
	if cc, err := inheritedControlConn(); cc != nil || err != nil {
		return cc, err
	}
	c, err := net.Dial("unixpacket", socket)
	if err != nil {
		return nil, err
	}
	return ctl.NewConn(c.(*net.UnixConn), wire.MaxMessageSize, wire.MaxFDs), nil
}

func runChaosSuccessor() error {
	b, err := os.ReadFile(os.Getenv(envChaosFile))
	if err != nil {
		return err
	}
	step := strings.TrimSpace(string(b))
	socket, name := socketFlag(), os.Getenv(envService)
	fmt.Fprintf(os.Stderr, "chaos-successor pid %d: step %s\n", os.Getpid(), step)
	switch {
	case step == stepBeforeReady, step == stepHold:
		return chaosWithLibrary(step, socket, name)
	case strings.HasPrefix(step, stepReadyThenDie), step == stepReadyThenPanic:
		return chaosReadyThenDie(step, socket, name)
	case step == stepReadyThenDropLink:
		return chaosReadyThenDropLink(socket, name)
	}
	cc, err := chaosConn(socket)
	if err != nil {
		return err
	}
	if step == stepAfterConnect {
		die()
	}
	deadline := time.Now().Add(10 * time.Second)
	// It says canary, as the library does: a predecessor with a canary
	// window then stands by, and rolls back once this process is gone.
	if err := cc.Send(wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version, Caps: wire.SupportedCaps, PID: uint32(os.Getpid()), Name: name}, nil, deadline); err != nil {
		return err
	}
	if step == stepAfterHello {
		die()
	}
	w, err := expect[wire.Welcome](cc, deadline)
	if err != nil {
		return err
	}
	if step == stepMidTransfer {
		die()
	}
	var files []int
	keep := func(_ wire.Entry, fd int) { files = append(files, fd) }
	if err := receiveSockets(cc, w.Sockets, 10*time.Second, keep); err != nil {
		return err
	}
	if step == stepAfterFDs {
		die()
	}
	if step != stepAfterReady {
		return fmt.Errorf("unknown chaos step %q", step)
	}
	if err := cc.Send(wire.Ready{PID: uint32(os.Getpid())}, nil, deadline); err != nil {
		return err
	}
	die()
	return nil
}

// chaosWithLibrary takes over through the public API and listens on the
// inherited socket, but never accepts.
func chaosWithLibrary(step, socket, name string) error {
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, syscall.SIGCONT)
	u, err := New(context.Background(), Config{Name: name, Socket: socket})
	if err != nil {
		return err
	}
	defer u.Close()
	if _, err := listenInherited(u); err != nil {
		return err
	}
	if step == stepBeforeReady {
		die()
	}
	fmt.Fprintf(os.Stderr, "chaos-successor pid %d: holding sockets\n", os.Getpid())
	<-cont
	err = u.Ready()
	if err == nil {
		return errors.New("Ready succeeded after the predecessor's ready timeout")
	}
	fmt.Fprintf(os.Stderr, "chaos-successor pid %d: Ready failed as it should: %v\n", os.Getpid(), err)
	return nil
}

// listenInherited calls Listen for every listener the predecessor passed.
func listenInherited(u *Upgrader) ([]net.Listener, error) {
	var entries []wire.Entry
	for _, in := range u.reg.inherited {
		if in.Kind == wire.KindListener {
			entries = append(entries, in.Entry)
		}
	}
	var lns []net.Listener
	for _, e := range entries {
		ln, err := u.ListenNamed(e.Name, e.Network, e.Address)
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// chaosReadyThenDie takes over through the public API, says ready, and
// dies in the canary window: after a while, or on its first connection.
func chaosReadyThenDie(step, socket, name string) error {
	u, err := New(context.Background(), Config{Name: name, Socket: socket})
	if err != nil {
		return err
	}
	lns, err := listenInherited(u)
	if err != nil {
		return err
	}
	if err := u.Ready(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "chaos-successor pid %d: ready\n", os.Getpid())
	if step == stepReadyThenPanic {
		// Accept only after ready: a connection accepted before it
		// would make this a successor that fails before ready, which
		// the old process handles without a rollback (another test's
		// subject).
		for _, ln := range lns {
			go func() {
				if _, err := ln.Accept(); err == nil {
					panic("chaos-successor: the first connection finds a bug")
				}
			}()
		}
		select {} // until the panic
	}
	after, err := time.ParseDuration(strings.TrimPrefix(step, stepReadyThenDie))
	if err != nil {
		return err
	}
	time.Sleep(after) // the crash comes this long after ready: the test's subject
	die()
	return nil
}

// chaosReadyThenDropLink takes over through the public API, says ready,
// closes the link to its predecessor and runs on until a signal ends it.
func chaosReadyThenDropLink(socket, name string) error {
	u, err := New(context.Background(), Config{Name: name, Socket: socket})
	if err != nil {
		return err
	}
	if _, err := listenInherited(u); err != nil {
		return err
	}
	if err := u.Ready(); err != nil {
		return err
	}
	u.mu.Lock()
	pred := u.pred
	u.mu.Unlock()
	if pred == nil {
		return errors.New("chaos-successor: no link to the predecessor after Ready")
	}
	pred.Close()
	fmt.Fprintf(os.Stderr, "chaos-successor pid %d: ready; dropped the link, running on\n", os.Getpid())
	select {} // until a signal (SIGTERM's default action) ends it
}

// Attacks hostile-peer makes on the control socket. Each prints the
// refusal code it got, one line per connection.
var attacks = map[string]func(c *net.UnixConn, name string) error{
	"random-bytes": func(c *net.UnixConn, _ string) error {
		b := make([]byte, 1000)
		rand.Read(b)
		_, err := c.Write(b)
		return err
	},
	"huge-length": func(c *net.UnixConn, name string) error {
		b, err := wire.Encode(goodHello(name))
		if err != nil {
			return err
		}
		binary.BigEndian.PutUint32(b[8:], 1<<30)
		_, err = c.Write(b)
		return err
	},
	"cut-message": func(c *net.UnixConn, name string) error {
		b, err := wire.Encode(goodHello(name))
		if err != nil {
			return err
		}
		_, err = c.Write(b[:len(b)/2])
		return err
	},
	"wrong-version": func(c *net.UnixConn, name string) error {
		h := goodHello(name)
		h.MinVersion, h.MaxVersion = wire.Version+1, wire.Version+9
		return ctl.WriteMsg(c, h, nil)
	},
	"wrong-name": func(c *net.UnixConn, name string) error {
		return ctl.WriteMsg(c, goodHello(name+"-other"), nil)
	},
	"silence": func(*net.UnixConn, string) error { return nil },
	"valid-hello": func(c *net.UnixConn, name string) error { // refused only for who sends it
		return ctl.WriteMsg(c, goodHello(name), nil)
	},
	"unrequested-fds": func(c *net.UnixConn, name string) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		fd, err := ctl.DupFD(ln.(*net.TCPListener))
		if err != nil {
			return err
		}
		defer ctl.CloseFDs([]int{fd})
		return ctl.WriteMsg(c, goodHello(name), []int{fd, fd})
	},
}

func goodHello(name string) wire.Hello {
	return wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version, PID: uint32(os.Getpid()), Name: name}
}

// runHostilePeer makes the attack envHostile names, on HANDOFF_TEST_CONNS
// connections at once (default 1), and prints each refusal code.
func runHostilePeer() error {
	kind := os.Getenv(envHostile)
	attack, ok := attacks[kind]
	if !ok {
		return fmt.Errorf("unknown attack %q", kind)
	}
	n := 1
	if s := os.Getenv(testenv.Conns); s != "" {
		fmt.Sscan(s, &n)
	}
	socket, name := socketFlag(), os.Getenv(envService)
	conns := make([]*net.UnixConn, n)
	for i := range conns {
		c, err := net.Dial("unixpacket", socket)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		defer c.Close()
		conns[i] = c.(*net.UnixConn)
	}
	codes := make([]RefusalCode, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], errs[i] = attackOnce(c, attack, name)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, code := range codes {
		fmt.Println(int(code))
	}
	return nil
}

// attackOnce makes the attack on c and returns the refusal that answers
// it; the serving process must then close the connection.
func attackOnce(c *net.UnixConn, attack func(*net.UnixConn, string) error, name string) (RefusalCode, error) {
	if err := attack(c, name); err != nil {
		return 0, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	m, fds, err := ctl.ReadMsg(c, wire.MaxMessageSize, wire.MaxFDs)
	ctl.CloseFDs(fds)
	if err != nil {
		return 0, fmt.Errorf("waiting for a refusal: %w", err)
	}
	r, ok := m.(wire.Refusal)
	if !ok || len(fds) > 0 {
		return 0, fmt.Errorf("got %s with %d descriptors, want a refusal", m.Type(), len(fds))
	}
	if _, _, err := ctl.ReadMsg(c, wire.MaxMessageSize, wire.MaxFDs); !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("after the refusal: %v, want the connection closed", err)
	}
	return RefusalCode(r.Code), nil
}
