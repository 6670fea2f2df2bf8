//go:build linux

package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/procfs"
)

// Connections at the open-file limit, with real limits: a helper process
// lowers its own RLIMIT_NOFILE to a little more than it has open, so
// that any descriptor it needed per connection would fail with EMFILE.

// envConns tells the fd-limit helpers how many connections to expect.
const envConns = "HANDOFF_TEST_CONNS"

// limitFDs lowers this process's open-file limit to what it has open
// now and room more.
func limitFDs(room int) error {
	open, err := procfs.OpenFDs(os.Getpid())
	if err != nil {
		return err
	}
	lim := syscall.Rlimit{Cur: uint64(open + room), Max: uint64(open + room)}
	var cur syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err != nil {
		return err
	}
	lim.Max = cur.Max // keep the hard limit: a soft one is as real for EMFILE
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

func init() {
	// send-at-fd-limit: serve, accept HANDOFF_TEST_CONNS connections,
	// lower the open-file limit to room for 16 more descriptors, and once
	// a successor has taken over, hand every connection to it with
	// SendConn, its index as state. It prints its address, "accepted",
	// then "sent OK FAILED FIRST-ERROR".
	registerHelper("send-at-fd-limit", func() error {
		n, err := strconv.Atoi(os.Getenv(envConns))
		if err != nil {
			return err
		}
		cfg := helperConfig()
		cfg.CanaryWindow = -1 // Exit at once
		u, err := New(context.Background(), cfg)
		if err != nil {
			return err
		}
		defer u.Close()
		ln, err := u.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		if err := u.Ready(); err != nil {
			return err
		}
		fmt.Println(ln.Addr())
		sessions := make([]net.Conn, n)
		for i := range sessions {
			if sessions[i], err = ln.Accept(); err != nil {
				return err
			}
		}
		if err := limitFDs(16); err != nil {
			return err
		}
		fmt.Println("accepted")
		select {
		case <-u.Exit():
		case <-time.After(waitBound):
			return errors.New("no successor took over")
		}
		errs := make(chan error, n)
		for i, s := range sessions {
			go func() { errs <- u.SendConn(context.Background(), s, []byte(strconv.Itoa(i))) }()
		}
		ok, failed, first := 0, 0, "-"
		for range n {
			if err := <-errs; err != nil {
				if failed++; failed == 1 {
					first = strings.ReplaceAll(err.Error(), " ", "_")
				}
			} else {
				ok++
			}
		}
		fmt.Println("sent", ok, failed, first)
		return nil
	})
	// adopt-at-fd-limit: take over, lower the open-file limit to room for
	// HANDOFF_TEST_CONNS/4 descriptors more, say ready, and echo on every
	// connection the predecessor sends until told to stop.
	registerHelper("adopt-at-fd-limit", func() error {
		n, err := strconv.Atoi(os.Getenv(envConns))
		if err != nil {
			return err
		}
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		if _, err := u.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
		if err := limitFDs(n / 4); err != nil {
			return err
		}
		if err := u.Ready(); err != nil {
			return err
		}
		go func() {
			for {
				c, _, err := u.AcceptConn(context.Background())
				if err != nil {
					return
				}
				go io.Copy(c, c)
			}
		}()
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		return nil
	})
}

// startLimited starts role as a helper process on cfg's control socket
// and returns its stdout, line by line; it is killed at cleanup.
func startLimited(t *testing.T, role string, cfg Config, n int) <-chan string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envHelper+"="+role, envSocket+"="+cfg.Socket, envConns+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		recvWithin(t, exited, "the helper to exit")
	})
	return lines
}

// TestSendConnAtFDLimit: an old process with room for only 16 more
// descriptors than it has open hands 500 connections to its successor:
// every one arrives (no descriptor is duplicated per connection), and
// each is the client's connection, with its state.
func TestSendConnAtFDLimit(t *testing.T) {
	const n = 500
	cfg := testConfig(t)
	lines := startLimited(t, "send-at-fd-limit", cfg, n)
	addr := recvWithin(t, lines, "the helper's address")
	clients := make([]net.Conn, n)
	for i := range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients[i] = c
	}
	if got := recvWithin(t, lines, "the helper to accept"); got != "accepted" {
		t.Fatalf("helper said %q", got)
	}
	next, _ := readyUpgrader(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	for range n {
		c, state, err := next.AcceptConn(ctx)
		if err != nil {
			t.Fatalf("AcceptConn: %v (the helper: %q)", err, drainLines(lines))
		}
		i, err := strconv.Atoi(string(state))
		if err != nil || i >= n {
			t.Fatalf("state %q", state)
		}
		echoesThrough(t, clients[i], c, "x")
		c.Close()
	}
	report := recvWithin(t, lines, "the helper's report")
	var ok, failed int
	var first string
	if _, err := fmt.Sscanf(report, "sent %d %d %s", &ok, &failed, &first); err != nil || ok != n || failed != 0 {
		t.Fatalf("helper: %q; want all %d sent", report, n)
	}
}

// drainLines returns what the helper printed that nobody read yet,
// without waiting.
func drainLines(lines <-chan string) []string {
	var got []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return got
			}
			got = append(got, l)
		default:
			return got
		}
	}
}

// TestSuccessorOutOfDescriptors: a successor with room for a quarter of
// the 400 connections its predecessor sends takes what it can; the
// descriptors the kernel could not give it (MSG_CTRUNC) and those it
// could not adopt are acknowledged as not taken. Every send learns the
// truth: taken (and the client's connection echoes through the
// successor), or ErrNoSuccessor with the connection still the old
// process's to serve, never ErrConnUnknown; and the link survives it.
func TestSuccessorOutOfDescriptors(t *testing.T) {
	const n = 400
	cfg := testConfig(t)
	old, _ := readyUpgrader(t, cfg)
	clients, sessions := sessionPairs(t, n)
	startLimited(t, "adopt-at-fd-limit", cfg, n)
	recvWithin(t, old.Exit(), "the successor to take over")

	errs := make([]chan error, n)
	for i, s := range sessions {
		errs[i] = make(chan error, 1)
		go func() { errs[i] <- old.SendConn(context.Background(), s, nil) }()
	}
	taken, kept := 0, 0
	for i := range n {
		err := recvWithin(t, errs[i], "SendConn")
		switch {
		case err == nil:
			taken++
			clients[i].SetDeadline(time.Now().Add(waitBound))
			if _, err := clients[i].Write([]byte("y")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(clients[i], b); err != nil {
				t.Fatalf("connection %d, taken: no echo from the successor: %v", i, err)
			}
		case errors.Is(err, ErrConnUnknown):
			t.Fatalf("connection %d: %v; want taken or refused", i, err)
		case errors.Is(err, ErrNoSuccessor):
			kept++
			echoesThrough(t, clients[i], sessions[i], "z") // still ours
		default:
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	t.Logf("successor took %d, the old process kept %d", taken, kept)
	if taken == 0 || kept == 0 {
		t.Fatalf("taken %d, kept %d: want both (the successor's limit is %d descriptors over what it had open)", taken, kept, n/4)
	}
	if !old.takesConns("") {
		t.Fatal("the link broke")
	}
}
