//go:build linux

package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/handoff/control"
	"github.com/handoffd/handoff/internal/loadgen"
	"github.com/handoffd/handoff/internal/procfs"
	"github.com/handoffd/handoff/internal/testbed"
)

// The wrapper, cmd/handoff, runs servers it knows nothing about: the
// go-systemd example (examples/activated), lighttpd from Debian, and
// shell commands that misbehave on purpose. Every test runs the wrapper
// as the test's child and learns the wrapper's children from
// `handoff status` (the control socket).

// wrapperChild mirrors a child in the wrapper's status detail.
type wrapperChild struct {
	PID     int       `json:"pid"`
	Role    string    `json:"role"`
	Started time.Time `json:"started"`
}

type wrapperDetail struct {
	Children     []wrapperChild `json:"children"`
	Restarts     int            `json:"restarts"`
	LastRollback string         `json:"last_rollback"`
}

// wrapperStatus asks the wrapper serving s's control socket.
func wrapperStatus(t testing.TB, s *testbed.Service) (handoff.Status, wrapperDetail) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := control.Status(ctx, s.Socket)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var d wrapperDetail
	if err := json.Unmarshal(st.Detail, &d); err != nil {
		t.Fatalf("status detail %s: %v", st.Detail, err)
	}
	return st, d
}

