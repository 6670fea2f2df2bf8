package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// TestPrintStatus: an embedded server is labelled a process that embeds
// the library, not a wrapper; its build and its predecessor's and
// successor's are shown; a wrapper's canary window and last rollback are
// shown, each child with its role first and the executable it runs (with
// its Go build, when it has one), and a rolled-back upgrade says so once.
func TestPrintStatus(t *testing.T) {
	now := time.Now()
	var out strings.Builder
	printStatus(&out, handoff.Status{PID: 7, Service: "api", Generation: 3, State: "serving", Started: now,
		Build:            handoff.Build{Version: "v0.2.0", Revision: "380d2cc1a2b3c4d5e6f708192a3b4c5d6e7f8091+dirty"},
		PredecessorBuild: &handoff.Build{},
		LastReload: &handoff.ReloadResult{At: now, Successor: 9, RolledBack: true, Error: "successor pid 9 ended (exit status 2) 1s after it was ready; rolled back",
			SuccessorBuild: &handoff.Build{Version: "v0.3.0"}}})
	got := out.String()
	for _, want := range []string{"process:    pid 7 (embeds the handoff library), generation 3, serving", "build:      v0.2.0, rev 380d2cc1a2b3+dirty\n", "took over:  from build (unknown version)\n",
		"last reload: " + now.Format(time.RFC3339) + ", took 0s, successor pid 9 ended (exit status 2) 1s after it was ready; rolled back, successor build v0.3.0\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("embedded status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "wrapper:") || strings.Contains(got, "failed:") || strings.Contains(got, "version:") {
		t.Errorf("embedded status calls it a wrapper, or the rollback a failure:\n%s", got)
	}

	modified := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	detail, _ := json.Marshal(statusDetail{Version: "handoff v0.1.0 (rev 380d2cc1a2b3, go1.26.8, linux/amd64)", Command: []string{"app"}, Ready: "auto", Children: []childStatus{
		{PID: 8, Number: 3, Role: "serving", Started: now, Exe: &exeStatus{Path: "/usr/bin/app", Size: 8_100_000, Modified: modified, Build: &handoff.Build{Version: "v1.2.0", Revision: "380d2cc1a2b3c4d5"}}},
		{PID: 9, Number: 4, Role: "starting", Started: now, Exe: &exeStatus{Path: "/usr/sbin/lighttpd", Size: 300_000, Modified: modified}},
	}, CanaryUntil: now.Add(5 * time.Second), LastRollback: "child pid 5 (number 2) ended (exit status 3)",
		Sockets: []socketMode{{Socket: "web=tcp://127.0.0.1:80", Address: "127.0.0.1:80", Mode: "per-generation"}, {Socket: "unix:///run/a.sock", Address: "/run/a.sock", Mode: "shared", Why: "a unix socket"}}})
	out.Reset()
	printStatus(&out, handoff.Status{PID: 7, Service: "app", Generation: 1, State: "serving", Started: now, Build: handoff.Build{Version: "v0.1.0"}, Detail: detail})
	got = out.String()
	for _, want := range []string{"wrapper:    pid 7 (handoff run), generation 1", "version:    handoff v0.1.0 (rev 380d2cc1a2b3, go1.26.8, linux/amd64)\n", "canary:     until ", "rollback:   child pid 5 (number 2) ended (exit status 3)",
		"child:      serving (pid 8, child 3 of this wrapper, up 0s)\n  runs:     /usr/bin/app (modified 2026-12-03T06:00:00Z, 8.1 MB), build v1.2.0, rev 380d2cc1a2b3\n",
		"child:      starting (pid 9, child 4 of this wrapper, up 0s)\n  runs:     /usr/sbin/lighttpd (modified 2026-12-03T06:00:00Z, 0.3 MB), no Go build information\n",
		"socket mode: web=tcp://127.0.0.1:80 at 127.0.0.1:80: per-generation\n", "socket mode: unix:///run/a.sock at /run/a.sock: shared (a unix socket)\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("wrapper status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "build:") {
		t.Errorf("wrapper status shows both its version line and the build it repeats:\n%s", got)
	}
}

// TestStatusHelp: `handoff status -h` shows -json in its synopsis and its
// flags.
func TestStatusHelp(t *testing.T) {
	var out, errs strings.Builder
	if code := dispatch([]string{"status", "-h"}, &out, &errs); code != exitOK {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "Usage: handoff status [-socket PATH | -name NAME] [-json]\n") || !strings.Contains(got, "  -json\n") {
		t.Errorf("status -h:\n%s", got)
	}
}

// TestReloadHelp: reload -h shows -wait-canary.
func TestReloadHelp(t *testing.T) {
	var out, errs strings.Builder
	if code := dispatch([]string{"reload", "-h"}, &out, &errs); code != exitOK {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "Usage: handoff reload [-socket PATH | -name NAME] [-wait-canary]\n") || !strings.Contains(got, "  -wait-canary\n") {
		t.Errorf("reload -h:\n%s", got)
	}
}

// TestNothingServes: a client of a control socket that nobody serves says
// so, for a missing file and for one left by a process that exited.
func TestNothingServes(t *testing.T) {
	dir := t.TempDir()
	stale := dir + "/stale.sock"
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, with nobody behind it
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "-socket", dir + "/none.sock"}, "handoff status: nothing serves the control socket " + dir + "/none.sock: there is no such file (is the service running, and with this -socket or -name?): no such file or directory\n"},
		{[]string{"reload", "-socket", stale}, "handoff reload: nothing serves the control socket " + stale + ": the file is left from a process that has exited: connection refused\n"},
	} {
		var out, errs strings.Builder
		if code := dispatch(tt.args, &out, &errs); code != exitRuntime || errs.String() != tt.want {
			t.Errorf("%v: exit %d, stderr %q\nwant %q", tt.args, code, errs.String(), tt.want)
		}
	}
}

// TestNothingServesHere: where the platform has no handoff, the clients
// say that no control socket can be served there, and where to read why.
func TestNothingServesHere(t *testing.T) {
	err := noWrapper("/run/app.sock", fmt.Errorf("%w (darwin)", handoff.ErrNotSupported))
	if !errors.Is(err, handoff.ErrNotSupported) {
		t.Fatalf("noWrapper = %v, want ErrNotSupported", err)
	}
	var out strings.Builder
	report(&out, "status", err)
	want := "handoff status: nothing serves a control socket here: the handoff needs Linux, and servers on " + runtime.GOOS + " run without it; on macOS and the BSDs `handoff run` reloads on SIGHUP instead, by restarting its child (docs/platforms.md): not supported on this platform (darwin)\n"
	if out.String() != want {
		t.Fatalf("reported %q\nwant     %q", out.String(), want)
	}
}
