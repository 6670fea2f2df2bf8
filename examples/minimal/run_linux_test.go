//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/exitstatus"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/procfs"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// roleInNetns is the helper role in which this test binary, started in a
// network namespace of its own, brings up the loopback interface there
// and becomes the program named by its first argument.
const roleInNetns = "minimal-in-netns"

// addr is where main.go listens (":8080"), as seen inside its namespace.
const addr = "127.0.0.1:8080"

var (
	reaper  *testbed.Reaper
	builder *testbed.Builder
)

func TestMain(m *testing.M) {
	if role := os.Getenv(testenv.Helper); role != "" {
		err := fmt.Errorf("unknown helper role %q", role)
		if role == roleInNetns {
			err = execInNetns(os.Args[1])
		}
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
		os.Exit(2)
	}
	testbed.RunTests(m, "../..", true, func(r *testbed.Reaper, b *testbed.Builder) { reaper, builder = r, b })
}

// TestProgramRestarts runs README's program and holds it to what README
// says of it: it serves; SIGHUP makes a fresh copy of the binary take
// over with no request failed; SIGTERM drains, answering what clients
// still send on their connections, even a request half sent, and exits 0.
// main.go binds :8080, so the program runs in a network namespace of its
// own, where that port is free and the load stays.
func TestProgramRestarts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the program runs in a network namespace of its own (main.go binds :8080)")
	}
	testbed.CheckNoChildren(t, reaper)
	bin := builder.Build(t, "./examples/minimal")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := testbed.NewService(t, reaper, self)
	s.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	s.Env = []string{testenv.Helper + "=" + roleInNetns}
	// The control socket (Config{Name: "api"}: api.sock) goes to the
	// service's directory, for the program and for control.SocketPath.
	t.Setenv("RUNTIME_DIRECTORY", s.Dir)
	t.Setenv("TMPDIR", s.Dir)
	sock, err := control.SocketPath("api")
	if err != nil {
		t.Fatal(err)
	}

	first := s.StartProgram(self, bin)
	d := dialerInto(t, first)
	testbed.Eventually(t, 10*time.Second, "the program to answer hello", func() bool {
		k, err := dialKept(d)
		if err != nil {
			return false
		}
		defer k.c.Close()
		_, err = k.get("")
		return err == nil
	})
	if st := serving(t, sock); st.PID != first {
		t.Fatalf("the control socket says %d serves, want %d, the process started", st.PID, first)
	}

	// SIGHUP under load, half the clients on keep-alive connections, half
	// on a new connection for each request; none retries.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	loaded := make(chan *loadgen.Result, 1)
	go func() {
		loaded <- loadgen.Run(ctx, loadgen.Config{Addr: addr, Mode: loadgen.Mixed, Workers: 4,
			MaxRequests: 200_000, Interval: 2 * time.Millisecond, Timeout: 5 * time.Second, Dial: d.DialContext})
	}()
	stopLoad := sync.OnceValue(func() *loadgen.Result { cancel(); return <-loaded })
	t.Cleanup(func() { stopLoad() })
	flowing := func(what string) {
		t.Helper()
		from := d.dials.Load()
		testbed.Eventually(t, 10*time.Second, what, func() bool { return d.dials.Load() >= from+50 })
	}
	flowing("load to flow to the first process")
	s.Signal(first, syscall.SIGHUP)
	var next int
	testbed.Eventually(t, 10*time.Second, "a successor to serve", func() bool {
		st, err := status(sock)
		next = st.PID
		return err == nil && st.PID != first && st.State == "serving"
	})
	// The first process stands by for its canary window: the successor
	// is its child until it exits, then this process's (a subreaper).
	if kids := procfs.Children(first); !slices.Contains(kids, next) {
		t.Fatalf("the control socket says %d serves, not a child of %d (children %v)", next, first, kids)
	}
	s.Remember(next)
	if ws := s.WaitExit(first, handoff.DefaultCanaryWindow+15*time.Second); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("the first process, %d, ended with %s after the SIGHUP, want exit status 0", first, exitstatus.Wait(ws))
	}
	if st := serving(t, sock); st.PID != next {
		t.Fatalf("the control socket says %d serves, want the successor %d", st.PID, next)
	}
	if !slices.Contains(testbed.Children(), next) {
		t.Fatalf("the successor %d is not this process's child once the first exited", next)
	}
	flowing("load to flow to the successor alone")
	r := stopLoad()
	t.Logf("load through the SIGHUP: %v, %d connections", r, r.Conns)
	if r.FailedCount() != 0 || r.OK == 0 {
		t.Fatalf("%d of %d requests failed through the SIGHUP: %v", r.FailedCount(), r.Requests, r.Errors)
	}

	// SIGTERM with three keep-alive connections open, one with half a
	// request sent: each must get answers until the successor says
	// "Connection: close", then be closed, and the successor exit 0.
	kept := make([]*keptConn, 3)
	for i := range kept {
		if kept[i], err = dialKept(d); err != nil {
			t.Fatal(err)
		}
		defer kept[i].c.Close()
		if closing, err := kept[i].get(""); err != nil || closing {
			t.Fatalf("connection %d before the SIGTERM: closing %v, %v", i, closing, err)
		}
	}
	const half = "GET / HTTP/1.1\r\nHo"
	if _, err := io.WriteString(kept[0].c, half); err != nil {
		t.Fatal(err)
	}
	s.Signal(next, syscall.SIGTERM)
	testbed.Eventually(t, 10*time.Second, "the successor to stop accepting", func() bool {
		k, err := dialKept(d)
		if err == nil {
			k.c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	for i, k := range kept {
		sent := half
		if i != 0 {
			sent = ""
		}
		n, err := k.drain(sent)
		if err != nil {
			t.Fatalf("connection %d after the SIGTERM, request %d: %v", i, n, err)
		}
		t.Logf("connection %d: %d answers after the SIGTERM, then closed", i, n)
	}
	if ws := s.WaitExit(next, 30*time.Second); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("the successor, %d, ended with %s after the SIGTERM, want exit status 0", next, exitstatus.Wait(ws))
	}
}

// status asks the process serving the control socket sock for its status.
func status(sock string) (handoff.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return control.Status(ctx, sock)
}

// serving returns the status of the process serving the control socket
// sock, and fails t unless it says it serves.
func serving(t *testing.T, sock string) handoff.Status {
	t.Helper()
	st, err := status(sock)
	if err != nil || st.State != "serving" {
		t.Fatalf("status at %s: %+v, %v; want a process serving", sock, st, err)
	}
	return st
}

// execInNetns brings up the loopback interface, down in a new network
// namespace, and replaces this process with the program bin.
func execInNetns(bin string) error {
	os.Unsetenv(testenv.Helper)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl(SIOCGIFFLAGS)", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl(SIOCSIFFLAGS)", err)
	}
	unix.Close(fd)
	return syscall.Exec(bin, []string{bin}, os.Environ())
}