// servingChild waits until the wrapper has a serving child other than
// not, and nothing else, with no reload in progress, and returns it.
func servingChild(t testing.TB, s *testbed.Service, not int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, d := wrapperStatus(t, s)
		// A reload stops the old child a moment before it ends: until
		// then the wrapper would refuse the next one as in progress.
		if st.State == "serving" && len(d.Children) == 1 && d.Children[0].Role == "serving" && d.Children[0].PID != not {
			pid := d.Children[0].PID
			learn(pid)
			s.Remember(pid) // may be signalled; an orphan to reap if the wrapper dies
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no serving child other than %d after 30s: %+v", not, d.Children)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A pid names a process only as long as it lives: the pid space here is
// small (pid_max 32768) and busy, so a test that learns a pid also
// records the process's start time, and "gone" means no process of that
// pid with that start time.
var startTimes sync.Map // pid → start time (clock ticks after boot)

// learn records the start time of pid, a process the test will wait for.
func learn(pid int) {
	if start, _, ok := testbed.ProcStat(pid); ok {
		startTimes.LoadOrStore(pid, start)
	}
}

// exists reports whether the process the test learned as pid is still
// there: running, or (unless zombies count as gone) exited and unreaped.
func exists(pid int, zombiesGone bool) bool {
	start, state, ok := testbed.ProcStat(pid)
	if !ok {
		return false
	}
	if known, ok := startTimes.Load(pid); ok && known != start {
		return false // the pid now names another process
	}
	return !(zombiesGone && state == "Z")
}

// waitGone waits until pid no longer exists: exited and reaped.
func waitGone(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for exists(pid, false) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still exists (running or unreaped) after %v", pid, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// startWrapper starts `handoff run` for s, serving s.Addr as socket
// "web", with extra flags and then the command, and waits until it is
// ready. It returns the wrapper's pid and its child's.
func startWrapper(t testing.TB, s *testbed.Service, args ...string) (wrapper, child int) {
	t.Helper()
	base := []string{"run", "-socket", s.Socket, "-pidfile", s.PIDFile, "-listen", "web=tcp://" + s.Addr, "-ready-timeout", "10s", "-drain-timeout", "10s"}
	wrapper = s.Start(append(base, args...)...)
	s.WaitPID(wrapper, 0, 30*time.Second)
	return wrapper, servingChild(t, s, 0)
}

// stopWrapper stops the wrapper with SIGTERM: it must stop its child and
// exit 0, leaving no child behind.
func stopWrapper(t testing.TB, s *testbed.Service, wrapper, child int) {
	t.Helper()
	s.Signal(wrapper, syscall.SIGTERM)
	if ws := s.WaitExit(wrapper, 60*time.Second); ws.ExitStatus() != 0 {
		t.Errorf("wrapper exited with %v after SIGTERM, want 0", ws)
	}
	waitGone(t, child, 10*time.Second)
}

// rss returns a process's resident set size in KiB.
func rss(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := procfs.RSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return b >> 10
}

// reloadsUnderLoad reloads the wrapper n times with SIGHUP under steady
// load (keep-alive and new connections, no retries): zero failed
// requests, the wrapper's pid never changes, every reload brings a new
// child, and every old child is gone (stopped and reaped) before the
// next reload. It logs the numbers the README reports.
func reloadsUnderLoad(t *testing.T, s *testbed.Service, wrapper, child, n int) int {
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)
	children := map[int]bool{child: true}
	var hupToStopped []time.Duration
	for range n {
		t0 := time.Now()
		s.Signal(wrapper, syscall.SIGHUP)
		next := servingChild(t, s, child)
		waitGone(t, child, 30*time.Second)
		hupToStopped = append(hupToStopped, time.Since(t0))
		if children[next] {
			t.Fatalf("reload gave child %d, which served before", next)
		}
		children[next] = true
		child = next
	}
	res := stopLoad()
	requireNoFailures(t, res)
	if pid := s.PID(); pid != wrapper {
		t.Errorf("pid file says %d after the reloads, want the wrapper %d", pid, wrapper)
	}
	t.Logf("%d reloads: %d failed requests of %d; SIGHUP to old child stopped: median %v, max %v; wrapper RSS %d KiB (race build)",
		n, res.FailedCount(), res.Requests, testbed.Median(hupToStopped), slicesMax(hupToStopped), rss(t, wrapper))
	return child
}

// reload reloads the wrapper with SIGHUP, waits until the new child
// serves and the old one is gone, and returns the new one.
func reload(t *testing.T, s *testbed.Service, wrapper, child int) int {
	t.Helper()
	s.Signal(wrapper, syscall.SIGHUP)
	next := servingChild(t, s, child)
	waitGone(t, child, 30*time.Second)
	return next
}

// keepAliveClients is how many keep-alive clients keepAliveReloads runs.
const keepAliveClients = 8

// keepAliveReloads reloads the wrapper n times with SIGHUP under
// keep-alive load (keepAliveClients clients, each sending request after
// request on one connection, a new one only after a failure; no
// retries) and logs what failed, the figures docs/wrapper.md reports. A
// server that closes its idle keep-alive connections when it stops fails
// the request a client sends on one just then, which a wrapper that does
// not proxy cannot prevent; its client then connects again, to the new
// child (steering). So at most one request per client per reload may
// fail. It returns the serving child.
func keepAliveReloads(t *testing.T, s *testbed.Service, server string, wrapper, child, n int) int {
	t.Helper()
	stopLoad := testbed.RunLoad(s.Addr, loadgen.KeepAlive, keepAliveClients)
	for range n {
		child = reload(t, s, wrapper, child)
	}
	res := stopLoad()
	t.Logf("%s, keep-alive load (%d clients), %d reloads: %d failed requests of %d, %d connections (%v); first errors %q",
		server, keepAliveClients, n, res.FailedCount(), res.Requests, res.Conns, res, res.Errors)
	if res.FailedCount() > int64(keepAliveClients*n) || res.OK == 0 {
		t.Errorf("%d failed requests, %d ok: more than one per keep-alive client per reload (%d)", res.FailedCount(), res.OK, keepAliveClients*n)
	}
	return child
}

// TestWrapperActivatedReloads: the go-systemd example under the wrapper,
// reloads under load with each -ready mode that fits it: the default
// (auto: it sends READY=1, so READY=1 and accepting), notify alone, and
// accepting alone (the Go runtime registers a listener in its epoll set
// as soon as it is created).
func TestWrapperActivatedReloads(t *testing.T) {
	for _, tt := range []struct {
		ready   string
		reloads int
	}{{"auto", 30}, {"notify", 10}, {"accepting", 10}} {
		t.Run(tt.ready, func(t *testing.T) {
			checkNoChildren(t)
			s := newService(t, binary(t, "./cmd/handoff"))
			wrapper, child := startWrapper(t, s, "-ready", tt.ready, "--", binary(t, "./examples/activated"))
			testbed.WaitServing(t, s.Addr, child)
			child = reloadsUnderLoad(t, s, wrapper, child, tt.reloads)
			stopWrapper(t, s, wrapper, child)
		})
	}
}

// lookPath finds a server's executable, also in the sbin directories a
// PATH without them (CI's, a user's) would miss.
func lookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, nil
		}
	}
	return "", err
}

