//go:build linux

package handoff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
	"golang.org/x/sys/unix"
)

// The guarantees README makes, tried at their edges: who the peer is,
// what a failed successor may touch, two instances of one binary, the
// lock, and what a mistake says.

func init() {
	// listen-as-nobody: bind the control socket path as root, drop to
	// uid 65534 and listen there (SO_PEERCRED records the listener's
	// credentials at listen), then report how many bytes each client
	// sent before it went away. The socket file stays root's, so only
	// the credential check stands in the way.
	registerHelper("listen-as-nobody", func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: os.Getenv(envSocket)}); err != nil {
			return err
		}
		if err := syscall.Setgid(65534); err != nil {
			return err
		}
		if err := syscall.Setuid(65534); err != nil {
			return err
		}
		if err := unix.Listen(fd, 8); err != nil {
			return err
		}
		fmt.Println("listening")
		for {
			c, _, err := unix.Accept(fd)
			if err != nil {
				return err
			}
			unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
			total := 0
			buf := make([]byte, 1<<16)
			for {
				n, _, err := unix.Recvfrom(c, buf, 0)
				if err != nil || n == 0 {
					break
				}
				total += n
			}
			unix.Close(c)
			fmt.Println("received", total)
		}
	})
	// serve-then-late-ready: take over, serve slow requests (each
	// answered 300 ms after it arrives), say ready only after the
	// predecessor's ReadyTimeout, then drain what was accepted on
	// SIGTERM, as a program that serves before Ready does.
	registerHelper("serve-then-late-ready", func() error {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		ln, err := u.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		// It drains as a program should (HTTPServer): http.Server.Shutdown
		// alone drops a request it reads once it began (golang/go#75591).
		srv := &HTTPServer{Server: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond) // the request's work
			fmt.Fprint(w, "successor")
		})}, Upgrader: u}
		go srv.Serve(ln)
		wait, _ := time.ParseDuration(os.Getenv(envWait))
		time.Sleep(wait) // a slow start-up: longer than the predecessor waits
		if err := u.Ready(); err == nil {
			return errors.New("Ready succeeded after the predecessor's ReadyTimeout")
		}
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(ctx)
	})
}

// envWait is how long serve-then-late-ready waits before Ready.
const envWait = "HANDOFF_TEST_WAIT"

// asNobody skips the test unless it runs as root, which can start a peer
// of another user.
func asNobody(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a peer as another user")
	}
}

// startNobodyListener starts listen-as-nobody on path and returns its
// output, which the helper writes once per client it saw.
func startNobodyListener(t *testing.T, path string) *lineReader {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envHelper+"=listen-as-nobody", envSocket+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := newLineReader(out)
	if l := lines.next(t, "the helper to listen"); l != "listening" {
		t.Fatalf("helper said %q", l)
	}
	return lines
}

// TestSuccessorChecksPredecessor (case 1): a control socket that a
// process of another user listens on is not trusted: New fails with
// ErrPeerRejected before sending it a byte, and so do control.Status and
// control.Reload (askStatus, askReload).
func TestSuccessorChecksPredecessor(t *testing.T) {
	asNobody(t)
	checkLeaks(t)
	cfg := testConfig(t)
	lines := startNobodyListener(t, cfg.Socket)

	_, err := New(context.Background(), cfg)
	if !errors.Is(err, ErrPeerRejected) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("New = %v, want ErrPeerRejected naming uid 65534", err)
	}
	if l := lines.next(t, "the fake predecessor's report"); l != "received 0" {
		t.Fatalf("the fake predecessor %s, want 0 bytes", l)
	}
	for name, call := range map[string]func() error{
		"status": func() error { _, err := askStatus(context.Background(), cfg.Socket); return err },
		"reload": func() error { return askReload(context.Background(), cfg.Socket, nil) },
	} {
		if err := call(); !errors.Is(err, ErrPeerRejected) {
			t.Fatalf("%s = %v, want ErrPeerRejected", name, err)
		}
		if l := lines.next(t, "the fake server's report"); l != "received 0" {
			t.Fatalf("%s: the fake server %s, want 0 bytes", name, l)
		}
	}
}

