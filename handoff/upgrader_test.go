package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serveTag answers every connection on ln with tag, until ln is closed.
// The returned channel yields Accept's final error.
func serveTag(ln net.Listener, tag string) <-chan error {
	done := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			c.Write([]byte(tag))
			c.Close()
		}
	}()
	return done
}

// servingUpgrader is newUpgrader with one loopback TCP listener that
// answers its tag (serveTag), ready; it returns the listener's address.
func servingUpgrader(t testing.TB, cfg Config, tag string) (*Upgrader, string) {
	t.Helper()
	u := newUpgrader(t, cfg)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveTag(ln, tag)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	return u, ln.Addr().String()
}

// fetchTag connects to addr and returns what the server said.
func fetchTag(t testing.TB, network, addr string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return string(b)
}

// TestTakeover: a second process of the same service on the same control
// socket takes the listening socket over; the first stops accepting only
// when the second is ready, and the second can itself be taken over.
func TestTakeover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := newUpgrader(t, cfg)
	ln, err := old.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	oldDone := serveTag(ln, "old")
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	if got := fetchTag(t, "tcp", addr); got != "old" {
		t.Fatalf("before takeover: %q", got)
	}

	next := newUpgrader(t, cfg)
	if g := next.Generation(); g != 2 {
		t.Fatalf("successor generation %d, want 2", g)
	}
	ln2, err := next.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if ln2.Addr().String() != addr {
		t.Fatalf("successor listens on %s, want the inherited %s", ln2.Addr(), addr)
	}
	select {
	case <-old.Exit():
		t.Fatal("predecessor told to exit before the successor was ready")
	default:
	}
	nextDone := serveTag(ln2, "next")
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, old.Exit(), "Exit once the successor is ready")
	if err := recvWithin(t, oldDone, "the old listener to close"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("old listener: %v, want closed", err)
	}
	if got := fetchTag(t, "tcp", addr); got != "next" {
		t.Fatalf("after takeover: %q", got)
	}
	if err := old.Upgrade(context.Background()); !errors.Is(err, ErrHandedOver) {
		t.Fatalf("Upgrade after handover = %v, want ErrHandedOver", err)
	}
	old.Close()
	if _, err := os.Stat(cfg.Socket); err != nil {
		t.Fatalf("control socket gone after the old process closed: %v", err)
	}

	third := newUpgrader(t, cfg)
	if g := third.Generation(); g != 3 {
		t.Fatalf("third generation %d, want 3", g)
	}
	ln3, err := third.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	thirdDone := serveTag(ln3, "third")
	if err := third.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := recvWithin(t, nextDone, "the second generation's listener to close"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second generation's listener: %v, want closed", err)
	}
	if got := fetchTag(t, "tcp", addr); got != "third" {
		t.Fatalf("after second takeover: %q", got)
	}
	next.Close()
	third.Close()
	if err := recvWithin(t, thirdDone, "the last listener to close"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("last listener: %v, want closed", err)
	}
	if _, err := os.Stat(cfg.Socket); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind by the last process: %v", err)
	}
}

// TestTakeoverRefusedBeforeReady: a process that is not serving yet
// cannot be taken over; it is not disturbed by the attempt.
func TestTakeoverRefusedBeforeReady(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := newUpgrader(t, cfg)
	_, err := New(context.Background(), cfg)
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("New = %v, want ErrNotReady", err)
	}
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
}

// TestOneUpgradeAtATime: of many processes trying to take over at once,
// exactly one proceeds; the rest, and Upgrade, get ErrInProgress.
func TestOneUpgradeAtATime(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, _ := readyUpgrader(t, cfg)
	const n = 20
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []*Upgrader
		errs    []error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := New(context.Background(), cfg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			winners = append(winners, u)
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d processes took over, want 1 (errors: %v)", len(winners), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrInProgress) {
			t.Errorf("loser got %v, want ErrInProgress", err)
		}
	}
	if err := old.Upgrade(context.Background()); !errors.Is(err, ErrInProgress) {
		t.Fatalf("Upgrade during a takeover = %v, want ErrInProgress", err)
	}
	next := winners[0]
	defer next.Close()
	if _, err := next.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, old.Exit(), "Exit once the winner is ready")
}