// lighttpdConf writes a lighttpd configuration that takes its socket from
// socket activation and serves a static page from dir. Keep-alive is off
// unless keepAlive: at graceful shutdown lighttpd closes every idle
// keep-alive connection at once, so a client that sends its next request
// on one just then gets EOF (at most one failed request per keep-alive
// client and reload, keepAliveReloads; a client that retries, as HTTP
// allows for idempotent requests, never notices).
// Without keep-alive each response says "Connection: close" and the
// keep-alive half of the load opens a new connection per request.
func lighttpdConf(t testing.TB, dir, addr string, keepAlive bool) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	root := filepath.Join(dir, "www")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "index.html"), []byte("lighttpd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "lighttpd.conf")
	maxRequests := 0
	if keepAlive {
		maxRequests = 1000 // lighttpd's default
	}
	body := fmt.Sprintf(`server.document-root = %q
server.bind = %q
server.port = %s
server.systemd-socket-activation = "enable"
index-file.names = ("index.html")
mimetype.assign = (".html" => "text/html")
server.max-keep-alive-requests = %d
`, root, host, port, maxRequests)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestWrapperLighttpdReloads: lighttpd 1.4.69 (Debian), which never sends
// READY=1, under the wrapper with -ready accepting: 30 reloads under load
// with keep-alive off, then 10 with it on (each new child reads the
// configuration again) under keep-alive load. lighttpd drains on SIGINT
// (SIGTERM would drop its connections).
func TestWrapperLighttpdReloads(t *testing.T) {
	lighttpd, err := lookPath("lighttpd")
	if err != nil {
		t.Fatalf("lighttpd is not installed (scripts/deps.sh installs it): %v", err)
	}
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	conf := lighttpdConf(t, s.Dir, s.Addr, false)
	wrapper, child := startWrapper(t, s, "-ready", "accepting", "-stop-signal", "SIGINT", "--", lighttpd, "-D", "-f", conf)
	child = reloadsUnderLoad(t, s, wrapper, child, 30)
	lighttpdConf(t, s.Dir, s.Addr, true)
	child = reload(t, s, wrapper, child) // to a child with keep-alive on
	child = keepAliveReloads(t, s, "lighttpd", wrapper, child, 10)
	stopWrapper(t, s, wrapper, child)
}

// TestWrapperGunicornReloads: gunicorn 20.1 (Debian) with two sync
// workers, 10 reloads under load (each takes about 3 s: gunicorn's own
// graceful stop) with -ready accepting: gunicorn sends
// READY=1 before its workers exist, but accepting waits until a worker
// waits in select on the socket. Then 10 reloads under keep-alive load
// (sync workers close every connection after its response).
func TestWrapperGunicornReloads(t *testing.T) {
	gunicorn, err := lookPath("gunicorn")
	if err != nil {
		t.Fatalf("gunicorn is not installed (scripts/deps.sh installs it): %v", err)
	}
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	app := "import os\n\ndef app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [('%d\\n' % os.getpid()).encode()]\n"
	if err := os.WriteFile(filepath.Join(s.Dir, "app.py"), []byte(app), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper, child := startWrapper(t, s, "-ready", "accepting", "--", gunicorn, "--chdir", s.Dir, "--workers", "2", "--graceful-timeout", "10", "app:app")
	child = reloadsUnderLoad(t, s, wrapper, child, 10)
	child = keepAliveReloads(t, s, "gunicorn", wrapper, child, 10)
	stopWrapper(t, s, wrapper, child)
}

// TestWrapperNginxReloads: nginx (Debian's nginx-light) knows no socket
// activation, but takes inherited listening sockets from its NGINX
// variable ("3;"), which a shell sets before exec. Workers wait in epoll:
// -ready accepting. SIGQUIT drains. -nonblocking: nginx leaves an
// inherited socket's O_NONBLOCK as it is, and on a blocking socket a worker
// that loses the race for a connection blocks in accept4; the old nginx
// then never stops (killed after -drain-timeout, its requests timed out). Keep-alive is off for the reason
// given at lighttpdConf: nginx too closes idle keep-alive connections at
// once when it stops gracefully. Then 10 reloads with keep-alive on
// under keep-alive load.
func TestWrapperNginxReloads(t *testing.T) {
	nginx, err := lookPath("nginx")
	if err != nil {
		t.Fatalf("nginx is not installed (scripts/deps.sh installs nginx-light): %v", err)
	}
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	conf := filepath.Join(s.Dir, "nginx.conf")
	const body = `daemon off;
master_process on;
worker_processes 2;
pid %s/nginx.pid;
error_log stderr notice;
events {}
http {
	access_log off;
	keepalive_timeout %s;
	server { listen %s; location / { return 200 "nginx\\n"; } }
}
`
	write := func(keepalive string) {
		if err := os.WriteFile(conf, fmt.Appendf(nil, body, s.Dir, keepalive, s.Addr), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("0")
	script := "NGINX='3;' exec " + nginx + " -c " + conf + " -e stderr"
	wrapper, child := startWrapper(t, s, "-name", "nginx", "-nonblocking", "-ready", "accepting", "-stop-signal", "SIGQUIT", "--", "/bin/sh", "-c", script)
	child = reloadsUnderLoad(t, s, wrapper, child, 10)
	write("75s") // nginx's default
	child = reload(t, s, wrapper, child)
	child = keepAliveReloads(t, s, "nginx", wrapper, child, 10)
	stopWrapper(t, s, wrapper, child)
}

// writeCommand makes the next child run command: the wrapper's COMMAND is
// a script that execs whatever the file says (exec keeps the pid, so
// LISTEN_PID stays right).
func writeCommand(t testing.TB, s *testbed.Service, command string) {
	t.Helper()
	tmp := filepath.Join(s.Dir, "command.new")
	if err := os.WriteFile(tmp, []byte(command+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.Dir, "command")); err != nil {
		t.Fatal(err)
	}
}

// switchableCommand returns the script writeCommand steers.
func switchableCommand(t testing.TB, s *testbed.Service) string {
	t.Helper()
	script := filepath.Join(s.Dir, "child.sh")
	body := "#!/bin/sh\nexec $(cat " + filepath.Join(s.Dir, "command") + ")\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

// requestReload is `handoff reload` in the test process.
func requestReload(s *testbed.Service) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return control.Reload(ctx, s.Socket, nil)
}

// TestWrapperRollback: under load, reloads to a child that exits at once
// and to one that starts, never accepts and never notifies (ready timeout)
// are rolled back: the reload reports why, the old child keeps serving,
// no request fails. Then a child that accepts only after 2 seconds: the
// old child is stopped only once the new one accepts.
func TestWrapperRollback(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	activated := binary(t, "./examples/activated")
	writeCommand(t, s, activated)
	wrapper, child := startWrapper(t, s, "-ready-timeout", "4s", "--", switchableCommand(t, s))
	testbed.WaitServing(t, s.Addr, child)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)

	for _, tt := range []struct{ name, command, why string }{
		{"exits at once", "false", "exited before it was ready"},
		{"never ready", "sleep 600", "was not ready within 4s"},
	} {
		writeCommand(t, s, tt.command)
		err := requestReload(s)
		if err == nil || !strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), tt.why) {
			t.Fatalf("%s: reload returned %v, want a roll-back because it %s", tt.name, err, tt.why)
		}
		st, d := wrapperStatus(t, s)
		if len(d.Children) != 1 || d.Children[0].PID != child || st.LastReload == nil || !strings.Contains(st.LastReload.Error, tt.why) {
			t.Fatalf("%s: after the roll-back: children %+v, last reload %+v; want only %d serving", tt.name, d.Children, st.LastReload, child)
		}
		t.Logf("%s: %v", tt.name, err)
	}

	writeCommand(t, s, activated+" -accept-delay 2s")
	t0 := time.Now()
	done := make(chan error, 1)
	go func() { done <- requestReload(s) }()
	// While the new child is slow to start, the old one must serve.
	for time.Since(t0) < 1500*time.Millisecond {
		if _, d := wrapperStatus(t, s); len(d.Children) == 0 || d.Children[0].PID != child || d.Children[0].Role != "serving" {
			t.Fatalf("%v into the slow reload, children %+v: want %d still serving", time.Since(t0), d.Children, child)
		}
		time.Sleep(50 * time.Millisecond) // pacing the checks, not waiting for anything
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", child)); err != nil {
		t.Fatalf("old child %d was stopped before the slow new child accepted", child)
	}
	if err := <-done; err != nil {
		t.Fatalf("slow child: reload failed: %v", err)
	}
	if took := time.Since(t0); took < 2*time.Second {
		t.Fatalf("reload to a child that accepts after 2s finished in %v", took)
	}
	next := servingChild(t, s, child)
	waitGone(t, child, 30*time.Second)
	requireNoFailures(t, stopLoad())
	stopWrapper(t, s, wrapper, next)
}

// TestWrapperChildKilled: kill -9 of the child; the wrapper restarts it,
// and connections made while no child runs wait in the accept queue and
// are served by the new child, none refused.
func TestWrapperChildKilled(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	wrapper, child := startWrapper(t, s, "--", binary(t, "./examples/activated"))
	testbed.WaitServing(t, s.Addr, child)

	s.Signal(child, syscall.SIGKILL)
	waitGone(t, child, 10*time.Second)
	loadStart := time.Now()
	res := loadgen.Run(context.Background(), loadgen.Config{Addr: s.Addr, Mode: loadgen.NewConn, Workers: 8, MaxRequests: 200, Timeout: 10 * time.Second})
	requireNoFailures(t, res)
	next := servingChild(t, s, child)
	_, d := wrapperStatus(t, s)
	if d.Restarts != 1 || !d.Children[0].Started.After(loadStart) {
		t.Fatalf("restarts %d, new child started at %v, load at %v: want the load to start while no child ran", d.Restarts, d.Children[0].Started, loadStart)
	}
	if res.PIDs[next] != res.OK {
		t.Errorf("responses by pid %v, want all %d from the restarted child %d", res.PIDs, res.OK, next)
	}
	t.Logf("requests sent while the child was down waited %v at most; all %d served by the restarted child", res.Latency.Max(), res.OK)
	stopWrapper(t, s, wrapper, next)
}

// TestWrapperKilled: kill -9 of the wrapper takes its child with it
// (parent-death signal): no orphan keeps the sockets.
func TestWrapperKilled(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	// Reload once first: the child then is one the wrapper forked long
	// after it started, from the same thread.
	wrapper, child := startWrapper(t, s, "--", binary(t, "./examples/activated"))
	if err := requestReload(s); err != nil {
		t.Fatal(err)
	}
	child = servingChild(t, s, child)
	s.Signal(wrapper, syscall.SIGKILL)
	s.WaitExit(wrapper, 10*time.Second)
	// Dead is what counts: the orphan's zombie is reaped by whoever
	// inherits it (this process, a subreaper, reaps those it watches).
	deadline := time.Now().Add(10 * time.Second)
	for exists(child, true) {
		if time.Now().After(deadline) {
			start, state, _ := testbed.ProcStat(child)
			known, _ := startTimes.Load(child)
			t.Fatalf("child %d still runs 10s after its wrapper was killed: state %q, started at %s (learned %v)", child, state, start, known)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWrapperTakeover: a second wrapper on the same control socket takes
// the sockets over under load; once its child is ready, the first wrapper
// stops its child and exits 0. No request fails.
func TestWrapperTakeover(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	activated := binary(t, "./examples/activated")
	first, child := startWrapper(t, s, "--", activated)
	testbed.WaitServing(t, s.Addr, child)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)
	for range 3 {
		next, nextChild := startWrapper(t, s, "--", activated)
		if ws := s.WaitExit(first, 60*time.Second); ws.ExitStatus() != 0 {
			t.Errorf("replaced wrapper %d exited with %v", first, ws)
		}
		waitGone(t, child, 10*time.Second)
		if nextChild == child {
			t.Fatalf("the new wrapper reports the old child %d", child)
		}
		first, child = next, servingChild(t, s, 0)
	}
	res := stopLoad()
	requireNoFailures(t, res)
	st, _ := wrapperStatus(t, s)
	if st.Generation != 4 {
		t.Errorf("generation %d after 3 takeovers, want 4", st.Generation)
	}
	stopWrapper(t, s, first, child)
}

// listenerFlags reads the file status flags of the TCP socket listening
// at addr, as process pid holds it (the flags belong to the open file
// description, which every process holding the socket shares).
func listenerFlags(t testing.TB, pid int, addr string) int {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	inode := ""
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", mustAtoi(t, port))) {
			inode = f[9]
		}
	}
	if inode == "" {
		t.Fatalf("no listening socket at %s in /proc/net/tcp", addr)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); target != "socket:["+inode+"]" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int(flags)
			}
		}
	}
	t.Fatalf("process %d holds no descriptor of socket %s", pid, inode)
	return 0
}