// TestSocketDirectoryRule (case 1): New refuses a control socket in a
// directory others can write to, unless it is sticky and any socket file
// there is this user's.
func TestSocketDirectoryRule(t *testing.T) {
	checkLeaks(t)
	base := socketDir(t)
	dir := func(name string, mode os.FileMode) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	open := dir("open", 0o777)
	sticky := dir("sticky", 0o777|os.ModeSticky)
	group := dir("group", 0o770)

	for _, path := range []string{filepath.Join(open, "a.sock"), filepath.Join(group, "a.sock")} {
		cfg := testConfig(t)
		cfg.Socket = path
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "can be written by other users") {
			t.Fatalf("New in %s = %v, want a refusal of the directory", filepath.Dir(path), err)
		}
	}
	// A private directory inside one others can write to (not sticky):
	// they could rename it and put their own in its place.
	inner := filepath.Join(open, "private")
	if err := os.Mkdir(inner, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg0 := testConfig(t)
	cfg0.Socket = filepath.Join(inner, "a.sock")
	if _, err := New(context.Background(), cfg0); err == nil || !strings.Contains(err.Error(), "which other users can change") {
		t.Fatalf("New in %s = %v, want a refusal of its parent", inner, err)
	}
	// Sticky, no socket yet: fine, and the socket made there is ours.
	cfg := testConfig(t)
	cfg.Socket = filepath.Join(sticky, "a.sock")
	u := newUpgrader(t, cfg)
	u.Close()

	if os.Geteuid() == 0 {
		// Sticky, but the socket file belongs to another user.
		theirs := filepath.Join(sticky, "theirs.sock")
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: theirs}); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cfg.Socket = theirs
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("New with another user's socket file = %v, want a refusal", err)
		}
	}
}

// TestPIDFilePlace: New refuses a pid file in a directory others can
// write to, unless it is sticky and the file, if there is one, is this
// user's: another user could otherwise plant a pid file naming a process
// of theirs for an operator's `kill $(cat …)`.
func TestPIDFilePlace(t *testing.T) {
	checkLeaks(t)
	base := socketDir(t)
	dir := func(name string, mode os.FileMode) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	open := dir("open", 0o777)
	sticky := dir("sticky", 0o777|os.ModeSticky)
	cfg := testConfig(t)
	cfg.PIDFile = filepath.Join(open, "a.pid")
	if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "pid file directory") || !strings.Contains(err.Error(), "can be written by other users") {
		t.Fatalf("New with a pid file in %s = %v, want a refusal of the directory", open, err)
	}
	cfg.PIDFile = filepath.Join(sticky, "a.pid")
	u := newUpgrader(t, cfg) // sticky, no file yet: fine
	u.Close()
	if os.Geteuid() == 0 {
		theirs := filepath.Join(sticky, "theirs.pid")
		if err := os.WriteFile(theirs, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cfg.PIDFile = theirs
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "pid file "+theirs+" belongs to uid 65534") {
			t.Fatalf("New with another user's pid file = %v, want a refusal", err)
		}
	}
}

