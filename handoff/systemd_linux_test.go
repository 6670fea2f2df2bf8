//go:build linux

package handoff

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/sdnotify"
	"golang.org/x/sys/unix"
)

// A notifyRecorder stands in for systemd's NOTIFY_SOCKET: a real unix
// datagram socket that records every message with its sender's pid (as
// the kernel attests it) and the descriptors that came with it.
type notifyRecorder struct {
	path string
	conn *net.UnixConn
	msgs chan notifyMsg
}

type notifyMsg struct {
	pid    int
	fields map[string]string // assignments, by name
	fds    []int             // received, close-on-exec; the test closes them
}

// listenNotify returns a recorder and points NOTIFY_SOCKET at it.
func listenNotify(t *testing.T, path string) *notifyRecorder {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	r := &notifyRecorder{path: path, conn: conn, msgs: make(chan notifyMsg, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(r.msgs)
		buf, oob := make([]byte, 4096), make([]byte, 4096)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := notifyMsg{fields: map[string]string{}}
			cmsgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for i := range cmsgs {
				if cred, err := unix.ParseUnixCredentials(&cmsgs[i]); err == nil {
					m.pid = int(cred.Pid)
				}
				if fds, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
					m.fds = append(m.fds, fds...)
				}
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					m.fields[k] = v
				}
			}
			r.msgs <- m
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		recvWithin(t, done, "the notify recorder to stop reading")
		for m := range r.msgs {
			ctl.CloseFDs(m.fds)
		}
	})
	t.Setenv("NOTIFY_SOCKET", path)
	return r
}

// next returns the next message, failing the test if none comes.
func (r *notifyRecorder) next(t *testing.T) notifyMsg {
	t.Helper()
	select {
	case m := <-r.msgs:
		t.Cleanup(func() { ctl.CloseFDs(m.fds) })
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no sd_notify message")
	}
	return notifyMsg{}
}

// expect returns the next message and checks that it says what want
// says ("" matches any value) and comes from pid.
func (r *notifyRecorder) expect(t *testing.T, pid int, want map[string]string) notifyMsg {
	t.Helper()
	m := r.next(t)
	if m.pid != pid {
		t.Errorf("message %v from pid %d, want pid %d", m.fields, m.pid, pid)
	}
	for k, v := range want {
		got, ok := m.fields[k]
		if !ok || (v != "" && got != v) {
			t.Fatalf("message %v: want %s=%s", m.fields, k, v)
		}
	}
	return m
}

// sameSocket fails the test unless fd and the socket behind conn are one.
func sameSocket(t *testing.T, fd int, conn syscall.Conn) {
	t.Helper()
	ours, err := ctl.DupFD(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.CloseFDs([]int{ours})
	a, err1 := ctl.Identify(fd)
	b, err2 := ctl.Identify(ours)
	if err1 != nil || err2 != nil || a != b {
		t.Errorf("stored descriptor is socket %v, want %v (%v, %v)", a, b, err1, err2)
	}
}

// TestNotifyWithFDs: the fd-carrying sender reaches a socket named by
// path or by abstract name, and the descriptor arrives as the same
// socket; without NOTIFY_SOCKET it does nothing.
func TestNotifyWithFDs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := ctl.DupFD(ln.(syscall.Conn))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.CloseFDs([]int{fd})
	for _, name := range []string{"path", "abstract"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(socketDir(t), "notify")
			if name == "abstract" {
				path = "@" + path
			}
			r := listenNotify(t, path)
			if err := sdnotify.WithFDs("FDSTORE=1\nFDNAME=web", []int{fd}); err != nil {
				t.Fatal(err)
			}
			m := r.expect(t, os.Getpid(), map[string]string{"FDSTORE": "1", "FDNAME": "web"})
			if len(m.fds) != 1 {
				t.Fatalf("%d descriptors arrived, want 1", len(m.fds))
			}
			sameSocket(t, m.fds[0], ln.(syscall.Conn))
		})
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdnotify.WithFDs("FDSTORE=1", []int{fd}); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := sdnotify.WithFDs("READY=1", nil); err == nil {
		t.Error("a vsock NOTIFY_SOCKET was not refused")
	}
}