func mustAtoi(t testing.TB, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestWrapperKeepsNonblock: with -socket-mode shared the listening
// socket's O_NONBLOCK flag (shared by every process that holds it) is the
// same before and after 10 reloads done with `handoff reload`: the
// wrapper never switches it.
func TestWrapperKeepsNonblock(t *testing.T) {
	checkNoChildren(t)
	bin := binary(t, "./cmd/handoff")
	s := newService(t, bin)
	wrapper, child := startWrapper(t, s, "-socket-mode", "shared", "--", binary(t, "./examples/activated"))
	before := listenerFlags(t, child, s.Addr) & syscall.O_NONBLOCK
	for range 10 {
		out, err := exec.Command(bin, "reload", "-socket", s.Socket).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "reloaded") {
			t.Fatalf("handoff reload: %v\n%s", err, out)
		}
		child = servingChild(t, s, child)
	}
	out, err := exec.Command(bin, "status", "-socket", s.Socket).CombinedOutput()
	for _, want := range []string{fmt.Sprintf("wrapper:    pid %d (handoff run), generation 1, serving", wrapper), fmt.Sprintf("child:      serving (pid %d, child 11 ", child), "\n  runs:     ", "last reload:", ", ok",
		"socket mode: web=tcp://" + s.Addr + " at " + s.Addr + ": shared (-socket-mode shared)"} {
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("handoff status: %v; want %q in:\n%s", err, want, out)
		}
	}
	if after := listenerFlags(t, child, s.Addr) & syscall.O_NONBLOCK; after != before || listenerFlags(t, wrapper, s.Addr)&syscall.O_NONBLOCK != before {
		t.Errorf("O_NONBLOCK on the listening socket: %#o before 10 reloads, %#o after", before, after)
	}
	t.Logf("O_NONBLOCK on the listening socket: %#o before and after 10 reloads", before)
	stopWrapper(t, s, wrapper, child)
}

