package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// TestPrintStatus: an embedded server is labelled a process, not a
// wrapper; its build and its predecessor's and successor's are shown; a
// wrapper's canary window and last rollback are shown, and a rolled-back
// upgrade says so once.
func TestPrintStatus(t *testing.T) {
	now := time.Now()
	var out strings.Builder
	printStatus(&out, handoff.Status{PID: 7, Service: "api", Generation: 3, State: "serving", Started: now,
		Build:            handoff.Build{Version: "v0.2.0", Revision: "380d2cc1a2b3c4d5e6f708192a3b4c5d6e7f8091+dirty"},
		PredecessorBuild: &handoff.Build{},
		LastReload: &handoff.ReloadResult{At: now, Successor: 9, RolledBack: true, Error: "successor pid 9 ended (exit status 2) 1s after it was ready; rolled back",
			SuccessorBuild: &handoff.Build{Version: "v0.3.0"}}})
	got := out.String()
	for _, want := range []string{"process:    pid 7, generation 3, serving", "build:      v0.2.0, rev 380d2cc1a2b3+dirty\n", "took over:  from build (unknown version)\n",
		"last reload: " + now.Format(time.RFC3339) + ", took 0s, successor pid 9 ended (exit status 2) 1s after it was ready; rolled back, successor build v0.3.0\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("embedded status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "wrapper:") || strings.Contains(got, "failed:") {
		t.Errorf("embedded status calls it a wrapper, or the rollback a failure:\n%s", got)
	}

	detail, _ := json.Marshal(statusDetail{Command: []string{"app"}, Ready: "auto", Children: []childStatus{{PID: 8, Number: 3, Role: "serving", Started: now}},
		CanaryUntil: now.Add(5 * time.Second), LastRollback: "child pid 5 (number 2) ended (exit status 3)",
		Sockets: []socketMode{{Socket: "web=tcp://127.0.0.1:80", Address: "127.0.0.1:80", Mode: "per-generation"}, {Socket: "unix:///run/a.sock", Address: "/run/a.sock", Mode: "shared", Why: "a unix socket"}}})
	out.Reset()
	printStatus(&out, handoff.Status{PID: 7, Service: "app", Generation: 1, State: "serving", Started: now, Detail: detail})
	got = out.String()
	for _, want := range []string{"wrapper:    pid 7", "canary:     until ", "rollback:   child pid 5 (number 2) ended (exit status 3)",
		"socket mode: web=tcp://127.0.0.1:80 at 127.0.0.1:80: per-generation\n", "socket mode: unix:///run/a.sock at /run/a.sock: shared (a unix socket)\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("wrapper status lacks %q:\n%s", want, got)
		}
	}
}
