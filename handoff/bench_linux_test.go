//go:build linux

package handoff

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// BenchmarkSocketTransfer measures passing n listening sockets as a
// takeover does: from connecting to the control socket until the last
// batch is received and acknowledged.
func BenchmarkSocketTransfer(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			path := filepath.Join(socketDir(b), "ctl.sock")
			ctrl, err := ctl.ListenControlSocket(path)
			if err != nil {
				b.Fatal(err)
			}
			defer ctrl.Close()
			ln := localListener(b)
			items := make([]handoverItem, n)
			for i := range items {
				items[i] = handoverItem{Entry: wire.Entry{Kind: wire.KindListener, Network: "tcp", Address: "127.0.0.1:0", Name: fmt.Sprint("s", i)}, conn: ln}
			}
			got := make([]int, 0, n)
			keep := func(_ wire.Entry, fd int) { got = append(got, fd) }
			b.ReportAllocs()
			for b.Loop() {
				sent := make(chan error, 1)
				go func() {
					c, err := ctrl.AcceptUnix()
					if err != nil {
						sent <- err
						return
					}
					server := ctl.NewConn(c, ctl.SmallMessage, 0)
					defer server.Close()
					sent <- sendSockets(server, items, 5*time.Second)
				}()
				c, err := net.Dial("unixpacket", path)
				if err != nil {
					b.Fatal(err)
				}
				successor := ctl.NewConn(c.(*net.UnixConn), wire.MaxMessageSize, wire.MaxFDs)
				if err := receiveSockets(successor, uint32(n), 5*time.Second, keep); err != nil {
					b.Fatalf("receive: %v", err)
				}
				if err := <-sent; err != nil {
					b.Fatalf("send: %v", err)
				}
				b.StopTimer()
				ctl.CloseFDs(got)
				got = got[:0]
				successor.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkUpgradeRoundTrip measures a full upgrade of a minimal server:
// from the call to Upgrade (start a fresh copy of the program, hand it the
// sockets) until the successor is ready and this process has stopped
// accepting.
func BenchmarkUpgradeRoundTrip(b *testing.B) {
	b.Setenv(envQuiet, "1")
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		old, _, addr := upgradeSetup(b, "successor", 10*time.Second)
		b.StartTimer()
		if err := old.Upgrade(context.Background()); err != nil {
			b.Fatalf("Upgrade: %v", err)
		}
		b.StopTimer()
		pid, err := strconv.Atoi(fetchTag(b, "tcp", addr))
		if err != nil || pid == os.Getpid() {
			b.Fatalf("successor did not take over: %v", err)
		}
		stopChild(b, pid)
		old.Close()
		b.StartTimer()
	}
}

// handedOverPair returns an Upgrader that has handed over, its successor,
// and a unix listener for the sessions to move, closed at b's end.
func handedOverPair(b *testing.B) (old, next *Upgrader, ln net.Listener) {
	cfg := testConfig(b)
	old, _ = readyUpgrader(b, cfg)
	next, _ = readyUpgrader(b, cfg)
	<-old.Exit()
	ln, err := net.Listen("unix", filepath.Join(socketDir(b), "sessions.sock"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	return old, next, ln
}

// BenchmarkConnHandover measures moving n established connections to the
// successor at once, as a draining HTTPServer moves its idle keep-alive
// connections: from n concurrent SendConn calls until the successor has
// accepted (and closed) every one. The connections are unix stream
// sockets whose client ends are closed before the move (the benchmark
// process holds both generations' descriptors, and the 18,000 of the
// largest size fit its limit of 20,000 only once each); what moves is
// the server's socket, which is all a handover touches.
func BenchmarkConnHandover(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 18000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("short")
			}
			old, next, ln := handedOverPair(b)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				sessions := make([]net.Conn, n)
				for i := range n {
					client, err := net.Dial("unix", ln.Addr().String())
					if err != nil {
						b.Fatal(err)
					}
					if sessions[i], err = ln.Accept(); err != nil {
						b.Fatal(err)
					}
					client.Close()
				}
				sent := make(chan error, n)
				b.StartTimer()
				for _, s := range sessions {
					go func() { sent <- old.SendConn(ctx, s, nil) }()
				}
				// Each moved connection is closed at once: the process
				// has room for every connection once, not twice.
				wait, cancel := context.WithTimeout(ctx, time.Minute)
				for range n {
					c, _, err := next.AcceptConn(wait)
					if err != nil {
						cancel()
						b.Fatalf("AcceptConn: %v", err)
					}
					c.Close()
				}
				cancel()
				for range n {
					if err := <-sent; err != nil {
						b.Fatalf("SendConn: %v", err)
					}
				}
			}
		})
	}
}

// BenchmarkIdleConnHandover is BenchmarkConnHandover with SendIdleConn:
// from n concurrent calls until each has returned, the successor having
// parked its connection (one epoll_ctl, nothing adopted). The clients
// stay open while it runs, or every connection would be readable (hung
// up) and adopted at once: with both ends and the successor's copy in
// this process, 6,000 is the largest size its 20,000 descriptors hold.
// Afterwards, untimed, the clients close and AcceptConn takes each.
func BenchmarkIdleConnHandover(b *testing.B) {
	for _, n := range []int{1, 1000, 6000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("short")
			}
			old, next, ln := handedOverPair(b)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				clients := make([]net.Conn, n)
				sessions := make([]net.Conn, n)
				var err error
				for i := range n {
					if clients[i], err = net.Dial("unix", ln.Addr().String()); err != nil {
						b.Fatal(err)
					}
					if sessions[i], err = ln.Accept(); err != nil {
						b.Fatal(err)
					}
				}
				sent := make(chan error, n)
				b.StartTimer()
				for _, s := range sessions {
					go func() { sent <- old.SendIdleConn(ctx, s, nil) }()
				}
				for range n {
					if err := <-sent; err != nil {
						b.Fatalf("SendIdleConn: %v", err)
					}
				}
				b.StopTimer()
				for _, c := range clients {
					c.Close()
				}
				wait, cancel := context.WithTimeout(ctx, time.Minute)
				for range n {
					c, _, err := next.AcceptConn(wait)
					if err != nil {
						cancel()
						b.Fatalf("AcceptConn: %v", err)
					}
					c.Close()
				}
				cancel()
				b.StartTimer()
			}
		})
	}
}