// fdFlags reads the file status flags of pid's descriptor fd.
func fdFlags(t testing.TB, pid, fd int) int {
	t.Helper()
	info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(flags)
		}
	}
	t.Fatalf("no flags in /proc/%d/fdinfo/%d", pid, fd)
	return 0
}

// TestWrapperSocketBlocking: with a socket per generation each child
// finds its fd 3 blocking, as systemd passes sockets (NonBlocking=false),
// at its start and after 3 reloads; with -nonblocking, non-blocking. The
// child is a shell that only holds the socket (a Go child would set
// O_NONBLOCK itself), ready after a delay.
func TestWrapperSocketBlocking(t *testing.T) {
	for _, nonblocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("nonblocking=%v", nonblocking), func(t *testing.T) {
			checkNoChildren(t)
			bin := binary(t, "./cmd/handoff")
			s := newService(t, bin)
			args := []string{"-ready", "200ms", "-drain-timeout", "5s"}
			want := 0
			if nonblocking {
				args, want = append(args, "-nonblocking"), syscall.O_NONBLOCK
			}
			wrapper, child := startWrapper(t, s, append(args, "--", "/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")...)
			for i := range 4 {
				if got := fdFlags(t, child, 3) & syscall.O_NONBLOCK; got != want {
					t.Fatalf("child %d (after %d reloads): fd 3 O_NONBLOCK %#o, want %#o", child, i, got, want)
				}
				if i == 3 {
					break
				}
				out, err := exec.Command(bin, "reload", "-socket", s.Socket).CombinedOutput()
				if err != nil {
					t.Fatalf("handoff reload: %v\n%s", err, out)
				}
				child = servingChild(t, s, child)
			}
			stopWrapper(t, s, wrapper, child)
		})
	}
}

