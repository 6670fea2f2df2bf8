//go:build linux

package handoff

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"

	"golang.org/x/sys/unix"
)

// dialRaw connects to the control socket as a bare client.
func dialRaw(t testing.TB, path string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// readRefusal reads what the server says to a bad client: a refusal, then
// the end of the connection.
func readRefusal(t testing.TB, c *net.UnixConn) RefusalCode {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	m, fds, err := ctl.ReadMsg(c, wire.MaxMessageSize, wire.MaxFDs)
	ctl.CloseFDs(fds)
	if err != nil {
		t.Fatalf("expected a refusal, got %v", err)
	}
	r, ok := m.(wire.Refusal)
	if !ok {
		t.Fatalf("expected a refusal, got %s", m.Type())
	}
	if _, _, err := ctl.ReadMsg(c, ctl.SmallMessage, 0); err == nil {
		t.Fatal("connection still open after the refusal")
	}
	return RefusalCode(r.Code)
}

func rawHello(t testing.TB, h wire.Hello) []byte {
	b, err := wire.Encode(h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostilePeers: whatever a client of the control socket sends, the
// serving process refuses it with a reason, keeps serving, leaks nothing,
// and can still be taken over afterwards.
func TestHostilePeers(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	cfg.StepTimeout = 300 * time.Millisecond
	_, addr := servingUpgrader(t, cfg, "old")
	good := wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version, Caps: wire.SupportedCaps, PID: 1, Name: cfg.Name}
	garbage := make([]byte, 1000)
	rand.Read(garbage)
	valid := rawHello(t, good)
	huge := append([]byte(nil), valid...)
	binary.BigEndian.PutUint32(huge[8:], 1<<30)
	spare := localListener(t)

	tests := []struct {
		name string
		send func(c *net.UnixConn) error
		want RefusalCode
	}{
		{"random bytes", func(c *net.UnixConn) error { _, err := c.Write(garbage); return err }, RefusedProtocol},
		{"header with a huge length", func(c *net.UnixConn) error { _, err := c.Write(huge); return err }, RefusedProtocol},
		{"message cut in the middle", func(c *net.UnixConn) error { _, err := c.Write(valid[:len(valid)-2]); return err }, RefusedProtocol},
		{"oversized packet", func(c *net.UnixConn) error { _, err := c.Write(make([]byte, 64<<10)); return err }, RefusedProtocol},
		{"wrong first message", func(c *net.UnixConn) error { return ctl.WriteMsg(c, wire.Ready{PID: 1}, nil) }, RefusedProtocol},
		{"wrong protocol version", func(c *net.UnixConn) error {
			h := good
			h.MinVersion, h.MaxVersion = 2, 9
			return ctl.WriteMsg(c, h, nil)
		}, RefusedVersion},
		{"wrong service name", func(c *net.UnixConn) error {
			h := good
			h.Name = "other"
			return ctl.WriteMsg(c, h, nil)
		}, RefusedName},
		{"descriptors nobody asked for", func(c *net.UnixConn) error {
			fds := []int{dupOrFatal(t, spare), dupOrFatal(t, spare)}
			defer ctl.CloseFDs(fds)
			return ctl.WriteMsg(c, good, fds)
		}, RefusedProtocol},
		{"silence", func(c *net.UnixConn) error { return nil }, RefusedTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := openFDs(t)
			c := dialRaw(t, cfg.Socket)
			defer c.Close()
			if err := tt.send(c); err != nil {
				t.Fatal(err)
			}
			if got := readRefusal(t, c); got != tt.want {
				t.Fatalf("refused with %q, want %q", got, tt.want)
			}
			c.Close()
			waitFor(t, "the server to release the connection", func() bool { return openFDs(t) <= before })
			if got := fetchTag(t, "tcp", addr); got != "old" {
				t.Fatalf("serving process answered %q", got)
			}
		})
	}

	t.Run("a thousand connections at once", func(t *testing.T) {
		before := openFDs(t)
		conns := make([]*net.UnixConn, 1000)
		for i := range conns {
			conns[i] = dialRaw(t, cfg.Socket)
		}
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				ctl.ReadMsg(c, ctl.SmallMessage, 0) // refused for silence
			}()
		}
		wg.Wait()
		waitFor(t, "the server to release 1000 connections", func() bool { return openFDs(t) <= before })
		if got := fetchTag(t, "tcp", addr); got != "old" {
			t.Fatalf("serving process answered %q", got)
		}
	})

	servingUpgrader(t, cfg, "next")
	if got := fetchTag(t, "tcp", addr); got != "next" {
		t.Fatalf("takeover after the hostile peers: %q", got)
	}
}

// TestHostileSuccessorSendsFDs: descriptors sent along with an ack are
// closed by the serving process, which refuses the successor and keeps
// serving.
func TestHostileSuccessorSendsFDs(t *testing.T) {
	checkLeaks(t)
	cfg := testConfig(t)
	old, _ := readyUpgrader(t, cfg)
	spare := localListener(t)
	before := openFDs(t)
	c := dialRaw(t, cfg.Socket)
	defer c.Close()
	if err := ctl.WriteMsg(c, wire.Hello{MinVersion: 1, MaxVersion: 1, PID: 1, Name: cfg.Name}, nil); err != nil {
		t.Fatal(err)
	}
	if m, _, err := ctl.ReadMsg(c, wire.MaxMessageSize, wire.MaxFDs); err != nil || m.Type() != wire.TypeWelcome {
		t.Fatalf("got %v, %v; want welcome", m, err)
	}
	m, fds, err := ctl.ReadMsg(c, wire.MaxMessageSize, wire.MaxFDs)
	if err != nil || m.Type() != wire.TypeFDs {
		t.Fatalf("got %v, %v; want fds", m, err)
	}
	ctl.CloseFDs(fds)
	extra := []int{dupOrFatal(t, spare)}
	err = ctl.WriteMsg(c, wire.Ack{Seq: 0}, extra)
	ctl.CloseFDs(extra)
	if err != nil {
		t.Fatal(err)
	}
	if code := readRefusal(t, c); code != RefusedProtocol {
		t.Fatalf("refused with %q, want protocol error", code)
	}
	c.Close()
	waitFor(t, "the server to close what it was sent", func() bool { return openFDs(t) <= before })
	waitFor(t, "the upgrade slot to free up", func() bool {
		old.mu.Lock()
		defer old.mu.Unlock()
		return old.state == stateServing
	})
}

// TestControlSocketMode: the control socket is 0600 from the moment
// it exists.
func TestControlSocketMode(t *testing.T) {
	cfg := testConfig(t)
	old := unix.Umask(0)
	defer unix.Umask(old)
	ln, err := ctl.ListenControlSocket(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var st unix.Stat_t
	if err := unix.Stat(cfg.Socket, &st); err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode & 0o777; perm != 0o600 {
		t.Fatalf("mode %o with umask 0, want 600", perm)
	}
}
