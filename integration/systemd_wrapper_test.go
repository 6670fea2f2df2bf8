//go:build linux

package integration_test

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
)

// The wrapper under a real systemd: examples/systemd/wrapper.service runs
// `handoff run` around examples/activated, a server that knows only
// socket activation.

// installWrapper installs examples/systemd/wrapper.service running the
// wrapper around command on a free loopback port, and with socketUnit
// wrapper.socket too.
func installWrapper(t *testing.T, sb *sandbox, command string, socketUnit bool) *sdService {
	t.Helper()
	s := &sdService{t: t, sb: sb, unit: "wrapper.service", addr: testbed.FreePort(t)}
	sb.installExample("wrapper.service", "/usr/local/bin/handoff", binary(t, "./cmd/handoff"),
		"/usr/local/bin/activated", command, "127.0.0.1:8080", s.addr)
	if socketUnit {
		sb.installExample("wrapper.socket", "127.0.0.1:8080", s.addr)
	}
	return s
}

var childStatus = regexp.MustCompile(`; child (\d+) \(pid (\d+)\)`)

// child is the serving child that the wrapper's status names: its number
// (1 for the first) and pid, or zeros.
func (p unitProps) child() (number, pid int) {
	m := childStatus.FindStringSubmatch(p["StatusText"])
	if m == nil {
		return 0, 0
	}
	number, _ = strconv.Atoi(m[1])
	pid, _ = strconv.Atoi(m[2])
	return number, pid
}

// waitChild waits until the wrapper, still the main process, says that
// child number serves, and until it does; it returns its pid.
func (s *sdService) waitChild(wrapper, number int) int {
	s.t.Helper()
	p := s.wait(fmt.Sprintf("child %d serving", number), func(p unitProps) bool {
		n, _ := p.child()
		return p["ActiveState"] == "active" && n == number
	})
	if p.mainPID() != wrapper {
		s.t.Fatalf("main process %d, want the wrapper %d", p.mainPID(), wrapper)
	}
	_, pid := p.child()
	testbed.WaitServing(s.t, s.addr, pid)
	return pid
}

// TestSystemdWrapperReloads: the wrapper under its Type=notify unit, 10 ×
// systemctl reload under load: no request fails, MainPID stays the
// wrapper's, each reload brings a new child, which the status names, and
// every old child is gone.
func TestSystemdWrapperReloads(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	s := installWrapper(t, sb, binary(t, "./examples/activated"), false)
	sb.systemctl("start", s.unit)
	p := s.props()
	wrapper, invocation := p.mainPID(), p["InvocationID"]
	first := s.waitChild(wrapper, 1)
	if want := fmt.Sprintf("serving: generation 1, pid %d; child 1 (pid %d); http=tcp %s", wrapper, first, s.addr); s.props()["StatusText"] != want {
		t.Errorf("status %q, want %q", s.props()["StatusText"], want)
	}

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	children := []int{first}
	for i := range 10 {
		sb.systemctl("reload", s.unit) // handoff reload: returns once the new child serves
		children = append(children, s.waitChild(wrapper, i+2))
	}
	res := stop()
	requireNoFailures(t, res)
	checkDistinct(t, children)
	last := children[len(children)-1]
	s.waitAlone(wrapper, last)
	p = s.props()
	if p.mainPID() != wrapper || p["NRestarts"] != "0" || p["InvocationID"] != invocation {
		t.Errorf("after the reloads: %v; want main process %d, no restart, invocation %s", p, wrapper, invocation)
	}
	sb.systemctl("stop", s.unit)
	if p := s.props(); p["ActiveState"] != "inactive" || p["Result"] != "success" {
		t.Errorf("after stop: %v", p)
	}
	t.Logf("wrapper, 10 systemctl reloads: %d requests, %d failed; MainPID %d throughout; children %v",
		res.Requests, res.FailedCount(), wrapper, children)
}

// TestSystemdWrapperFailedReload: a reload whose new child exits at once
// fails `systemctl reload` and leaves the unit active on the wrapper with
// the old child serving; a later reload to a good build succeeds. No
// request fails.
func TestSystemdWrapperFailedReload(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	good := binary(t, "./examples/activated")
	installed, broken := deployable(t, good)
	s := installWrapper(t, sb, installed, false)
	sb.systemctl("start", s.unit)
	p := s.props()
	wrapper, invocation := p.mainPID(), p["InvocationID"]
	first := s.waitChild(wrapper, 1)

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	install(t, broken, installed)
	if _, err := sb.run("systemctl", "reload", s.unit); err == nil {
		t.Error("systemctl reload succeeded with a child that exits at once")
	}
	p = s.wait("the failed reload reported", func(p unitProps) bool {
		return p["ActiveState"] == "active" && strings.Contains(p["StatusText"], "the last reload failed")
	})
	if n, pid := p.child(); p.mainPID() != wrapper || pid != first || n != 1 || p["NRestarts"] != "0" || p["InvocationID"] != invocation {
		t.Errorf("after the failed reload: %v; want the wrapper %d with child 1 (pid %d), no restart", p, wrapper, first)
	}
	testbed.WaitServing(t, s.addr, first)
	t.Logf("status after the failed reload: %s", p["StatusText"])

	install(t, good, installed)
	sb.systemctl("reload", s.unit)
	next := s.waitChild(wrapper, 3) // the failed one was child 2
	res := stop()
	requireNoFailures(t, res)
	t.Logf("wrapper, failed reload then a good one (child %d → %d): %d requests, %d failed", first, next, res.Requests, res.FailedCount())
}

// TestSystemdWrapperSocketActivated: wrapper.socket starts the wrapper at
// the first connection; the wrapper passes the socket unit's socket to
// its children, and reloads (systemctl reload, and SIGHUP) keep serving
// under load.
func TestSystemdWrapperSocketActivated(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	s := installWrapper(t, sb, binary(t, "./examples/activated"), true)
	first, p := s.activate("wrapper.socket")
	wrapper := p.mainPID()
	if _, pid := p.child(); pid != first {
		t.Fatalf("status %q, but pid %d answered", p["StatusText"], first)
	}
	if !strings.HasSuffix(p["StatusText"], fmt.Sprintf("; http=tcp %s (socket unit)", s.addr)) {
		t.Errorf("status %q does not name the socket unit's socket", p["StatusText"])
	}

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	children := []int{first}
	sb.systemctl("reload", s.unit)
	children = append(children, s.waitChild(wrapper, 2))
	sb.systemctl("kill", "--kill-who=main", "--signal=SIGHUP", s.unit)
	children = append(children, s.waitChild(wrapper, 3))
	res := stop()
	requireNoFailures(t, res)
	checkDistinct(t, children)
	t.Logf("socket-activated wrapper, 2 reloads: %d requests, %d failed; MainPID %d; children %v",
		res.Requests, res.FailedCount(), wrapper, children)
}