// TestWrapperInheritsListenFDs: a wrapper started with socket activation
// (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, NOTIFY_SOCKET) serves the
// sockets it was given, matched by name, and reloads its own child on
// them without a failed request. The activator is an outer wrapper, which
// speaks that protocol as systemd does; the inner one tells it READY=1.
func TestWrapperInheritsListenFDs(t *testing.T) {
	checkNoChildren(t)
	bin := binary(t, "./cmd/handoff")
	s := newService(t, bin)
	inner := filepath.Join(s.Dir, "inner.sock")
	from := s.LogSize()
	_, innerWrapper := startWrapper(t, s, "-ready", "notify", "--",
		bin, "run", "-name", "inner", "-socket", inner, "-listen", "web=tcp://"+s.Addr, "--", binary(t, "./examples/activated"))
	s.WaitLog(from, `msg="inherited socket from systemd" service=inner`, 30*time.Second)
	innerStatus := func() wrapperDetail {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := control.Status(ctx, inner)
		if err != nil {
			t.Fatal(err)
		}
		var d wrapperDetail
		if err := json.Unmarshal(st.Detail, &d); err != nil || st.PID != innerWrapper || len(d.Children) != 1 {
			t.Fatalf("inner wrapper status: pid %d, %+v, %v; want pid %d with one child", st.PID, d, err, innerWrapper)
		}
		return d
	}
	child := innerStatus().Children[0].PID
	testbed.WaitServing(t, s.Addr, child)
	stopLoad := testbed.RunLoad(s.Addr, loadgen.Mixed, 8)
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := control.Reload(ctx, inner, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		next := innerStatus().Children[0].PID
		if next == child {
			t.Fatalf("inner reload kept child %d", child)
		}
		learn(next)
		waitGone(t, child, 30*time.Second)
		child = next
	}
	requireNoFailures(t, stopLoad())
	stopWrapper(t, s, s.PID(), innerWrapper)
	waitGone(t, child, 10*time.Second)
}