// TestUnlinkOnlyOwnSocketFile (case 1): a predecessor that names a file
// as the address of a unix listener it passes cannot make the successor
// remove that file: the successor removes only a socket file whose
// socket is the descriptor's.
func TestUnlinkOnlyOwnSocketFile(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	dir := filepath.Dir(cfg.Socket)
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrl, err := ctl.ListenControlSocket(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	tcp := localListener(t)
	other, err := net.Listen("unix", filepath.Join(dir, "other.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	// The fake predecessor: a welcome, then a batch that names the
	// victim as the unix listener's address; then done on ready.
	fake := make(chan error, 1)
	go func() {
		fake <- func() error {
			c, err := ctrl.AcceptUnix()
			if err != nil {
				return err
			}
			cc := ctl.NewConn(c, wire.MaxMessageSize, 0)
			defer cc.Close()
			step := time.Now().Add(5 * time.Second)
			if _, err := expect[wire.Hello](cc, step); err != nil {
				return err
			}
			if err := cc.Send(wire.Welcome{Version: wire.Version, PID: 1, Generation: 1, Sockets: 3}, nil, step); err != nil {
				return err
			}
			entries := []wire.Entry{
				{Kind: wire.KindListener, Network: "tcp", Address: "127.0.0.1:0"},
				{Kind: wire.KindListener, Network: "unix", Address: victim},
				{Kind: wire.KindControl, Network: "unixpacket", Address: cfg.Socket},
			}
			fds := []int{dupOrFatal(t, tcp), dupOrFatal(t, other.(*net.UnixListener)), dupOrFatal(t, ctrl)}
			defer ctl.CloseFDs(fds)
			if err := cc.Send(wire.FDBatch{Entries: entries}, fds, step); err != nil {
				return err
			}
			if _, err := expect[wire.Ack](cc, step); err != nil {
				return err
			}
			if _, err := expect[wire.Ready](cc, step); err != nil {
				return err
			}
			return cc.Send(wire.Done{}, nil, step)
		}()
	}()
	u := newUpgrader(t, cfg)
	if _, err := u.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if err := recvWithin(t, fake, "the fake predecessor"); err != nil {
		t.Fatalf("fake predecessor: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious" {
		t.Fatalf("the file the predecessor named: %q, %v; want it untouched", b, err)
	}
	if st := u.Status(); len(st.Dropped) != 1 || st.Dropped[0].Address != victim {
		t.Fatalf("Status.Dropped = %+v, want the unclaimed unix listener", st.Dropped)
	}
}

// TestFailedSuccessorLeavesUnixSockets (case 2): a successor that never
// becomes ready, or whose takeover is refused, removes none of the unix
// socket files its predecessor serves; the predecessor goes on serving
// them.
func TestFailedSuccessorLeavesUnixSockets(t *testing.T) {
	for _, how := range []string{"closed before ready", "refused at ready"} {
		t.Run(how, func(t *testing.T) {
			checkLeaks(t)
			cfg := testConfig(t)
			cfg.ReadyTimeout = 300 * time.Millisecond
			path := filepath.Join(filepath.Dir(cfg.Socket), "app.sock")
			old := newUpgrader(t, cfg)
			tcp, err := old.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			unixLn, err := old.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			serveTag(tcp, "old")
			serveTag(unixLn, "old")
			if err := old.Ready(); err != nil {
				t.Fatal(err)
			}

			succ, err := New(context.Background(), cfg)
			if err != nil {
				t.Fatalf("successor's New: %v", err)
			}
			if _, err := succ.Listen("tcp", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			if how == "closed before ready" {
				// It serves the unix socket too, then fails.
				if _, err := succ.Listen("unix", path); err != nil {
					t.Fatal(err)
				}
			}
			if how == "refused at ready" {
				// Not claiming the unix socket; the predecessor gives up
				// waiting before ready comes.
				waitFor(t, "the predecessor to give up on the successor", func() bool {
					st := old.Status()
					return st.State == "serving" && st.LastReload != nil
				})
				if err := succ.Ready(); err == nil {
					t.Fatal("Ready succeeded after the predecessor gave up")
				}
			}
			succ.Close()
			if _, err := os.Lstat(path); err != nil {
				t.Fatalf("the predecessor's unix socket file: %v", err)
			}
			if got := fetchTag(t, "unix", path); got != "old" {
				t.Fatalf("unix socket answered %q, want old", got)
			}
		})
	}
}

// TestFailedUpgradeDrainsSuccessor (case 3): when an upgrade fails after
// the successor began serving (it says ready too late), the successor is
// stopped with SIGTERM and drains: no request it accepted is cut.
func TestFailedUpgradeDrainsSuccessor(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	cfg.ReadyTimeout = 600 * time.Millisecond
	t.Setenv(envHelper, "serve-then-late-ready")
	t.Setenv(envSocket, cfg.Socket)
	t.Setenv(envAddr, "127.0.0.1:0")
	t.Setenv(envWait, "1s")
	old := newUpgrader(t, cfg)
	ln, err := old.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "old") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	upgraded := make(chan error, 1)
	go func() { upgraded <- old.Upgrade(context.Background()) }()

	// Requests on new connections from the moment the successor may
	// serve until after the predecessor gives up on it: those that land
	// on the successor are in flight when it is told to stop.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, MaxIdleConnsPerHost: -1}, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	bySuccessor := 0
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(200+30*i) * time.Millisecond) // spread the load over the window
			resp, err := client.Get("http://" + addr + "/")
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, err.Error())
			} else if string(body) == "successor" {
				bySuccessor++
			}
		}()
	}
	wg.Wait()
	if err := recvWithin(t, upgraded, "Upgrade to fail"); !errors.Is(err, ErrSuccessorFailed) {
		t.Fatalf("Upgrade = %v, want ErrSuccessorFailed", err)
	}
	waitFor(t, "the failed successor to drain and exit", func() bool { return len(children(t)) == 0 })
	if len(failed) > 0 {
		t.Fatalf("%d of 30 requests failed (%d answered by the successor): %v", len(failed), bySuccessor, failed)
	}
	if bySuccessor == 0 {
		t.Log("no request landed on the successor this time; the test proved less")
	}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("after the failed upgrade: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "old" {
		t.Fatalf("after the failed upgrade: %q", body)
	}
}

