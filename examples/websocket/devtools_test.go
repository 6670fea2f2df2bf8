//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/handoffd/handoff/internal/testbed"
)

// browser is a headless Chromium driven over the DevTools protocol, on a
// WebSocket to its one page.
type browser struct {
	conn net.Conn
	rw   io.ReadWriter
	id   int
}

// startChromium starts Debian's chromium headless, in a process group of
// its own that the test's cleanup kills, and connects to its page.
func startChromium(t *testing.T) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("no chromium (scripts/deps.sh installs it): %v", err)
	}
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "chromium.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--hide-scrollbars", "--window-size=900,700",
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--user-data-dir="+filepath.Join(dir, "profile"),
		"about:blank")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	reaper.Watch(pid)
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL) // the group this test made: chromium and its helpers
		reaper.Wait(pid, 30*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("chromium's log:\n%s", b)
		}
	})

	// Chromium writes the port it chose, and the browser's path, here.
	var port string
	testbed.Eventually(t, time.Minute, "chromium's DevToolsActivePort", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "profile", "DevToolsActivePort"))
		port, _, _ = strings.Cut(string(b), "\n")
		return err == nil && port != ""
	})
	var targets []struct{ Type, WebSocketDebuggerURL string }
	resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&targets)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		if tg.Type == "page" {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, br, _, err := ws.Dial(ctx, tg.WebSocketDebuggerURL)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			if br == nil {
				br = bufio.NewReader(conn)
			}
			return &browser{conn: conn, rw: struct {
				io.Reader
				io.Writer
			}{br, conn}}
		}
	}
	t.Fatalf("chromium has no page: %+v", targets)
	return nil
}

// call sends a DevTools command and decodes its result into result.
func (b *browser) call(t *testing.T, method string, params, result any) {
	t.Helper()
	b.id++
	req, err := json.Marshal(map[string]any{"id": b.id, "method": method, "params": params})
	if err != nil {
		t.Fatal(err)
	}
	b.conn.SetDeadline(time.Now().Add(time.Minute))
	if err := wsutil.WriteClientText(b.conn, req); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	for {
		msg, err := wsutil.ReadServerText(b.rw)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		var resp struct {
			ID     int
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		if err := json.Unmarshal(msg, &resp); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if resp.ID != b.id {
			continue // an event
		}
		if resp.Error != nil {
			t.Fatalf("%s: %s", method, resp.Error.Message)
		}
		if result != nil {
			if err := json.Unmarshal(resp.Result, result); err != nil {
				t.Fatalf("%s: %v", method, err)
			}
		}
		return
	}
}

// eval evaluates a JavaScript expression in the page and decodes its
// value, which must be JSON, into v.
func (b *browser) eval(t *testing.T, expr string, v any) {
	t.Helper()
	var r struct {
		Result           struct{ Value json.RawMessage }
		ExceptionDetails *struct{ Text string }
	}
	b.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		t.Fatalf("%s: %s", expr, r.ExceptionDetails.Text)
	}
	if v != nil {
		if err := json.Unmarshal(r.Result.Value, v); err != nil {
			t.Fatalf("%s = %s: %v", expr, r.Result.Value, err)
		}
	}
}

// screenshot saves the page as a PNG.
func (b *browser) screenshot(t *testing.T, path string) {
	t.Helper()
	var r struct{ Data []byte } // base64 in JSON: []byte decodes it
	b.call(t, "Page.captureScreenshot", map[string]any{"format": "png"}, &r)
	if err := os.WriteFile(path, r.Data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page in %s (%d bytes)", path, len(r.Data))
}

func (b *browser) navigate(t *testing.T, url string) {
	t.Helper()
	var r struct{ ErrorText string }
	b.call(t, "Page.navigate", map[string]any{"url": url}, &r)
	if r.ErrorText != "" {
		t.Fatalf("navigate to %s: %s", url, r.ErrorText)
	}
}