// TestWrapperSignals: signals the wrapper does not handle itself reach
// the child, and once stopped the wrapper exits with the child's status.
// The child is a shell that never accepts, so it runs with the last-resort
// -ready delay.
func TestWrapperSignals(t *testing.T) {
	checkNoChildren(t)
	s := newService(t, binary(t, "./cmd/handoff"))
	got := filepath.Join(s.Dir, "signals")
	script := `trap 'echo USR1 >> ` + got + `' USR1; trap 'echo WINCH >> ` + got + `' WINCH; trap 'exit 3' TERM; while :; do sleep 0.05; done`
	wrapper, child := startWrapper(t, s, "-ready", "300ms", "--", "/bin/sh", "-c", script)
	if _, d := wrapperStatus(t, s); time.Since(d.Children[0].Started) < 300*time.Millisecond {
		t.Fatalf("the wrapper was ready %v after starting its child, before the 300ms delay", time.Since(d.Children[0].Started))
	}
	s.Signal(wrapper, syscall.SIGUSR1)
	s.Signal(wrapper, syscall.SIGWINCH)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(got)
		if strings.Contains(string(b), "USR1") && strings.Contains(string(b), "WINCH") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child got %q, want USR1 and WINCH", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Signal(wrapper, syscall.SIGTERM)
	if ws := s.WaitExit(wrapper, 30*time.Second); ws.ExitStatus() != 3 {
		t.Errorf("wrapper exited with %v, want 3, its child's exit code", ws)
	}
	waitGone(t, child, 10*time.Second)
}