// A netnsDialer opens TCP connections inside a network namespace: a
// socket stays in the namespace it was made in, whichever the thread
// that uses it later is in.
type netnsDialer struct {
	ns    int          // the namespace, open; closed by t's cleanup
	dials atomic.Int64 // connections opened
}

// dialerInto returns a dialer into the network namespace of process pid.
// It holds the namespace open: it outlives pid if a successor lives on in
// it.
func dialerInto(t *testing.T, pid int) *netnsDialer {
	t.Helper()
	ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("the network namespace of %d: %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(ns) })
	return &netnsDialer{ns: ns}
}

// DialContext dials addr, an IP address and port (a name would be looked
// up in other goroutines), from a thread that enters the namespace for
// the dial and leaves it again. A thread that cannot leave stays locked
// to its goroutine and ends with it.
func (d *netnsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type dialed struct {
		c   net.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- dialed{nil, err}
			return
		}
		defer unix.Close(home)
		if err := unix.Setns(d.ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- dialed{nil, os.NewSyscallError("setns", err)}
			return
		}
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- dialed{c, err}
	}()
	r := <-done
	if r.err == nil {
		d.dials.Add(1)
	}
	return r.c, r.err
}

// keptConn is an HTTP/1.1 keep-alive connection to the program that
// never retries.
type keptConn struct {
	c  net.Conn
	br *bufio.Reader
}

// dialKept opens a connection to the program.
func dialKept(d *netnsDialer) (*keptConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &keptConn{c: c, br: bufio.NewReader(c)}, nil
}

// get completes a request of which sent was already sent (a prefix of
// it, or nothing), and reads the response, which must be README's hello;
// it reports whether the program closes the connection after it.
func (k *keptConn) get(sent string) (closing bool, err error) {
	const req = "GET / HTTP/1.1\r\nHost: api\r\n\r\n"
	k.c.SetDeadline(time.Now().Add(5 * time.Second))
	if len(sent) > len(req) || req[:len(sent)] != sent {
		return false, fmt.Errorf("%q does not begin a request", sent)
	}
	if _, err := io.WriteString(k.c, req[len(sent):]); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return false, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "hello\n" {
		return false, fmt.Errorf("%s %q, want 200 %q", resp.Status, body, "hello\n")
	}
	return resp.Close, nil
}

// drain sends requests on a connection of a draining program, the first
// completing sent, until an answer says "Connection: close"; then the
// program must close the connection. It returns how many it sent.
func (k *keptConn) drain(sent string) (int, error) {
	for n := 1; n <= 100; n++ {
		closing, err := k.get(sent)
		if err != nil {
			return n, err
		}
		sent = ""
		if !closing {
			continue
		}
		if b, err := k.br.ReadByte(); err != io.EOF {
			return n, fmt.Errorf("after its Connection: close answer the connection read %q, %v; want EOF", b, err)
		}
		return n, nil
	}
	return 100, errors.New("no Connection: close answer in 100 requests")
}
