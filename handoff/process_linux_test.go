//go:build linux

package handoff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// Helper processes read their settings from these variables.
const (
	envSocket = "HANDOFF_TEST_SOCKET"
	envAddr   = "HANDOFF_TEST_ADDR"
	envPID    = "HANDOFF_TEST_PIDFILE"
	envQuiet  = "HANDOFF_TEST_QUIET"
)

func helperConfig() Config {
	return Config{
		Name:        "test",
		Socket:      os.Getenv(envSocket),
		PIDFile:     os.Getenv(envPID),
		StepTimeout: 2 * time.Second,
		Logger:      helperLogger(),
	}
}

// helperLogger logs to stderr, unless HANDOFF_TEST_QUIET is set (the
// benchmarks' successors, whose lines would land in the results).
func helperLogger() *slog.Logger {
	if os.Getenv(envQuiet) != "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func init() {
	// successor: take over, serve its pid on the test's address, and run
	// until told to stop.
	registerHelper("successor", func() error {
		speakAs(os.Getenv(envSpeaks)) // compat_linux_test.go
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		ln, err := u.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		serveTag(ln, strconv.Itoa(os.Getpid()))
		if err := u.Ready(); err != nil {
			return err
		}
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		return nil
	})
	// crash-before-ready: take the sockets, then die.
	registerHelper("crash-before-ready", func() error {
		if _, err := New(context.Background(), helperConfig()); err != nil {
			return err
		}
		os.Exit(3)
		return nil
	})
	// hang: take the sockets and never say ready.
	registerHelper("hang", func() error {
		if _, err := New(context.Background(), helperConfig()); err != nil {
			return err
		}
		select {}
	})
	// peer: connect to the control socket, say hello, print the answer.
	registerHelper("peer", func() error {
		c, err := net.Dial("unixpacket", os.Getenv(envSocket))
		if err != nil {
			return err
		}
		defer c.Close()
		cc := ctl.NewConn(c.(*net.UnixConn), wire.MaxMessageSize, wire.MaxFDs)
		if err := cc.Send(wire.Hello{MinVersion: 1, MaxVersion: 1, PID: uint32(os.Getpid()), Name: "test"}, nil, time.Now().Add(5*time.Second)); err != nil {
			return err
		}
		_, err = expect[wire.Welcome](cc, time.Now().Add(5*time.Second))
		var refused *RefusedError
		if !errors.As(err, &refused) {
			return fmt.Errorf("hello not refused: %v", err)
		}
		fmt.Println(int(refused.Code))
		_, err = askStatus(context.Background(), os.Getenv(envSocket))
		if !errors.As(err, &refused) {
			return fmt.Errorf("request not refused: %v", err)
		}
		fmt.Println(int(refused.Code))
		return nil
	})
}

// children lists the pids of this process's children, zombies included.
func children(t testing.TB) []int {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited
		}
		for _, s := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(s)
			pids = append(pids, pid)
		}
	}
	return pids
}

// successorPID returns the pid that the server on addr answers with (the
// successor role serves its pid), failing the test unless it is another
// process's.
func successorPID(t testing.TB, addr string) int {
	t.Helper()
	tag := fetchTag(t, "tcp", addr)
	pid, err := strconv.Atoi(tag)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		t.Fatalf("the server on %s answered %q, want a successor's pid", addr, tag)
	}
	return pid
}

// stopChild ends a successor this test's process started (through
// Upgrade) and reaps it.
func stopChild(t testing.TB, pid int) {
	t.Helper()
	if pid <= 0 { // kill(2) would signal a process group, or everyone
		t.Errorf("no successor to stop (pid %d)", pid)
		return
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Errorf("kill %d: %v", pid, err)
		return
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Errorf("wait %d: %v", pid, err)
	}
}

// upgradeSetup returns an Upgrader serving "old" on a fresh port, with
// Upgrade set to start the given helper role.
func upgradeSetup(t testing.TB, role string, readyTimeout time.Duration) (*Upgrader, Config, string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.ReadyTimeout = readyTimeout
	cfg.PIDFile = filepath.Join(filepath.Dir(cfg.Socket), "pid")
	t.Setenv(envHelper, role)
	t.Setenv(envSocket, cfg.Socket)
	t.Setenv(envPID, cfg.PIDFile)
	t.Setenv(envAddr, "127.0.0.1:0")
	u, addr := servingUpgrader(t, cfg, "old")
	return u, cfg, addr
}

// TestUpgradeStartsSuccessor: Upgrade starts a fresh copy of the program,
// which takes over; the pid file follows.
func TestUpgradeStartsSuccessor(t *testing.T) {
	checkLeaks(t)
	old, cfg, addr := upgradeSetup(t, "successor", 10*time.Second)
	if b, _ := os.ReadFile(cfg.PIDFile); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("pid file %q before the upgrade", b)
	}
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	recvWithin(t, old.Exit(), "Exit once the successor is ready")
	pid := successorPID(t, addr)
	defer stopChild(t, pid)
	if b, _ := os.ReadFile(cfg.PIDFile); strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("pid file %q, want the successor's %d", b, pid)
	}
}

// TestRequestReloadUpgrades: outside the wrapper, a reload request on
// the control socket (handoff reload) upgrades, and reports the new pid.
func TestRequestReloadUpgrades(t *testing.T) {
	checkLeaks(t)
	old, cfg, addr := upgradeSetup(t, "successor", 10*time.Second)
	var lines []string
	if err := askReload(context.Background(), cfg.Socket, func(l string) { lines = append(lines, l) }); err != nil {
		t.Fatalf("reload: %v", err)
	}
	recvWithin(t, old.Exit(), "Exit once the successor is ready")
	pid := successorPID(t, addr)
	defer stopChild(t, pid)
	if want := fmt.Sprintf("successor pid %d is serving", pid); len(lines) != 2 || lines[1] != want {
		t.Errorf("progress %q, want it to end with %q", lines, want)
	}
	if last := old.Status().LastReload; last == nil || last.Successor != pid || last.Error != "" {
		t.Errorf("last reload %+v", last)
	}
}

