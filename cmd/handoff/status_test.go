package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
)

// TestPrintStatus: an embedded server is labelled a process, not a
// wrapper; a wrapper's canary window and last rollback are shown, and a
// rolled-back upgrade says so once.
func TestPrintStatus(t *testing.T) {
	now := time.Now()
	var out strings.Builder
	printStatus(&out, handoff.Status{PID: 7, Service: "api", Generation: 3, State: "serving", Started: now,
		LastReload: &handoff.ReloadResult{At: now, Successor: 9, RolledBack: true, Error: "successor pid 9 ended (exit status 2) 1s after it was ready; rolled back"}})
	got := out.String()
	for _, want := range []string{"process:    pid 7, generation 3, serving", "last reload: " + now.Format(time.RFC3339) + ", took 0s, successor pid 9 ended (exit status 2) 1s after it was ready; rolled back\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("embedded status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "wrapper:") || strings.Contains(got, "failed:") {
		t.Errorf("embedded status calls it a wrapper, or the rollback a failure:\n%s", got)
	}

	detail, _ := json.Marshal(statusDetail{Command: []string{"app"}, Ready: "auto", Children: []childStatus{{PID: 8, Number: 3, Role: "serving", Started: now}},
		CanaryUntil: now.Add(5 * time.Second), LastRollback: "child pid 5 (number 2) ended (exit status 3)"})
	out.Reset()
	printStatus(&out, handoff.Status{PID: 7, Service: "app", Generation: 1, State: "serving", Started: now, Detail: detail})
	got = out.String()
	for _, want := range []string{"wrapper:    pid 7", "canary:     until ", "rollback:   child pid 5 (number 2) ended (exit status 3)"} {
		if !strings.Contains(got, want) {
			t.Errorf("wrapper status lacks %q:\n%s", want, got)
		}
	}
}