// TestLinkOneConnectionFails (case 4): an error about one connection
// affects that one: state over the limit is refused before anything is
// sent, a connection the successor does not acknowledge in time is
// ErrConnUnknown, not the caller's, and the link goes on carrying the
// next one.
func TestLinkOneConnectionFails(t *testing.T) {
	checkLeaks(t)
	server, successor := ctlPair(t)
	link := newSuccessorLink(server, 0, []string{"web"}, wire.CapConns, 300*time.Millisecond)
	link.open(nil)
	t.Cleanup(link.close)
	clients, sessions := sessionPairs(t, 3)

	big := make([]byte, wire.MaxMessageSize)
	err := link.send(context.Background(), "web", sessions[0].(syscall.Conn), big, false)
	if err == nil || errors.Is(err, ErrConnUnknown) || !link.accepts("web") {
		t.Fatalf("oversized state: send = %v, link usable %v; want a plain error and a usable link", err, link.accepts("web"))
	}

	// The successor takes the next connection but never acknowledges it.
	err = link.send(context.Background(), "web", sessions[1].(syscall.Conn), nil, false)
	if !errors.Is(err, ErrConnUnknown) || errors.Is(err, ErrNoSuccessor) {
		t.Fatalf("unacknowledged: send = %v, want ErrConnUnknown", err)
	}
	late, _ := receiveConn(t, successor)
	if !link.accepts("web") {
		t.Fatal("one unacknowledged connection failed the whole link")
	}

	// The late ack, then the next connection, acknowledged in time.
	errs := make(chan error, 1)
	go func() {
		errs <- link.send(context.Background(), "web", sessions[2].(syscall.Conn), []byte("third"), false)
	}()
	cm, moved := receiveConn(t, successor)
	for _, id := range []uint64{late.ID, cm.ID} {
		if err := successor.Send(wire.ConnAck{ID: id, OK: true}, nil, time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := recvWithin(t, errs, "the third send"); err != nil {
		t.Fatalf("third send: %v", err)
	}
	echoesThrough(t, clients[2], moved, "after a late ack")
	if !link.accepts("web") {
		t.Fatal("a late acknowledgement failed the link")
	}
}

// TestLockFileGuarded (case 5): the lock beside the control socket is
// not followed through a symbolic link, must be this user's, is waited
// for no longer than a step with an error that says so, and is removed
// on a clean stop.
func TestLockFileGuarded(t *testing.T) {
	checkLeaks(t)
	t.Run("symlink", func(t *testing.T) {
		cfg := testConfig(t)
		target := filepath.Join(filepath.Dir(cfg.Socket), "elsewhere")
		if err := os.Symlink(target, cfg.Socket+".lock"); err != nil {
			t.Fatal(err)
		}
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Fatalf("New = %v, want a refusal to follow the link", err)
		}
		if _, err := os.Lstat(target); !os.IsNotExist(err) {
			t.Fatalf("the link's target was created: %v", err)
		}
	})
	t.Run("other owner", func(t *testing.T) {
		asNobody(t)
		cfg := testConfig(t)
		if err := os.WriteFile(cfg.Socket+".lock", nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(cfg.Socket+".lock", 65534, 65534)
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("New = %v, want a refusal of the lock file", err)
		}
	})
	t.Run("held", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.StepTimeout = 300 * time.Millisecond
		f, err := os.OpenFile(cfg.Socket+".lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = New(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "another process has held it") {
			t.Fatalf("New = %v, want an error about the held lock", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("New waited %v for the lock", took)
		}
	})
	t.Run("removed on a clean stop", func(t *testing.T) {
		cfg := testConfig(t)
		u, _ := readyUpgrader(t, cfg)
		if _, err := os.Lstat(cfg.Socket + ".lock"); err != nil {
			t.Fatalf("lock file while serving: %v", err)
		}
		u.Close()
		for _, p := range []string{cfg.Socket, cfg.Socket + ".lock"} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Fatalf("%s after Close: %v", p, err)
			}
		}
	})
}