// TestRequestReloadAnsweredAtExit: the client of a reload request hears
// that it succeeded even when the old process, seeing Exit, drains at
// once and closes its Upgrader.
func TestRequestReloadAnsweredAtExit(t *testing.T) {
	checkLeaks(t)
	for range 5 {
		old, cfg, addr := upgradeSetup(t, "successor", 10*time.Second)
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			<-old.Exit()
			old.Close()
		}()
		err := askReload(context.Background(), cfg.Socket, nil)
		recvWithin(t, old.Exit(), "Exit once the successor is ready")
		recvWithin(t, closed, "the old Upgrader to close at Exit")
		stopChild(t, successorPID(t, addr))
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
	}
}

// TestUpgradeSuccessorFails: a successor that crashes, or hangs past the
// ready timeout, is stopped (SIGTERM, SIGCONT) and reaped; the old process keeps serving and
// can be upgraded again.
func TestUpgradeSuccessorFails(t *testing.T) {
	for _, tt := range []struct {
		role    string
		timeout time.Duration
	}{
		{"crash-before-ready", 10 * time.Second},
		{"hang", 500 * time.Millisecond},
	} {
		t.Run(tt.role, func(t *testing.T) {
			checkLeaks(t)
			old, _, addr := upgradeSetup(t, tt.role, tt.timeout)
			err := old.Upgrade(context.Background())
			if !errors.Is(err, ErrSuccessorFailed) {
				t.Fatalf("Upgrade = %v, want ErrSuccessorFailed", err)
			}
			waitFor(t, "the failed successor to be stopped and reaped", func() bool { return len(children(t)) == 0 })
			if got := fetchTag(t, "tcp", addr); got != "old" {
				t.Fatalf("after the failed upgrade: %q", got)
			}
			t.Setenv(envHelper, "successor")
			if err := old.Upgrade(context.Background()); err != nil {
				t.Fatalf("second Upgrade: %v", err)
			}
			stopChild(t, successorPID(t, addr))
		})
	}
}

// TestUpgradeInProgress: while a successor is starting, another Upgrade
// and a takeover get ErrInProgress; the one in flight is unaffected.
func TestUpgradeInProgress(t *testing.T) {
	checkLeaks(t)
	old, cfg, _ := upgradeSetup(t, "hang", 2*time.Second)
	first := make(chan error, 1)
	go func() { first <- old.Upgrade(context.Background()) }()
	waitFor(t, "the upgrade to start", func() bool {
		old.mu.Lock()
		defer old.mu.Unlock()
		return old.state == stateUpgrading
	})
	if err := old.Upgrade(context.Background()); !errors.Is(err, ErrInProgress) {
		t.Fatalf("second Upgrade = %v, want ErrInProgress", err)
	}
	if _, err := New(context.Background(), cfg); !errors.Is(err, ErrInProgress) {
		t.Fatalf("takeover during an upgrade = %v, want ErrInProgress", err)
	}
	if err := recvWithin(t, first, "the hanging upgrade to fail"); !errors.Is(err, ErrSuccessorFailed) {
		t.Fatalf("hanging upgrade = %v", err)
	}
}

// TestUpgradeContextCanceledAtExit: a program that cancels Upgrade's
// context as soon as Exit fires (its run group winding down) does not cut
// the link to the successor that has just taken over.
func TestUpgradeContextCanceledAtExit(t *testing.T) {
	checkLeaks(t)
	old, _, addr := upgradeSetup(t, "successor", 10*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-old.Exit():
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := old.Upgrade(ctx); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	defer stopChild(t, successorPID(t, addr))
	recvWithin(t, ctx.Done(), "the context to be canceled at Exit")
	if link := old.successor(); link == nil || link.dead.Load() {
		t.Fatal("the link to the successor broke when the context was canceled after the commit")
	}
}

// TestUpgradeCanceled: canceling Upgrade's context stops the successor
// and keeps serving.
func TestUpgradeCanceled(t *testing.T) {
	checkLeaks(t)
	old, _, addr := upgradeSetup(t, "hang", time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := old.Upgrade(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Upgrade = %v, want context.DeadlineExceeded", err)
	}
	waitFor(t, "the successor to be stopped and reaped", func() bool { return len(children(t)) == 0 })
	if got := fetchTag(t, "tcp", addr); got != "old" {
		t.Fatalf("after the canceled upgrade: %q", got)
	}
}

// TestPeerOtherUser: a process of another user is refused before a
// single descriptor is sent, even when it can reach the control socket.
func TestPeerOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a peer as another user")
	}
	checkLeaks(t)
	cfg := testConfig(t)
	u := newUpgrader(t, cfg)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	// Let the other user reach the socket and a copy of this binary, so
	// that only the credential check stands in its way.
	dir := filepath.Dir(cfg.Socket)
	os.Chmod(dir, 0o755)
	os.Chmod(cfg.Socket, 0o666)
	exe := filepath.Join(dir, "peer.test")
	copyFile(t, os.Args[0], exe)

	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envHelper+"=peer", envSocket+"="+cfg.Socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("peer: %v\n%s", err, stderr.Bytes())
	}
	want := fmt.Sprintf("%d %d", RefusedPermission, RefusedPermission)
	if got := strings.Join(strings.Fields(string(out)), " "); got != want {
		t.Fatalf("peer of another user got codes %q, want %q: %d for its hello and for its request", out, want, RefusedPermission)
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
