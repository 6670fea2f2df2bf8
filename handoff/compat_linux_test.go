//go:build linux

package handoff

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// The compatibility promise: the protocol is negotiated, so a build takes
// over from an older or a newer one and the other way round. These tests
// play the builds with the same code: an offer (speaks) is what a build
// says in hello and welcome, and the negotiation makes each side behave as
// the older one, so a process that speaks as an older build acts as one.

// envSpeaks names the build the successor role speaks as (compatOffers).
const envSpeaks = "HANDOFF_TEST_SPEAKS"

// compatOffers are the builds the tests play.
var compatOffers = map[string]offer{
	// old: the first protocol version with no capability and no build
	// in hello or welcome (what a build before them sends).
	"old": {minVersion: 1, maxVersion: 1},
	// batchless: a build from before conn-batch: it moves connections
	// one to a message (TestLinkPipelines plays its successor).
	"batchless": {minVersion: 1, maxVersion: 1, caps: wire.CapConns | wire.CapCanary},
	// new: this build, with a build to exchange (a test binary has none
	// stamped).
	"new": {minVersion: wire.Version, maxVersion: wire.Version, caps: wire.SupportedCaps,
		build: Build{Version: "v0.1.0-new", Revision: "0123456789abcdef0123456789abcdef01234567"}},
	// future: a later build that speaks a protocol version 2 as well as
	// 1, and a capability this one does not know.
	"future": {minVersion: 1, maxVersion: 2, caps: wire.SupportedCaps | 1<<40,
		build: Build{Version: "v0.9.0-future"}},
	// v2only: a later build that no longer speaks version 1.
	"v2only": {minVersion: 2, maxVersion: 2, caps: wire.SupportedCaps, build: Build{Version: "v2.0.0"}},
}

// speakAs makes this process speak as the build named (nothing for "").
func speakAs(name string) {
	if name == "" {
		return
	}
	o, ok := compatOffers[name]
	if !ok {
		panic("unknown build " + name)
	}
	speaks = o
}

// TestProtocolCompat: upgrades between real processes of builds that
// speak different protocol versions or capabilities, both directions.
// Each succeeds with no connection refused, exchanges builds (shown in
// Status), and uses only what both sides speak: a canary window needs
// both to say canary, so with an older peer on either side Exit is closed
// as soon as the successor is ready. A build that shares no protocol
// version is refused, and the old process serves on.
func TestProtocolCompat(t *testing.T) {
	for _, tt := range []struct {
		serving, successor string
		canary             bool // both speak canary: Exit waits for the window
		refused            bool // no common version
	}{
		{serving: "old", successor: "new"},
		{serving: "new", successor: "old"},
		{serving: "new", successor: "new", canary: true},
		{serving: "new", successor: "future", canary: true},
		{serving: "future", successor: "new", canary: true},
		{serving: "old", successor: "future"},
		{serving: "new", successor: "batchless", canary: true},
		{serving: "batchless", successor: "new", canary: true},
		{serving: "new", successor: "v2only", refused: true},
		{serving: "v2only", successor: "new", refused: true},
	} {
		t.Run(tt.serving+"→"+tt.successor, func(t *testing.T) {
			checkLeaks(t)
			saved := speaks
			t.Cleanup(func() { speaks = saved }) // after the Upgrader's Close: registered first
			speaks = compatOffers[tt.serving]
			t.Setenv(envSpeaks, tt.successor)
			cfg := testConfig(t)
			cfg.CanaryWindow = time.Second // a window that must pass, kept short
			t.Setenv(envHelper, "successor")
			t.Setenv(envSocket, cfg.Socket)
			t.Setenv(envAddr, "127.0.0.1:0")
			old, addr := servingUpgrader(t, cfg, "old")

			stop := make(chan struct{})
			dialed := dialLoop(addr, stop)
			err := old.Upgrade(context.Background())
			exited := false
			select {
			case <-old.Exit():
				exited = true
			default:
			}
			close(stop)
			if d := <-dialed; d.err != nil || d.answered == 0 {
				t.Errorf("during the upgrade %d connections were answered, then: %v", d.answered, d.err)
			}

			last := old.Status().LastReload
			if tt.refused {
				if !errors.Is(err, ErrSuccessorFailed) || last == nil || last.Error == "" {
					t.Fatalf("Upgrade to a build with no common version = %v (last %+v), want it refused", err, last)
				}
				if got := fetchTag(t, "tcp", addr); got != "old" {
					t.Fatalf("after the refused upgrade the server answers %q, want the old process", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Upgrade: %v", err)
			}
			pid := successorPID(t, addr)
			defer stopChild(t, pid)
			if exited == tt.canary {
				t.Errorf("Exit closed when Upgrade returned: %v; want %v (a canary window only if both speak canary)", exited, !tt.canary)
			}
			recvWithin(t, old.Exit(), "Exit")

			if want := compatOffers[tt.successor].build; last == nil || last.Successor != pid || last.SuccessorBuild == nil || *last.SuccessorBuild != want {
				t.Errorf("LastReload = %+v, want successor pid %d of build %+v", last, pid, want)
			}
			st, err := askStatus(context.Background(), cfg.Socket)
			if err != nil {
				t.Fatal(err)
			}
			if st.PID != pid || st.Build != compatOffers[tt.successor].build || st.PredecessorBuild == nil || *st.PredecessorBuild != speaks.build {
				t.Errorf("successor's status: pid %d, build %+v, predecessor's %+v; want pid %d, build %+v, predecessor's %+v",
					st.PID, st.Build, st.PredecessorBuild, pid, compatOffers[tt.successor].build, speaks.build)
			}
		})
	}
}

// dialed is what dialLoop saw.
type dialed struct {
	answered int
	err      error // the first failure
}

// dialLoop connects to addr, one connection after another, until stop is
// closed or one fails (at most 100,000 times), and then sends how many
// were answered, by the old process or the new, and the failure.
func dialLoop(addr string, stop <-chan struct{}) <-chan dialed {
	done := make(chan dialed, 1)
	go func() {
		var d dialed
		defer func() { done <- d }()
		for n := 0; n < 100000; n++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				d.err = err
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 64))
			c.Close()
			if err != nil {
				d.err = err
				return
			}
			d.answered++
		}
	}()
	return done
}

// TestOfferChoose: the version a serving process chooses for a peer.
func TestOfferChoose(t *testing.T) {
	for _, tt := range []struct {
		o        offer
		min, max uint16
		want     uint16
		ok       bool
	}{
		{offer{minVersion: 1, maxVersion: 1}, 1, 1, 1, true},
		{offer{minVersion: 1, maxVersion: 1}, 1, 5, 1, true},
		{offer{minVersion: 1, maxVersion: 3}, 1, 2, 2, true},
		{offer{minVersion: 2, maxVersion: 3}, 1, 1, 0, false},
		{offer{minVersion: 1, maxVersion: 1}, 2, 2, 0, false},
	} {
		v, ok := tt.o.choose(tt.min, tt.max)
		if ok != tt.ok || (ok && v != tt.want) {
			t.Errorf("%+v.choose(%d, %d) = %d, %v; want %d, %v", tt.o, tt.min, tt.max, v, ok, tt.want, tt.ok)
		}
	}
	if speaks.build != ownBuild() || speaks.caps != wire.SupportedCaps {
		t.Errorf("this build speaks %+v, want its own build and every capability", speaks)
	}
}