// TestFDStoreNames: every key maps to a name systemd accepts (ASCII, no
// control characters, no ':' which separates LISTEN_FDNAMES, at most 255
// bytes) and back; names that are not ours are not taken for ours.
func TestFDStoreNames(t *testing.T) {
	keys := []string{"web", "tcp|127.0.0.1:8080", "tcp6|[::1]:0", "unix|/run/app/sock et", "naïve:name\n", "%41"}
	for _, key := range keys {
		name, ok := sdnotify.StoreName(key)
		if !ok {
			t.Errorf("%q: no name", key)
			continue
		}
		for _, c := range name {
			if c == ':' || c < ' ' || c > '~' {
				t.Errorf("%q: name %q has %q", key, name, c)
			}
		}
		if got, ok := sdnotify.StoredKey(name); !ok || got != key {
			t.Errorf("%q: name %q gives back %q, %v", key, name, got, ok)
		}
	}
	if _, ok := sdnotify.StoreName(strings.Repeat("x", sdnotify.MaxFDName)); ok {
		t.Error("a key too long for FDNAME= got a name")
	}
	for _, name := range []string{"web", "stored", "LISTEN_FD_3", "handoff.", "handoff.%zz"} {
		if key, ok := sdnotify.StoredKey(name); ok {
			t.Errorf("%q taken for a stored socket with key %q", name, key)
		}
	}
}

// TestSystemdNotifyLifecycle: what a process systemd started says, in
// order: its sockets for the fd store (when $FDSTORE allows), READY=1
// with a status line naming generation, pid and sockets, the program's
// own status, and STOPPING=1.
func TestSystemdNotifyLifecycle(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	r := listenNotify(t, filepath.Join(filepath.Dir(cfg.Socket), "notify"))
	t.Setenv("FDSTORE", "4")
	u := newUpgrader(t, cfg)
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := u.ListenPacketNamed("dns", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	m := r.expect(t, pid, map[string]string{"FDSTORE": "1", "FDNAME": "handoff.tcp%7C127.0.0.1%3A0"})
	sameSocket(t, m.fds[0], ln.(syscall.Conn))
	m = r.expect(t, pid, map[string]string{"FDSTORE": "1", "FDNAME": "handoff.dns"})
	sameSocket(t, m.fds[0], pc.(syscall.Conn))
	want := fmt.Sprintf("serving: generation 1, pid %d; tcp %s, dns=udp %s", pid, ln.Addr(), pc.LocalAddr())
	r.expect(t, pid, map[string]string{"READY": "1", "STATUS": want})

	u.setStatus("child 3 (pid 42)")
	want = fmt.Sprintf("serving: generation 1, pid %d; child 3 (pid 42); tcp %s, dns=udp %s", pid, ln.Addr(), pc.LocalAddr())
	r.expect(t, pid, map[string]string{"STATUS": want})

	u.Stop()
	want = fmt.Sprintf("stopping: generation 1, pid %d; child 3 (pid 42); draining", pid)
	r.expect(t, pid, map[string]string{"STOPPING": "1", "STATUS": want})
}

// TestSystemdNotifyUpgrade: an upgrade says RELOADING=1 (with
// MONOTONIC_USEC=) before it starts the successor, then, from the old
// main process, MAINPID= of the successor with READY=1; only after that
// does the successor speak (its fd store and status), so
// NotifyAccess=main suffices. A failed upgrade ends the reload with
// READY=1 from the process that still serves.
func TestSystemdNotifyUpgrade(t *testing.T) {
	checkLeaks(t)
	t.Setenv("FDSTORE", "4")
	r := listenNotify(t, filepath.Join(socketDir(t), "notify"))
	old, _, addr := upgradeSetup(t, "successor", 10*time.Second)
	pid := os.Getpid()
	r.expect(t, pid, map[string]string{"FDSTORE": "1"})
	r.expect(t, pid, map[string]string{"READY": "1"})

	t.Setenv(envHelper, "crash-before-ready")
	if err := old.Upgrade(context.Background()); err == nil {
		t.Fatal("upgrade to a crashing successor succeeded")
	}
	m := r.expect(t, pid, map[string]string{"RELOADING": "1", "MONOTONIC_USEC": "", "STATUS": ""})
	if !strings.HasPrefix(m.fields["STATUS"], "upgrading: generation 1") {
		t.Errorf("status %q", m.fields["STATUS"])
	}
	r.expect(t, pid, map[string]string{"STATUS": ""}) // handing over to the successor
	m = r.expect(t, pid, map[string]string{"READY": "1", "STATUS": ""})
	if s := m.fields["STATUS"]; !strings.HasPrefix(s, "serving: generation 1") || !strings.Contains(s, "the last reload failed") {
		t.Errorf("status after the failed upgrade %q", s)
	}

	t.Setenv(envHelper, "successor")
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatal(err)
	}
	succ := old.successor().pid
	defer stopChild(t, succ)
	r.expect(t, pid, map[string]string{"RELOADING": "1", "MONOTONIC_USEC": ""})
	m = r.expect(t, pid, map[string]string{"STATUS": ""})
	if !strings.Contains(m.fields["STATUS"], fmt.Sprintf("handing over to pid %d", succ)) {
		t.Errorf("status %q", m.fields["STATUS"])
	}
	m = r.expect(t, pid, map[string]string{"MAINPID": fmt.Sprint(succ), "READY": "1", "STATUS": ""})
	if want := fmt.Sprintf("serving: generation 2, pid %d; pid %d drains", succ, pid); m.fields["STATUS"] != want {
		t.Errorf("status at the handover %q, want %q", m.fields["STATUS"], want)
	}
	r.expect(t, succ, map[string]string{"FDSTORE": "1", "FDNAME": "handoff.tcp%7C127.0.0.1%3A0"})
	m = r.expect(t, succ, map[string]string{"STATUS": fmt.Sprintf("serving: generation 2, pid %d; tcp %s", succ, addr)})
	if _, ok := m.fields["READY"]; ok {
		t.Error("the successor said READY=1 itself")
	}
}