// TestSuccessorFailsBeforeReady: whether the successor goes away or
// never says it is ready, the serving process keeps serving and a later
// takeover succeeds.
func TestSuccessorFailsBeforeReady(t *testing.T) {
	for _, tt := range []struct {
		name string
		fail func(*Upgrader)
	}{
		{"exits", func(u *Upgrader) { u.Close() }},
		{"hangs", func(u *Upgrader) {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := testConfig(t)
			cfg.ReadyTimeout = 300 * time.Millisecond
			old, addr := servingUpgrader(t, cfg, "old")

			failing := newUpgrader(t, cfg)
			if _, err := failing.Listen("tcp", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			tt.fail(failing)
			waitFor(t, "the upgrade slot to free up", func() bool {
				old.mu.Lock()
				defer old.mu.Unlock()
				return old.state == stateServing
			})
			if got := fetchTag(t, "tcp", addr); got != "old" {
				t.Fatalf("after a failed successor: %q", got)
			}
			if err := failing.Ready(); err == nil {
				t.Fatal("Ready succeeded for a successor the predecessor gave up on")
			}
			failing.Close()

			servingUpgrader(t, cfg, "next")
			recvWithin(t, old.Exit(), "Exit once the retry is ready")
			if got := fetchTag(t, "tcp", addr); got != "next" {
				t.Fatalf("after the retry: %q", got)
			}
		})
	}
}

// TestUDPHandover: a datagram socket handed over keeps receiving; after
// the handover only the successor reads it.
func TestUDPHandover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old := newUpgrader(t, cfg)
	pc, err := old.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 64)
	client.Write([]byte("one"))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("old read %q, %v", buf[:n], err)
	}

	next := newUpgrader(t, cfg)
	pc2, err := next.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if pc2.LocalAddr().String() != pc.LocalAddr().String() {
		t.Fatalf("successor bound %s, want %s", pc2.LocalAddr(), pc.LocalAddr())
	}
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("old socket still reads after the handover: %v", err)
	}
	for _, msg := range []string{"two", "three"} {
		client.Write([]byte(msg))
		pc2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _, err := pc2.ReadFrom(buf); err != nil || string(buf[:n]) != msg {
			t.Fatalf("successor read %q, %v; want %q", buf[:n], err, msg)
		}
	}
}

// TestUnixListenerHandover: a unix socket path survives the old process,
// and goes away with the last one.
func TestUnixListenerHandover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	path := filepath.Join(filepath.Dir(cfg.Socket), "app.sock")
	old := newUpgrader(t, cfg)
	ln, err := old.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveTag(ln, "old")
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	next := newUpgrader(t, cfg)
	ln2, err := next.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveTag(ln2, "next")
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if got := fetchTag(t, "unix", path); got != "next" {
		t.Fatalf("after handover: %q", got)
	}
	next.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file left by the last process: %v", err)
	}
}

// TestStaleControlSocketReplaced: a socket file nobody listens on is
// replaced by a fresh start.
func TestStaleControlSocketReplaced(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	ln, err := net.Listen("unixpacket", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // leaves the file, with nobody behind it
	u := newUpgrader(t, cfg)
	if g := u.Generation(); g != 1 {
		t.Fatalf("generation %d, want a fresh start", g)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("control socket mode %v, want 0600", perm)
	}
}

// TestUnclaimedSocketsClosed: a socket the predecessor had but this
// version does not listen on is closed at Ready, and its unix path
// removed; the one it claimed stays open.
func TestUnclaimedSocketsClosed(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	path := filepath.Join(filepath.Dir(cfg.Socket), "gone.sock")
	old := newUpgrader(t, cfg)
	gone, err := old.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := old.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	goneSocket, keptSocket := fdLink(t, gone.(syscall.Conn)), fdLink(t, kept.(syscall.Conn))

	next := newUpgrader(t, cfg)
	ln, err := next.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != kept.Addr().String() {
		t.Fatalf("successor listens on %s, want the inherited %s", ln.Addr(), kept.Addr())
	}
	if n := fdsTo(t, goneSocket); n < 2 {
		t.Fatalf("%d descriptors of the unix socket before the successor's Ready, want the predecessor's and the successor's inherited copy", n)
	}
	if err := next.Ready(); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, old.Exit(), "Exit once the successor is ready")
	old.Close() // the predecessor exits, and its copies go with it
	if n := fdsTo(t, goneSocket); n != 0 {
		t.Fatalf("the unclaimed unix socket (%s) is still open in %d descriptors after the successor's Ready", goneSocket, n)
	}
	if n := fdsTo(t, keptSocket); n == 0 {
		t.Fatalf("the claimed tcp socket (%s) was closed too", keptSocket)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("unclaimed unix socket still there: %v", err)
	}
}

