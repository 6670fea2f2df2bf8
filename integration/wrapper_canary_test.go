//go:build linux

package integration_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
)

// TestWrapperCanaryRollback: `handoff run` around examples/activated, an
// unmodified server; a new build installed at the command's path serves
// after a reload and crashes a second later, within the canary window.
// The wrapper starts the previous build again at once, from the file it
// kept open (the path holds the broken build by then): under load from
// clients that never retry, no request fails, and status says why.
func TestWrapperCanaryRollback(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	app := filepath.Join(s.Dir, "app")
	install(t, binary(t, "./examples/activated"), app)
	// The broken build is cmd/handoff's test binary; its role comes from
	// the environment, which the good build ignores.
	s.Env = []string{testenv.Role + "=canary-crash"}
	wrapper, child := startWrapper(t, s, "-ready", "accepting", "-canary-window", "10s", "--", app)
	testbed.WaitServing(t, s.Addr, child)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)

	install(t, builder.BuildTest(t, "./cmd/handoff"), app)
	if err := requestReload(s); err != nil {
		t.Fatalf("reload to the new build: %v", err)
	}
	var rollback string
	deadline := time.Now().Add(30 * time.Second)
	for rollback == "" {
		st, _ := wrapperStatus(t, s)
		var d struct {
			LastRollback string `json:"last_rollback"`
		}
		if err := json.Unmarshal(st.Detail, &d); err != nil {
			t.Fatal(err)
		}
		rollback = d.LastRollback
		if time.Now().After(deadline) {
			t.Fatal("no rollback within 30s of the reload")
		}
		time.Sleep(5 * time.Millisecond)
	}
	back := servingChild(t, s, child)
	testbed.WaitServing(t, s.Addr, back)
	res := stopLoad()
	requireNoFailures(t, res)
	if !strings.Contains(rollback, "ended (exit status 3)") {
		t.Errorf("rollback reason %q; want the broken build's exit status 3", rollback)
	}
	// The child that serves again runs the previous build, which is no
	// longer at the path: its executable is the deleted file.
	exe, err := os.Readlink("/proc/" + strconv.Itoa(back) + "/exe")
	if err != nil || !strings.HasSuffix(exe, "(deleted)") {
		t.Errorf("the rolled-back child runs %q (%v); want the replaced, deleted, previous build", exe, err)
	}
	t.Logf("%s; load: %v", rollback, res)
	stopWrapper(t, s, wrapper, back)
}
