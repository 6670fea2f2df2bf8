//go:build linux

package handoff

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkSocketTransfer measures passing n listening sockets over a
// real socketpair: from the first batch sent to the last one received and
// acknowledged, as in a handover.
func BenchmarkSocketTransfer(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ln := localListener(b)
			items := make([]handoverItem, n)
			for i := range items {
				items[i] = handoverItem{entry: entry{Kind: kindListener, Network: "tcp", Address: "127.0.0.1:0", Name: fmt.Sprint("s", i)}, conn: ln}
			}
			got := make([]*os.File, 0, n)
			keep := func(_ entry, f *os.File) { got = append(got, f) }
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				server, successor := ctlPair(b)
				got = got[:0]
				b.StartTimer()
				sent := make(chan error, 1)
				go func() { sent <- sendSockets(server, items, 5*time.Second) }()
				if err := receiveSockets(successor, uint32(n), 5*time.Second, keep); err != nil {
					b.Fatalf("receive: %v", err)
				}
				if err := <-sent; err != nil {
					b.Fatalf("send: %v", err)
				}
				b.StopTimer()
				for _, f := range got {
					f.Close()
				}
				server.Close()
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