// fdLink returns what /proc/self/fd says c's descriptor is, such as
// "socket:[1234]": the same for every descriptor of one socket.
func fdLink(t testing.TB, c syscall.Conn) string {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var link string
	if cerr := rc.Control(func(fd uintptr) { link, err = os.Readlink(fmt.Sprint("/proc/self/fd/", fd)) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return link
}

// fdsTo counts this process's descriptors that are link (see fdLink).
func fdsTo(t testing.TB, link string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && l == link {
			n++
		}
	}
	return n
}

func TestListenErrors(t *testing.T) {
	checkLeaks(t)
	u := newUpgrader(t, testConfig(t))
	for _, tt := range []struct {
		call func() error
		want string
	}{
		{func() error { _, err := u.Listen("udp", "127.0.0.1:0"); return err }, `handoff: Listen cannot serve network "udp": it is for datagrams; use ListenPacket`},
		{func() error { _, err := u.ListenPacket("tcp", "127.0.0.1:0"); return err }, `handoff: ListenPacket cannot serve network "tcp": it is for streams; use Listen`},
		{func() error { _, err := u.Listen("sctp", "127.0.0.1:0"); return err }, `handoff: Listen cannot serve network "sctp": want tcp, tcp4, tcp6, unix or unixpacket`},
		{func() error { _, err := u.ListenPacket("ip4:1", "127.0.0.1"); return err }, `handoff: ListenPacket cannot serve network "ip4:1": want udp, udp4, udp6 or unixgram`},
	} {
		if err := tt.call(); err == nil || err.Error() != tt.want {
			t.Errorf("error %v, want %q", err, tt.want)
		}
	}
	if _, err := u.ListenNamed("web", "tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if _, err := u.ListenNamed("web", "tcp", "127.0.0.1:0"); err == nil || err.Error() != "handoff: socket web (tcp 127.0.0.1:0) is already in use" {
		t.Errorf("two sockets with the same name: %v", err)
	}
	if _, err := u.Listen("tcp", "127.0.0.1:18199"); err != nil {
		t.Fatal(err)
	}
	// A socket without a name is named by where it is, never by its
	// internal key ("tcp|127.0.0.1:18199").
	if _, err := u.Listen("tcp", "127.0.0.1:18199"); err == nil || err.Error() != "handoff: socket tcp 127.0.0.1:18199 is already in use" {
		t.Errorf("the same address twice: %v", err)
	}
	u.Close()
	if _, err := u.Listen("tcp", "127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Listen after Close = %v, want ErrClosed", err)
	}
	if err := u.Ready(); !errors.Is(err, ErrClosed) {
		t.Errorf("Ready after Close = %v, want ErrClosed", err)
	}
}

// TestTakeoverOtherService: a process of another service on the same
// control socket is refused, and the error says why once, in words.
func TestTakeoverOtherService(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, _ := servingUpgrader(t, cfg, "old")
	other := cfg
	other.Name = "other"
	_, err := New(context.Background(), other)
	want := fmt.Sprintf(`handoff: take over: peer refused (service name mismatch): pid %d serves service %q on this control socket; the newcomer (pid %d) is service "other"`, os.Getpid(), cfg.Name, os.Getpid())
	if !errors.Is(err, ErrPeerRejected) || err.Error() != want {
		t.Fatalf("New = %v\nwant %s", err, want)
	}
	if st := old.Status(); st.State != "serving" {
		t.Fatalf("the serving process is %s after refusing", st.State)
	}
}

// TestRefusedErrorWords: a refusal reads "peer refused (CODE): REASON",
// the code left out when it says nothing more than "refused".
func TestRefusedErrorWords(t *testing.T) {
	for _, tt := range []struct {
		err  RefusedError
		want string
	}{
		{RefusedError{Code: RefusedInProgress, Reason: "pid 7 is upgrading to pid 9"}, "handoff: peer refused (upgrade in progress): pid 7 is upgrading to pid 9"},
		{RefusedError{Code: RefusedOther, Reason: "another instance"}, "handoff: peer refused: another instance"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	long := Config{Socket: "/tmp/" + string(make([]byte, 200))}
	if _, err := New(context.Background(), long); err == nil {
		t.Error("New accepted a control socket path longer than sun_path")
	}
	if _, err := New(context.Background(), Config{Name: "a/b"}); err == nil {
		t.Error("New accepted a name with a slash")
	}
}

// lockedBuffer is a log destination that goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCloseDuringTakeover: a process closed while a successor takes over
// tells the successor why, and its log does not warn that it is "still
// serving" as it exits.
func TestCloseDuringTakeover(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	var logs lockedBuffer
	oldCfg := cfg
	oldCfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	old, _ := servingUpgrader(t, oldCfg, "old")
	succ := newUpgrader(t, cfg)
	if _, err := succ.Listen("tcp", "127.0.0.1:0"); err != nil { // the predecessor's
		t.Fatal(err)
	}
	old.Close()
	err := succ.Ready()
	want := fmt.Sprintf("handoff: predecessor gave up: peer refused (closing): pid %d is shutting down", os.Getpid())
	if !errors.Is(err, ErrHandedOver) || err.Error() != want {
		t.Fatalf("Ready = %v\nwant %s", err, want)
	}
	if got := logs.String(); strings.Contains(got, "still serving") || strings.Contains(got, "level=WARN") {
		t.Errorf("the closed process's log warns:\n%s", got)
	}
}

// TestDescribeKey: messages name a socket by its name or by "network
// address", never by the internal key "network|address".
func TestDescribeKey(t *testing.T) {
	for key, want := range map[string]string{"web": "web", "tcp|127.0.0.1:8080": "tcp 127.0.0.1:8080", "unix|/run/a.sock": "unix /run/a.sock"} {
		if got := describeKey(key); got != want {
			t.Errorf("describeKey(%q) = %q, want %q", key, got, want)
		}
	}
}