func init() {
	// systemd: started with LISTEN_FDS from socket units; report what
	// Listen found.
	registerHelper("systemd", func() error {
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		web, err := u.ListenNamed("web", "tcp", "127.0.0.1:1")
		if err != nil {
			return err
		}
		dns, err := u.ListenPacket("udp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]string{
			"web":         web.Addr().String(),
			"dns":         dns.LocalAddr().String(),
			"LISTEN_FDS":  os.Getenv("LISTEN_FDS"),
			"LISTEN_PID":  os.Getenv("LISTEN_PID"),
			"LISTEN_NAME": os.Getenv("LISTEN_FDNAMES"),
		})
	})
	// fdstore-restart: started with LISTEN_FDS as systemd restarts a
	// service with its fd store; report what Listen found.
	registerHelper("fdstore-restart", func() error {
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		random, err := u.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		web, err := u.ListenNamed("web", "tcp", "127.0.0.1:1")
		if err != nil {
			return err
		}
		if err := u.Ready(); err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]string{"random": random.Addr().String(), "web": web.Addr().String()})
	})
}

// rawSocket makes a bound socket with x/sys/unix and returns it as a file
// for ExtraFiles, so that the test's own copy never changes mode.
func rawSocket(t testing.TB, typ int, listen bool) (*os.File, string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if listen {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	e, err := ctl.DescribeSocket(fd)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	t.Cleanup(func() { f.Close() })
	return f, e.Address
}

// runActivated runs helper role as systemd starts a service: files are
// its fds 3... (LISTEN_FDS, named by names), with LISTEN_PID its own pid.
// It returns what the helper printed as JSON, its log, and its pid.
func runActivated(t *testing.T, role string, env []string, files []*os.File, names ...string) (map[string]string, string, int) {
	t.Helper()
	// The shell sets LISTEN_PID to its pid, then execs the helper in
	// its place.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, os.Args[0])
	cmd.Env = append(os.Environ(), envHelper+"="+role, fmt.Sprintf("LISTEN_FDS=%d", len(files)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"))
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.String())
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("helper said %q: %v", out, err)
	}
	return got, stderr.String(), cmd.Process.Pid
}

// TestSystemdSocketActivation: sockets passed the way systemd passes them
// are found by name or address, a descriptor that is not a socket is
// reported and dropped, and LISTEN_* does not leak.
func TestSystemdSocketActivation(t *testing.T) {
	tcp, tcpAddr := rawSocket(t, unix.SOCK_STREAM, true)
	udp, udpAddr := rawSocket(t, unix.SOCK_DGRAM, false)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	cfg := testConfig(t)
	got, stderr, _ := runActivated(t, "systemd", []string{envSocket + "=" + cfg.Socket, envAddr + "=" + udpAddr},
		[]*os.File{tcp, udp, r}, "web", "dns", "junk")
	if got["web"] != tcpAddr || got["dns"] != udpAddr {
		t.Errorf("helper listened on web=%s dns=%s, want the passed %s and %s", got["web"], got["dns"], tcpAddr, udpAddr)
	}
	if got["LISTEN_FDS"] != "" || got["LISTEN_PID"] != "" || got["LISTEN_NAME"] != "" {
		t.Errorf("LISTEN_* still set: %v", got)
	}
	if !strings.Contains(stderr, "ignoring a descriptor passed by systemd") || !strings.Contains(stderr, "junk") {
		t.Errorf("the pipe passed as a socket was not reported:\n%s", stderr)
	}
}

// TestSystemdFDStoreRestart: a process restarted with sockets from the fd
// store finds each by its key (even a random port, which no address
// matches), reports where they came from, drops the store's copy of a
// socket that a socket unit passes too and a stored socket nobody
// claims, and tells the store to forget both.
func TestSystemdFDStoreRestart(t *testing.T) {
	random, randomAddr := rawSocket(t, unix.SOCK_STREAM, true)
	web, webAddr := rawSocket(t, unix.SOCK_STREAM, true)
	gone, _ := rawSocket(t, unix.SOCK_STREAM, true)
	randomName, _ := sdnotify.StoreName("tcp|127.0.0.1:0")
	webName, _ := sdnotify.StoreName("web")
	goneName, _ := sdnotify.StoreName("tcp|127.0.0.1:9")

	cfg := testConfig(t)
	r := listenNotify(t, filepath.Join(filepath.Dir(cfg.Socket), "notify"))
	// Socket units' sockets come first, then the store's.
	got, stderr, pid := runActivated(t, "fdstore-restart", []string{envSocket + "=" + cfg.Socket, "FDSTORE=8"},
		[]*os.File{web, random, web, gone}, "web", randomName, webName, goneName)
	if got["random"] != randomAddr || got["web"] != webAddr {
		t.Errorf("helper listened on %v, want the passed random=%s web=%s", got, randomAddr, webAddr)
	}
	r.expect(t, pid, map[string]string{"FDSTOREREMOVE": "1", "FDNAME": webName})
	r.expect(t, pid, map[string]string{"FDSTOREREMOVE": "1", "FDNAME": goneName})
	r.expect(t, pid, map[string]string{"FDSTORE": "1", "FDNAME": randomName})
	want := fmt.Sprintf("serving: generation 1, pid %d; tcp %s (fd store), web=tcp %s (socket unit)", pid, randomAddr, webAddr)
	r.expect(t, pid, map[string]string{"READY": "1", "STATUS": want})
	if !strings.Contains(stderr, "inherited socket from systemd fd store") {
		t.Errorf("the helper did not report the fd store:\n%s", stderr)
	}
}

// TestSuccessorParent: under a service manager whose child this process
// is, a successor is started as a sibling (the manager's child), and
// told that its parent is the manager; elsewhere it is a child.
func TestSuccessorParent(t *testing.T) {
	pid, ppid := os.Getpid(), os.Getppid()
	tests := []struct {
		name, notify, managerPID string
		sibling                  bool
	}{
		{"no service manager", "", "", false},
		{"a manager that is not our parent", "/run/systemd/notify", "", false},
		{"a user manager that is our parent", "/run/user/0/systemd/notify", fmt.Sprint(ppid), true},
		{"our parent, but no notify socket", "", fmt.Sprint(ppid), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", tt.notify)
			t.Setenv("MANAGERPID", tt.managerPID)
			attr, parent := sdnotify.SuccessorParent(pid)
			if !tt.sibling {
				if attr != nil || parent != pid {
					t.Errorf("got %+v, parent %d; want a child of %d", attr, parent, pid)
				}
				return
			}
			if attr == nil || attr.Cloneflags != syscall.CLONE_PARENT || parent != ppid {
				t.Errorf("got %+v, parent %d; want a sibling, child of %d", attr, parent, ppid)
			}
		})
	}
}
