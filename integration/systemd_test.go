//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/testbed"
	"github.com/handoffd/handoff/internal/testenv"
	"golang.org/x/sys/unix"
)

// The tests below run the example unit files of examples/systemd under a
// real systemd (252 on the CI machine), booted in a sandbox for each test
// (systemd_sandbox_test.go), with steady load from a client that never
// retries.

// unitTimeout bounds every wait on a unit's state.
const unitTimeout = 60 * time.Second

// sdProps are the unit properties the tests watch.
var sdProps = []string{"MainPID", "ActiveState", "SubState", "Result", "NRestarts", "InvocationID", "StatusText",
	"NFileDescriptorStore", "ExecMainStartTimestampMonotonic"}

// mainPID is the unit's main process, in the sandbox's pid namespace
// (where the servers run, so it is also the pid they answer with).
func (p unitProps) mainPID() int {
	pid, _ := strconv.Atoi(p["MainPID"])
	return pid
}

// An sdService is a service unit of a sandbox that serves HTTP on addr.
type sdService struct {
	t    *testing.T
	sb   *sandbox
	unit string
	addr string
}

// installExample writes the unit file name of examples/systemd into the
// sandbox, replacing each old string (which must occur) by its new one.
func (sb *sandbox) installExample(name string, oldnew ...string) {
	sb.t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "systemd", name))
	if err != nil {
		sb.t.Fatal(err)
	}
	text := string(b)
	for i := 0; i+1 < len(oldnew); i += 2 {
		if !strings.Contains(text, oldnew[i]) {
			sb.t.Fatalf("examples/systemd/%s no longer mentions %q", name, oldnew[i])
		}
		text = strings.ReplaceAll(text, oldnew[i], oldnew[i+1])
	}
	sb.writeUnit(name, text)
}

// writeDropIn adds a drop-in file to unit.
func (sb *sandbox) writeDropIn(unit, name, text string) {
	sb.t.Helper()
	dir := filepath.Join(sb.units, unit+".d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		sb.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		sb.t.Fatal(err)
	}
}

// installHTTPServer installs examples/systemd/httpserver.service running
// bin on a free loopback port, and with socketUnit httpserver.socket too.
func installHTTPServer(t *testing.T, sb *sandbox, bin string, socketUnit bool) *sdService {
	t.Helper()
	s := &sdService{t: t, sb: sb, unit: "httpserver.service", addr: testbed.FreePort(t)}
	sb.installExample("httpserver.service", "/usr/local/bin/httpserver", bin, "127.0.0.1:8080", s.addr)
	if socketUnit {
		sb.installExample("httpserver.socket", "127.0.0.1:8080", s.addr)
	}
	return s
}

// start starts the service and waits until its main process serves.
func (s *sdService) start() int {
	s.t.Helper()
	s.sb.systemctl("start", s.unit) // Type=notify: returns after READY=1
	pid := s.props().mainPID()
	testbed.WaitServing(s.t, s.addr, pid)
	return pid
}

func (s *sdService) props() unitProps { return s.sb.show(s.unit, sdProps...) }

// wait waits until the unit's properties satisfy cond.
func (s *sdService) wait(what string, cond func(unitProps) bool) unitProps {
	s.t.Helper()
	return s.sb.waitUnit(s.unit, what, unitTimeout, cond, sdProps...)
}

// waitSuccessor waits until systemd names a main process other than old
// and the unit is active (systemd 252's reload job may end before the
// service's READY=1), then until that process serves, and returns it.
func (s *sdService) waitSuccessor(old int) unitProps {
	s.t.Helper()
	p := s.wait(fmt.Sprintf("active with a main process other than %d", old), func(p unitProps) bool {
		return p["ActiveState"] == "active" && p.mainPID() != 0 && p.mainPID() != old
	})
	testbed.WaitServing(s.t, s.addr, p.mainPID())
	return p
}

