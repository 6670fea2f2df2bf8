//go:build linux

package handoff

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"

	"golang.org/x/sys/unix"
)

// ctlPair returns both ends of a connected control connection: the
// serving side's (small buffers) and the successor's.
func ctlPair(t testing.TB) (server, successor *ctl.Conn) {
	t.Helper()
	a, b := rawPair(t)
	return ctl.NewConn(a, ctl.SmallMessage, 0), ctl.NewConn(b, wire.MaxMessageSize, wire.MaxFDs)
}

// rawPair is ctlPair's pair of sockets, for a test that plays one side
// by hand. Both close at cleanup.
func rawPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	a, f, err := ctl.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err = ctl.UnixConnFromFD(dupOrFatal(t, f))
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func dupOrFatal(t testing.TB, f syscall.Conn) int {
	t.Helper()
	fd, err := ctl.DupFD(f)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func localListener(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// TestSocketTransfer passes n sockets across a real socketpair in
// batches: every one arrives, close-on-exec, as the same kernel socket,
// and nothing is left open afterwards.
func TestSocketTransfer(t *testing.T) {
	for _, n := range []int{1, 253, 254, 1000, 10000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			checkLeaks(t)
			ln := localListener(t)
			server, successor := ctlPair(t)
			items := make([]handoverItem, n)
			for i := range items {
				items[i] = handoverItem{Entry: wire.Entry{Kind: wire.KindListener, Network: "tcp", Address: "127.0.0.1:0", Name: fmt.Sprint("s", i)}, conn: ln}
			}
			sent := make(chan error, 1)
			go func() { sent <- sendSockets(server, items, 5*time.Second) }()

			var got []int
			err := receiveSockets(successor, uint32(n), 5*time.Second, func(e wire.Entry, fd int) {
				if want := fmt.Sprint("s", len(got)); e.Name != want {
					t.Errorf("entry %d is %q, want %q", len(got), e.Name, want)
				}
				got = append(got, fd)
			})
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if err := recvWithin(t, sent, "the sender to finish"); err != nil {
				t.Fatalf("send: %v", err)
			}
			if len(got) != n {
				t.Fatalf("received %d sockets, want %d", len(got), n)
			}
			want := ln.Addr().String()
			for i, fd := range got {
				if i%97 != 0 && i != n-1 { // sample: 10,000 getsocknames are slow under -race
					continue
				}
				flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				if err != nil || flags&unix.FD_CLOEXEC == 0 {
					t.Fatalf("socket %d: close-on-exec not set (flags %#x, %v)", i, flags, err)
				}
				e, err := ctl.DescribeSocket(fd)
				if err != nil || e.Address != want || e.Kind != wire.KindListener {
					t.Fatalf("socket %d is %+v (%v), want a listener on %s", i, e, err, want)
				}
			}
			ctl.CloseFDs(got)
		})
	}
}

// TestTruncatedControlData: a receiver with room for fewer descriptors
// than were sent gets MSG_CTRUNC, reports a protocol error and keeps none
// of what arrived.
func TestTruncatedControlData(t *testing.T) {
	checkLeaks(t)
	ln := localListener(t)
	a, f, err := ctl.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer f.Close()
	b, err := ctl.UnixConnFromFD(dupOrFatal(t, f))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	fds := make([]int, 10)
	for i := range fds {
		fds[i] = dupOrFatal(t, ln)
	}
	defer ctl.CloseFDs(fds)
	if err := ctl.WriteMsg(a, wire.FDBatch{Entries: make([]wire.Entry, 10)}, fds); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	_, got, err := ctl.ReadMsg(b, wire.MaxMessageSize, 2)
	if !errors.Is(err, ErrProtocol) || got != nil {
		t.Fatalf("readMsg = %v, %v; want ErrProtocol and no fds", got, err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open after truncation, %d before", after, before)
	}
}

// TestReceiveRejectsBadBatches: fds that do not match the entries, fds
// where none belong, and garbage are protocol errors that close every
// descriptor that arrived.
func TestReceiveRejectsBadBatches(t *testing.T) {
	ln := localListener(t)
	garbage := make([]byte, 512)
	rand.Read(garbage)
	tests := []struct {
		name string
		send func(c *net.UnixConn, fds []int) error
	}{
		{"fewer fds than entries", func(c *net.UnixConn, fds []int) error {
			return ctl.WriteMsg(c, wire.FDBatch{Entries: make([]wire.Entry, 3)}, fds[:2])
		}},
		{"fds with an ack", func(c *net.UnixConn, fds []int) error {
			return ctl.WriteMsg(c, wire.Ack{}, fds)
		}},
		{"batch out of sequence", func(c *net.UnixConn, fds []int) error {
			return ctl.WriteMsg(c, wire.FDBatch{Seq: 5, Entries: make([]wire.Entry, 3)}, fds)
		}},
		{"more sockets than announced", func(c *net.UnixConn, fds []int) error {
			return ctl.WriteMsg(c, wire.FDBatch{Entries: make([]wire.Entry, 3)}, fds)
		}},
		{"garbage with fds", func(c *net.UnixConn, fds []int) error {
			_, _, err := c.WriteMsgUnix(garbage, unix.UnixRights(fds...), nil)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			server, raw := rawPair(t)
			successor := ctl.NewConn(raw, wire.MaxMessageSize, wire.MaxFDs)
			fds := []int{dupOrFatal(t, ln), dupOrFatal(t, ln), dupOrFatal(t, ln)}
			defer ctl.CloseFDs(fds)
			if err := tt.send(server, fds); err != nil {
				t.Fatal(err)
			}
			total := uint32(3)
			if tt.name == "more sockets than announced" {
				total = 2
			}
			err := receiveSockets(successor, total, time.Second, func(_ wire.Entry, fd int) {
				t.Errorf("inherited a socket from a bad batch")
				ctl.CloseFDs([]int{fd})
			})
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("receiveSockets = %v, want ErrProtocol", err)
			}
		})
	}
}

// TestReceiveStalledPeer: a peer that sends nothing is dropped at the
// step deadline.
func TestReceiveStalledPeer(t *testing.T) {
	checkLeaks(t)
	_, successor := ctlPair(t)
	start := time.Now()
	err := receiveSockets(successor, 1, 100*time.Millisecond, func(wire.Entry, int) {})
	if !ctl.IsTimeout(err) {
		t.Fatalf("receiveSockets = %v, want a timeout", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v to give up on a stalled peer", took)
	}
}

// TestOversizedMessage: a packet larger than the receive buffer is
// MSG_TRUNC, a protocol error, not a partial message.
func TestOversizedMessage(t *testing.T) {
	raw, successor := rawPair(t)
	server := ctl.NewConn(raw, ctl.SmallMessage, 0)
	big := make([]byte, ctl.SmallMessage+1)
	if _, err := successor.Write(big); err != nil {
		t.Fatal(err)
	}
	if _, _, err := server.Recv(time.Now().Add(time.Second)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("recv = %v, want ErrProtocol", err)
	}
}