// TestWrapperBadInput: mistakes get one clear line and exit code 2
// (usage) or 1 (runtime).
func TestWrapperBadInput(t *testing.T) {
	bin := binary(t, "./cmd/handoff")
	busy := newService(t, bin) // a port in use: the test listens on it
	ln, err := net.Listen("tcp", busy.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := busy.Dir
	shared := testbed.FreePort(t)
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"run", "-bogus", "--", "true"}, 2, "flag provided but not defined: -bogus"},
		{"bad URL", []string{"run", "-listen", "tcp://nohost", "--", "true"}, 2, "want tcp://HOST:PORT"},
		{"unknown scheme", []string{"run", "-listen", "sctp://127.0.0.1:1", "--", "true"}, 2, "unknown scheme"},
		{"probe on the shared socket", []string{"run", "-listen", "tcp://" + shared, "-ready", "http://" + shared + "/", "--", "true"}, 2, "probes the shared socket"},
		{"no command", []string{"run", "-listen", "tcp://" + shared}, 2, "no COMMAND"},
		{"port in use", []string{"run", "-socket", dir + "/a.sock", "-listen", "tcp://" + busy.Addr, "--", "true"}, 1, "address already in use"},
		{"command not found", []string{"run", "-socket", dir + "/b.sock", "-listen", "tcp://" + shared, "--", "no-such-command-here"}, 1, `"no-such-command-here": executable file not found`},
		{"reload, no wrapper", []string{"reload", "-socket", dir + "/none.sock"}, 1, "nothing serves the control socket " + dir + "/none.sock: there is no such file (is the service running, and with this -socket or -name?): no such file or directory"},
		{"status, no socket", []string{"status"}, 2, "give -socket PATH or -name NAME"},
		{"unknown command", []string{"restart"}, 2, `unknown command "restart"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			// The error is the last line; before it, a wrapper that got as
			// far as starting may have logged.
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			last := lines[len(lines)-1]
			if code != tt.code || !strings.HasPrefix(last, "handoff") || !strings.Contains(last, tt.want) || (code == 2 && len(lines) != 1) {
				t.Errorf("handoff %s: exit %d, stderr %q; want exit %d and the error on one line with %q", strings.Join(tt.args, " "), code, stderr.String(), tt.code, tt.want)
			}
		})
	}
	for _, args := range [][]string{{"help"}, {"run", "-h"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil || !strings.Contains(string(out), "Example:") || !strings.Contains(string(out), "accepting") {
			t.Errorf("handoff %s: %v; want help with an example and the ready modes, got:\n%s", strings.Join(args, " "), err, out)
		}
	}
}