// waitAlone waits until pids are the only processes left in the unit:
// every earlier generation has drained and exited.
func (s *sdService) waitAlone(pids ...int) {
	s.t.Helper()
	slices.Sort(pids)
	want := fmt.Sprint(pids)
	procs := "/sys/fs/cgroup/system.slice/" + s.unit + "/cgroup.procs"
	deadline := time.Now().Add(unitTimeout)
	for {
		out, err := s.sb.run("cat", procs)
		var have []int
		for _, f := range strings.Fields(out) {
			pid, _ := strconv.Atoi(f)
			have = append(have, pid)
		}
		slices.Sort(have)
		if err == nil && fmt.Sprint(have) == want {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s runs %v (%v), want only %v", s.unit, have, err, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// controlSocket is the service's control socket (in its
// RuntimeDirectory=), as the host reaches it.
func (s *sdService) controlSocket() string {
	return fmt.Sprintf("/proc/%d/root/run/httpserver/httpserver.sock", s.sb.pid)
}

// reload reloads the service with systemctl reload, or over the control
// socket as `handoff reload` does, and returns the successor of main
// process old.
func (s *sdService) reload(old int, overControlSocket bool) int {
	s.t.Helper()
	if !overControlSocket {
		s.sb.systemctl("reload", s.unit)
		return s.waitSuccessor(old).mainPID()
	}
	ctx, cancel := context.WithTimeout(context.Background(), unitTimeout)
	defer cancel()
	if err := control.Reload(ctx, s.controlSocket(), nil); err != nil {
		s.t.Fatalf("reload over the control socket: %v", err)
	}
	return s.waitSuccessor(old).mainPID()
}

// environ is the initial environment of process pid of the sandbox.
func (s *sdService) environ(pid int) []string {
	s.t.Helper()
	out, err := s.sb.run("cat", fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.Split(out, "\x00")
}

// startLoad starts steady load that never retries; the returned stop (also
// run at cleanup) ends it and returns the result.
func startLoad(t *testing.T, addr string, mode loadgen.Mode, workers int) func() *loadgen.Result {
	stop := sync.OnceValue(testbed.RunLoad(addr, mode, workers))
	t.Cleanup(func() { stop() })
	return stop
}

// checkDistinct fails t if a pid occurs twice in pids.
func checkDistinct(t *testing.T, pids []int) {
	t.Helper()
	seen := map[int]bool{}
	for _, pid := range pids {
		if seen[pid] {
			t.Errorf("pid %d was the main process twice: %v", pid, pids)
		}
		seen[pid] = true
	}
}

// TestSystemdLibraryReloads: examples/httpserver under its Type=notify
// unit, 10 × systemctl reload (ExecReload=kill -HUP $MAINPID) and 2
// reloads over the control socket, under load: no request fails, MainPID
// follows every successor, the unit stays active with no restart, and
// every old process exits.
func TestSystemdLibraryReloads(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	bin := binary(t, "./examples/httpserver")
	s := installHTTPServer(t, sb, bin, false)
	// Each reload ends when systemd names the successor the main process,
	// at the end of the canary window (TestSystemdLibraryCanaryRollback
	// has the default's): a short one keeps twelve reloads quick.
	sb.writeDropIn(s.unit, "canary.conf", fmt.Sprintf("[Service]\nExecStart=\nExecStart=%s -addr %s -canary-window 1s\n", bin, s.addr))
	first := s.start()
	p := s.props()
	invocation := p["InvocationID"]
	if want := fmt.Sprintf("serving: generation 1, pid %d; tcp %s", first, s.addr); p["StatusText"] != want {
		t.Errorf("status %q, want %q", p["StatusText"], want)
	}

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	pids := []int{first}
	for i := range 12 {
		pids = append(pids, s.reload(pids[len(pids)-1], i >= 10))
	}
	res := stop()
	requireNoFailures(t, res)
	checkDistinct(t, pids)

	last := pids[len(pids)-1]
	s.waitAlone(last)
	p = s.props()
	if p["ActiveState"] != "active" || p["NRestarts"] != "0" || p["InvocationID"] != invocation {
		t.Errorf("after the reloads: %v; want active, no restart, invocation %s", p, invocation)
	}
	if want := fmt.Sprintf("serving: generation 13, pid %d; tcp %s", last, s.addr); p["StatusText"] != want {
		t.Errorf("status %q, want %q", p["StatusText"], want)
	}
	sb.systemctl("stop", s.unit)
	if p := s.props(); p["ActiveState"] != "inactive" || p["Result"] != "success" {
		t.Errorf("after stop: %v", p)
	}
	t.Logf("12 reloads (10 systemctl reload, 2 over the control socket): %d requests, %d failed; MainPID %v",
		res.Requests, res.FailedCount(), pids)
}

// TestSystemdLibraryFDStore: with the fd store and Restart=always, kill -9
// of the main process (the first, then a successor after a reload) refuses
// no connection: one made while no process runs waits in the kept
// socket's queue and is served by the restarted process, which reports
// that its socket came from the fd store.
func TestSystemdLibraryFDStore(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	s := installHTTPServer(t, sb, binary(t, "./examples/httpserver"), false)
	// Time to connect while nothing runs.
	sb.writeDropIn(s.unit, "restart.conf", "[Service]\nRestartSec=1s\n")
	pid := s.start()
	s.wait("the socket in the fd store", func(p unitProps) bool { return p["NFileDescriptorStore"] == "1" })

	const workers = 4
	stop := startLoad(t, s.addr, loadgen.NewConn, workers)
	for round := range 2 {
		if round == 1 { // now a main process systemd did not start: it learned it from MAINPID=
			pid = s.reload(pid, false)
			s.waitAlone(pid)
		}
		sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", s.unit)
		s.wait("systemd to see the main process killed", func(p unitProps) bool { return p["SubState"] == "auto-restart" })
		c, connected := dialNow(t, s.addr)
		p := s.waitSuccessor(pid)
		if started, _ := strconv.ParseInt(p["ExecMainStartTimestampMonotonic"], 10, 64); connected >= started {
			t.Errorf("the probe connected at %d µs, not before the new process started (%d µs)", connected, started)
		}
		if served := answer(t, c); served != p.mainPID() {
			t.Errorf("the connection made while no process ran was served by %d, want %d", served, p.mainPID())
		}
		if !strings.Contains(p["StatusText"], "(fd store)") || p["NFileDescriptorStore"] != "1" {
			t.Errorf("restarted process: status %q, %s stored descriptors; want its socket from the fd store", p["StatusText"], p["NFileDescriptorStore"])
		}
		pid = p.mainPID()
	}
	res := stop()
	t.Logf("load: %v", res)
	if res.Failures[loadgen.Refused] != 0 || res.OK == 0 {
		t.Errorf("%d connections refused: %v", res.Failures[loadgen.Refused], res.Errors)
	}
	// Only a request in flight in a killed process can fail.
	if res.FailedCount() > 2*workers {
		t.Errorf("%d failed requests, more than the %d that can be in flight at two kills: %v", res.FailedCount(), 2*workers, res.Errors)
	}
	if p := s.props(); p["NRestarts"] != "2" || p["ActiveState"] != "active" {
		t.Errorf("after two kills: %v", p)
	}
	t.Logf("2 × kill -9 under load: %d requests, %d refused, %d failed (in flight in the killed process): %v",
		res.Requests, res.Failures[loadgen.Refused], res.FailedCount(), res.Failures)
}

// dialNow connects to addr and sends a request, and returns the
// connection with the CLOCK_MONOTONIC time (µs) by which it connected.
func dialNow(t *testing.T, addr string) (net.Conn, int64) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connect while the service restarts: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c, ts.Nano() / 1000
}

// answer reads the response on c and returns the pid that served it.
func answer(t *testing.T, c net.Conn) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(unitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// TestSystemdSocketActivation: httpserver.socket starts the service at the
// first connection; the library finds the socket unit's socket, reloads
// (systemctl reload, and over the control socket) keep serving under
// load, and LISTEN_* reaches no successor.
func TestSystemdSocketActivation(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	s := installHTTPServer(t, sb, binary(t, "./examples/httpserver"), true)
	first, p := s.activate("httpserver.socket")
	if p.mainPID() != first {
		t.Fatalf("main process %d, but %d answered", p.mainPID(), first)
	}
	if want := fmt.Sprintf("serving: generation 1, pid %d; tcp %s (socket unit)", first, s.addr); p["StatusText"] != want {
		t.Errorf("status %q, want %q", p["StatusText"], want)
	}

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	pids := []int{first}
	for i := range 2 {
		next := s.reload(pids[len(pids)-1], i == 1)
		for _, kv := range s.environ(next) {
			if strings.HasPrefix(kv, "LISTEN_") {
				t.Errorf("successor %d was started with %s", next, kv)
			}
		}
		pids = append(pids, next)
	}
	res := stop()
	requireNoFailures(t, res)
	if p := s.props(); p["NRestarts"] != "0" || p["ActiveState"] != "active" {
		t.Errorf("after the reloads: %v", p)
	}
	t.Logf("socket-activated, 2 reloads: %d requests, %d failed; MainPID %v", res.Requests, res.FailedCount(), pids)
}

// deployable installs a copy of the executable bin in a directory of its
// own, where a test replaces it as a deploy would (install), and returns
// its path and that of a broken build, which exits at once.
func deployable(t *testing.T, bin string) (installed, broken string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdsvc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	installed, broken = filepath.Join(dir, filepath.Base(bin)), filepath.Join(dir, "broken")
	install(t, bin, installed)
	if err := os.WriteFile(broken, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return installed, broken
}

// activate starts socket unit socket, checks that the service does not
// run yet, then sends a request, which starts it. It returns the pid that
// answered, and the service's properties once it is active.
func (s *sdService) activate(socket string) (int, unitProps) {
	s.t.Helper()
	s.sb.systemctl("start", socket)
	if p := s.props(); p["ActiveState"] != "inactive" {
		s.t.Fatalf("%s runs before any connection: %v", s.unit, p)
	}
	r := loadgen.Run(context.Background(), loadgen.Config{Addr: s.addr, Mode: loadgen.NewConn, Workers: 1, MaxRequests: 1, Timeout: unitTimeout})
	for pid := range r.PIDs {
		return pid, s.wait("active, started by the socket", func(p unitProps) bool { return p["ActiveState"] == "active" })
	}
	s.t.Fatalf("no answer from %s: %v", s.addr, r.Errors)
	return 0, nil
}

// TestSystemdLibraryFailedReload: a reload whose successor exits at once
// leaves the unit active, on the old main process, with the failure in
// its status; a later reload to a good build succeeds. No request fails.
func TestSystemdLibraryFailedReload(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	good := binary(t, "./examples/httpserver")
	installed, broken := deployable(t, good)
	s := installHTTPServer(t, sb, installed, false)
	first := s.start()
	invocation := s.props()["InvocationID"]

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	install(t, broken, installed)
	sb.systemctl("reload", s.unit)
	p := s.wait("the failed reload reported", func(p unitProps) bool {
		return p["ActiveState"] == "active" && strings.Contains(p["StatusText"], "the last reload failed")
	})
	if p.mainPID() != first || p["NRestarts"] != "0" || p["InvocationID"] != invocation {
		t.Errorf("after the failed reload: %v; want main process %d, no restart, invocation %s", p, first, invocation)
	}
	testbed.WaitServing(t, s.addr, first)
	t.Logf("status after the failed reload: %s", p["StatusText"])

	install(t, good, installed)
	next := s.reload(first, false)
	res := stop()
	requireNoFailures(t, res)
	t.Logf("failed reload, then a good one (%d → %d): %d requests, %d failed", first, next, res.Requests, res.FailedCount())
}

// TestSystemdLibraryCanaryRollback: a reload to a build that says ready
// and dies a second later, within the canary window, leaves the unit
// active on the old main process, which serves again on the same sockets
// and says so in its status; systemd restarts nothing, and no request
// fails. A reload to a good build then succeeds.
func TestSystemdLibraryCanaryRollback(t *testing.T) {
	checkNoChildren(t)
	sb := startSandbox(t)
	good := binary(t, "./examples/httpserver")
	peer := builder.BuildTest(t, "./handoff")
	installed, _ := deployable(t, good)
	step := filepath.Join(filepath.Dir(installed), "step")
	if err := os.WriteFile(step, []byte("ready-then-die 1s"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := installHTTPServer(t, sb, installed, false)
	// httpserver ignores these; the handoff test binary installed in its
	// place plays a build that dies after ready.
	sb.writeDropIn(s.unit, "chaos.conf", fmt.Sprintf("[Service]\nEnvironment=%s=chaos-successor %s=%s %s=httpserver\n",
		envHelper, testenv.ChaosFile, step, testenv.Service))
	first := s.start()
	invocation := s.props()["InvocationID"]

	stop := startLoad(t, s.addr, loadgen.Mixed, 4)
	install(t, peer, installed)
	sb.systemctl("reload", s.unit)
	p := s.wait("the rollback reported", func(p unitProps) bool {
		return p["ActiveState"] == "active" && strings.Contains(p["StatusText"], "rolled back")
	})
	if p.mainPID() != first || p["NRestarts"] != "0" || p["InvocationID"] != invocation {
		t.Errorf("after the rollback: %v; want main process %d, no restart, invocation %s", p, first, invocation)
	}
	testbed.WaitServing(t, s.addr, first)
	t.Logf("status after the rollback: %s", p["StatusText"])

	install(t, good, installed)
	next := s.reload(first, false)
	res := stop()
	requireNoFailures(t, res)
	t.Logf("rolled back, then a good reload (%d → %d): %d requests, %d failed", first, next, res.Requests, res.FailedCount())
}