// TestAnotherInstanceIsNoSuccessor (case 6): a process of the same name
// on the same control socket that claims none of the running one's
// sockets is another instance: Ready refuses the takeover, says how to run
// both, and the first instance keeps serving. One that claims some goes
// on, and reports what it dropped.
func TestAnotherInstanceIsNoSuccessor(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	first, addr := servingUpgrader(t, cfg, "first")

	second := newUpgrader(t, cfg)
	ln, err := second.Listen("tcp", "127.0.0.2:0") // another address
	if err != nil {
		t.Fatal(err)
	}
	serveTag(ln, "second")
	err = second.Ready()
	if !errors.Is(err, ErrPeerRejected) || !strings.Contains(err.Error(), "another instance") ||
		!strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "Config.Name or Config.Socket") {
		t.Fatalf("Ready = %v, want a refusal that names the other instance and how to run both", err)
	}
	second.Close()
	waitFor(t, "the first instance to hear the refusal and serve on", func() bool {
		st := first.Status()
		return st.State == "serving" && st.LastReload != nil && strings.Contains(st.LastReload.Error, "another instance")
	})
	select {
	case <-first.Exit():
		t.Fatal("the first instance was told to exit")
	default:
	}
	if got := fetchTag(t, "tcp", addr); got != "first" {
		t.Fatalf("first instance's port answered %q", got)
	}

	// A successor that keeps one of two sockets takes over, and reports
	// the one it dropped.
	extra, err := first.ListenNamed("extra", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveTag(extra, "first")
	third := newUpgrader(t, cfg)
	kept, err := third.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveTag(kept, "third")
	if err := third.Ready(); err != nil {
		t.Fatalf("successor that keeps one socket: Ready = %v", err)
	}
	recvWithin(t, first.Exit(), "the first instance to hand over")
	if st := third.Status(); len(st.Dropped) != 1 || st.Dropped[0].Name != "extra" {
		t.Fatalf("Dropped = %+v, want the socket named extra", st.Dropped)
	}
}

// TestMistakesSayWhat (case 7): a successor that never calls Ready, a
// reload of a process that is not ready, and an unwritable pid file each
// give an error that says what happened.
func TestMistakesSayWhat(t *testing.T) {
	t.Run("successor never ready", func(t *testing.T) {
		checkLeaks(t)
		old, _, _ := upgradeSetup(t, "hang", 500*time.Millisecond)
		err := old.Upgrade(context.Background())
		if !errors.Is(err, ErrSuccessorFailed) || !strings.Contains(err.Error(), "did not call Ready within ReadyTimeout (500ms)") ||
			!strings.Contains(err.Error(), "successor pid ") {
			t.Fatalf("Upgrade = %v, want the successor's pid and the ReadyTimeout", err)
		}
		waitFor(t, "the successor to be stopped", func() bool { return len(children(t)) == 0 })
	})
	t.Run("reload before ready", func(t *testing.T) {
		checkLeaks(t)
		cfg := testConfig(t)
		u := newUpgrader(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		err := askReload(ctx, cfg.Socket, nil)
		if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "has not called Ready") {
			t.Fatalf("reload = %v, want ErrNotReady saying Ready was not called", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("the refusal took %v", took)
		}
		u.Close()
	})
	t.Run("unwritable pid file", func(t *testing.T) {
		cfg := testConfig(t)
		notDir := filepath.Join(filepath.Dir(cfg.Socket), "file")
		os.WriteFile(notDir, nil, 0o600)
		cfg.PIDFile = filepath.Join(notDir, "pid")
		if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "pid file") {
			t.Fatalf("New = %v, want an error about the pid file", err)
		}
	})
	t.Run("Ready twice at once", func(t *testing.T) {
		checkLeaks(t)
		u := newUpgrader(t, testConfig(t))
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- u.Ready() }()
		}
		a, b := recvWithin(t, errs, "Ready"), recvWithin(t, errs, "Ready")
		if (a == nil) == (b == nil) {
			t.Fatalf("two Ready calls returned %v and %v; want one success and one error", a, b)
		}
		if err := errors.Join(a, b); !strings.Contains(err.Error(), "Ready called twice") {
			t.Fatalf("second Ready: %v", err)
		}
	})
}

// lineReader yields a helper's output line by line.
type lineReader struct{ lines chan string }

func newLineReader(r io.Reader) *lineReader {
	lr := &lineReader{lines: make(chan string, 16)}
	go func() {
		defer close(lr.lines)
		var buf bytes.Buffer
		b := make([]byte, 256)
		for {
			n, err := r.Read(b)
			buf.Write(b[:n])
			for {
				line, rest, ok := bytes.Cut(buf.Bytes(), []byte("\n"))
				if !ok {
					break
				}
				lr.lines <- string(line)
				buf = *bytes.NewBuffer(append([]byte(nil), rest...))
			}
			if err != nil {
				return
			}
		}
	}()
	return lr
}

// next returns the next line, failing the test after 10 s.
func (lr *lineReader) next(t testing.TB, what string) string {
	t.Helper()
	return recvWithin(t, lr.lines, what)
}
