//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/testbed"
)

// pageState is the page's window.wsState (page.html).
type pageState struct {
	Sent, Answered int
	Wrong          []string
	PIDs           []string
	Open, Closed   bool
	Extensions     string // what the handshake negotiated
	CloseCode      int
}

// TestBrowserAcrossRestarts: headless Chromium on the page at / across
// WS_BROWSER_RESTARTS (10) SIGHUP upgrades. The page's one WebSocket never
// closes (onclose never fires), every message it sends is answered once,
// in order, with the counter continued, and the answering pid changes at
// every restart. The page after the restarts is saved as a screenshot: in
// WS_SCREENSHOT if set (docs/websocket.png is made so), else in a
// temporary directory.
func TestBrowserAcrossRestarts(t *testing.T) {
	restarts := envInt(t, "WS_BROWSER_RESTARTS", 10)
	s, pid := startService(t)
	b := startChromium(t)
	b.navigate(t, "http://"+s.Addr+"/?period=50")

	var st pageState
	read := func() pageState {
		var js string
		b.eval(t, "JSON.stringify(window.wsState || null)", &js)
		var st pageState
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatalf("page state %q: %v", js, err)
		}
		if st.Closed || len(st.Wrong) > 0 {
			t.Fatalf("the page saw its WebSocket close or a wrong answer: %+v", st)
		}
		return st
	}
	answeredBy := func(pid int, what string) {
		t.Helper()
		testbed.Eventually(t, time.Minute, what, func() bool {
			st = read()
			return len(st.PIDs) > 0 && st.PIDs[len(st.PIDs)-1] == strconv.Itoa(pid)
		})
	}
	answeredBy(pid, "the page's first answer")
	want := []string{strconv.Itoa(pid)}
	for r := range restarts {
		pid = upgrade(t, s, pid)
		want = append(want, strconv.Itoa(pid))
		answeredBy(pid, fmt.Sprintf("the page's answers from process %d after restart %d", pid, r+1))
	}
	b.eval(t, "stopSending(), true", nil)
	testbed.Eventually(t, time.Minute, "the page's last answers", func() bool {
		st = read()
		return st.Answered == st.Sent
	})
	if !st.Open || !slices.Equal(st.PIDs, want) || st.Extensions != "" {
		t.Fatalf("page state %+v; want open, no extension (Chromium offers permessage-deflate), answered by %v in turn", st, want)
	}
	t.Logf("Chromium, %d restarts: the page's WebSocket stayed open; %d messages sent, %d answered in order, by %d processes in turn",
		restarts, st.Sent, st.Answered, len(st.PIDs))
	shot := os.Getenv("WS_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "websocket.png")
	}
	b.screenshot(t, shot)
}
