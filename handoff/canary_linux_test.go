package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/hooks"
)

// The canary window, with real successors: the test process is the old
// generation, its successors the test binary in a helper role.

func init() {
	// ready-then-die: take over, serve, say ready, and after envWait
	// exit with status 2 without a word, as a build that crashes soon
	// after it started serving does.
	registerHelper("ready-then-die", func() error {
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		ln, err := u.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "successor") }))
		if err := u.Ready(); err != nil {
			return err
		}
		wait, _ := time.ParseDuration(os.Getenv(envWait))
		time.Sleep(wait) // the crash comes this long after ready: the test's subject
		if os.Getenv(envDieBy) == "SIGKILL" {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
		os.Exit(2)
		return nil
	})
	// ready-then-stop: take over, say ready, and on SIGTERM stop as a
	// program should: Stop, drain, Close.
	registerHelper("ready-then-stop", func() error {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		u, err := New(context.Background(), helperConfig())
		if err != nil {
			return err
		}
		defer u.Close()
		ln, err := u.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "successor") })}
		go srv.Serve(ln)
		if err := u.Ready(); err != nil {
			return err
		}
		<-stop
		u.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(ctx)
	})
}

// canaryOld is the old generation: an Upgrader with a canary window,
// serving "old" over HTTP on a loopback port its successors take over.
// envDieBy set to SIGKILL makes ready-then-die kill itself so, instead of
// exiting with status 2.
const envDieBy = "HANDOFF_TEST_DIE_BY"

// TestCanaryRollbackSaysHow: the reason of a rollback names how the
// successor ended as an operator would: "killed by SIGKILL", not Go's
// "signal: killed".
func TestCanaryRollbackSaysHow(t *testing.T) {
	checkLeaks(t)
	t.Setenv(envDieBy, "SIGKILL")
	old, _ := canaryOld(t, 10*time.Second, "ready-then-die", "0s")
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	waitFor(t, "the rollback", func() bool { r := old.Status().LastReload; return r != nil && r.RolledBack })
	if r := old.Status().LastReload; !strings.Contains(r.Error, "ended (killed by SIGKILL)") {
		t.Fatalf("rollback reason %q; want it to say the successor was killed by SIGKILL", r.Error)
	}
}

func canaryOld(t *testing.T, window time.Duration, role, wait string) (*Upgrader, string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.CanaryWindow = window
	cfg.PIDFile = cfg.Socket + ".pid"
	t.Setenv(envHelper, role)
	t.Setenv(envSocket, cfg.Socket)
	t.Setenv(envPID, cfg.PIDFile)
	t.Setenv(envAddr, "127.0.0.1:0")
	t.Setenv(envWait, wait)
	old := newUpgrader(t, cfg)
	ln, err := old.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "old") })}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		recvWithin(t, served, "the old server's Serve to return")
	})
	if err := old.Ready(); err != nil {
		t.Fatal(err)
	}
	return old, ln.Addr().String()
}

// load sends requests on new connections, one after another from each of
// four clients, until stop is closed, and returns what answered and what
// failed. The clients never retry.
func load(addr string, stop <-chan struct{}) (answered map[string]int, failed []string) {
	answered = map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, MaxIdleConnsPerHost: -1}, Timeout: 10 * time.Second}
			for n := 0; n < 100000; n++ { // bounded; stop ends it long before
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + addr + "/")
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				if err != nil {
					failed = append(failed, err.Error())
				} else {
					answered[string(body)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return answered, failed
}

// TestCanaryRollback: a successor that exits with status 2 soon after it
// said ready leaves the old process serving again, on the same sockets,
// with no request failed; Status says why, and Exit was never closed.
func TestCanaryRollback(t *testing.T) {
	for _, after := range []string{"0s", "200ms", "1s"} {
		t.Run("dies "+after+" after ready", func(t *testing.T) {
			old, addr := canaryOld(t, 10*time.Second, "ready-then-die", after)
			stop := make(chan struct{})
			results := make(chan map[string]int, 1)
			failures := make(chan []string, 1)
			go func() {
				answered, failed := load(addr, stop)
				results <- answered
				failures <- failed
			}()
			if err := old.Upgrade(context.Background()); err != nil {
				close(stop)
				t.Fatalf("Upgrade: %v", err)
			}
			waitFor(t, "the rollback", func() bool { return old.Status().State == "serving" })
			// The old process serves again: requests after the rollback
			// reach it.
			waitFor(t, "the old process answering again", func() bool {
				resp, err := http.Get("http://" + addr + "/")
				if err != nil {
					return false
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return string(b) == "old"
			})
			close(stop)
			answered := recvWithin(t, results, "the load to stop")
			failed := recvWithin(t, failures, "the load's failures")
			// Nothing is refused and nothing queued is lost. What the
			// successor had accepted and not answered dies with it: at
			// most one request per client, each in flight at its crash.
			// The kernel closes those connections with a FIN or a reset;
			// net/http reports a FIN that its read loop saw before the
			// request was handed to it as "server closed idle
			// connection", a FIN after as EOF.
			for _, f := range failed {
				cut := strings.Contains(f, "reset") || strings.Contains(f, "EOF") || strings.Contains(f, "server closed idle connection")
				if strings.Contains(f, "refused") || !cut {
					t.Errorf("a request failed other than by the successor's crash: %s", f)
				}
			}
			if len(failed) > 4 {
				t.Fatalf("%d requests failed, more than the 4 the crashed successor can have held (answered: %v): %q", len(failed), answered, failed[:5])
			}
			t.Logf("answered: %v; cut by the crash: %d", answered, len(failed))
			select {
			case <-old.Exit():
				t.Fatal("Exit was closed, though the successor never proved itself")
			default:
			}
			st := old.Status()
			if r := st.LastReload; r == nil || !r.RolledBack || !strings.Contains(r.Error, "exit status 2") || !strings.Contains(r.Error, "rolled back") {
				t.Fatalf("Status.LastReload = %+v; want a rollback saying exit status 2", r)
			}
			waitFor(t, "the pid file to name this process again", func() bool {
				b, err := os.ReadFile(old.cfg.PIDFile)
				return err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(os.Getpid())
			})
			// A later upgrade can be tried at once, through the control
			// socket the old process serves again.
			if _, err := askStatus(context.Background(), old.cfg.Socket); err != nil {
				t.Fatalf("status request after the rollback: %v", err)
			}
			if err := old.Upgrade(context.Background()); err != nil {
				t.Fatalf("second Upgrade: %v", err)
			}
			waitFor(t, "the second rollback", func() bool { return old.Status().State == "serving" })
			waitFor(t, "the successors to be reaped", func() bool { return len(children(t)) == 0 })
		})
	}
}

// TestCanaryWindowPasses: a successor that lasts the window is proven:
// only then is Exit closed, and the old process's listener closes.
func TestCanaryWindowPasses(t *testing.T) {
	const window = 400 * time.Millisecond
	old, _ := canaryOld(t, window, "ready-then-stop", "0s")
	t0 := time.Now()
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if st := old.Status().State; st != "canary" {
		t.Fatalf("state after Upgrade = %q, want canary", st)
	}
	select {
	case <-old.Exit():
		t.Fatal("Exit closed before the window passed")
	default:
	}
	recvWithin(t, old.Exit(), "Exit, once the window passed")
	if took := time.Since(t0); took < window {
		t.Fatalf("Exit closed after %v, before the %v window", took, window)
	}
	if st := old.Status().State; st != "handed-over" {
		t.Fatalf("state after the window = %q, want handed-over", st)
	}
	stopSuccessors(t)
}

// TestCanaryReleasedByStop: a successor that stops (Stop, as on SIGTERM)
// within the window releases the old process, which does not take the
// service back: it hands over and exits, as the unit stops.
func TestCanaryReleasedByStop(t *testing.T) {
	old, _ := canaryOld(t, time.Minute, "ready-then-stop", "0s")
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	stopSuccessors(t)
	recvWithin(t, old.Exit(), "Exit, once the stopping successor released this process")
	if r := old.Status().LastReload; r == nil || r.RolledBack {
		t.Fatalf("LastReload = %+v; want no rollback", r)
	}
}

// TestCanaryOff: with a negative window Exit is closed when Upgrade
// returns, as before.
func TestCanaryOff(t *testing.T) {
	old, _ := canaryOld(t, -1, "ready-then-stop", "0s")
	if err := old.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	select {
	case <-old.Exit():
	default:
		t.Fatal("Exit not closed when Upgrade returned, with the window off")
	}
	stopSuccessors(t)
}

// stopSuccessors sends SIGTERM to this process's children and waits
// until they are gone.
func stopSuccessors(t *testing.T) {
	t.Helper()
	for _, pid := range children(t) {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	waitFor(t, "the successors to exit", func() bool {
		for _, pid := range children(t) {
			var st syscall.WaitStatus
			syscall.Wait4(pid, &st, syscall.WNOHANG, nil)
		}
		return len(children(t)) == 0
	})
}

// TestPausedListener: while paused a listener takes nothing from the
// kernel's queue, yet yields the connections handed over to it, and
// after resume it accepts what waited in the kernel's queue.
func TestPausedListener(t *testing.T) {
	checkLeaks(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newListener(tcp, "test")
	defer l.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	l.pause()
	waiting, err := net.Dial("tcp", tcp.Addr().String()) // completes in the kernel's queue
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	handed, peer := net.Pipe()
	defer peer.Close()
	if !l.inject(handed) {
		t.Fatal("inject refused on a paused listener")
	}
	if c := recvWithin(t, accepted, "the handed-over connection, while paused"); c != handed {
		t.Fatalf("Accept returned %v while paused, want the handed-over connection", c.RemoteAddr())
	}
	select {
	case c := <-accepted:
		t.Fatalf("Accept took %v from the kernel while paused", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond): // a negative: nothing may come
	}
	l.resume()
	c := recvWithin(t, accepted, "the queued kernel connection, after resume")
	if c.RemoteAddr().String() != waiting.LocalAddr().String() {
		t.Fatalf("accepted %v, want %v", c.RemoteAddr(), waiting.LocalAddr())
	}
	c.Close()
	handed.Close()
	l.Close()
	for range accepted {
	}
}

// TestPauseTakesNothingAfter: pause returns only once an Accept that
// waited in the kernel has come back, so that a connection made after
// pause returns waits for the successor (or a rollback) and is never
// accepted here: Upgrade returns after the pause, and whoever connects
// then must reach the successor. Tried many times, each with a
// connection racing the pause.
func TestPauseTakesNothingAfter(t *testing.T) {
	checkLeaks(t)
	for i := range 300 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := newListener(tcp, "test")
		accepted := make(chan net.Conn, 2)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- c
			}
		}()
		racing, err := net.Dial("tcp", tcp.Addr().String()) // may be accepted: it races the pause
		if err != nil {
			t.Fatal(err)
		}
		l.pause()
		after, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		for c := range accepted {
			if c.RemoteAddr().String() == after.LocalAddr().String() {
				t.Fatalf("try %d: Accept took a connection made after pause returned", i)
			}
			c.Close()
		}
		racing.Close()
		after.Close()
	}
}

// TestPausedListenerClosedTakesNothing: when a canary window ends for
// good, the paused listener is detached before this process's copy of
// the socket closes; an Accept that waited while paused must end then,
// and not take a connection from the kernel's queue, which is the
// successor's (a program that drains would close it).
func TestPausedListenerClosedTakesNothing(t *testing.T) {
	checkLeaks(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	l := newListener(tcp, "test")
	l.pause()
	type accepted struct {
		c   net.Conn
		err error
	}
	got := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		got <- accepted{c, err}
	}()
	waiting, err := net.Dial("tcp", tcp.Addr().String()) // completes in the kernel's queue
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	l.detach() // as Close does first
	a := recvWithin(t, got, "Accept to end after detach")
	if a.err == nil {
		a.c.Close()
		t.Fatalf("Accept took %v from the kernel's queue after detach", a.c.RemoteAddr())
	}
	if !errors.Is(a.err, net.ErrClosed) {
		t.Fatalf("Accept after detach: %v, want net.ErrClosed", a.err)
	}
}

// TestHandedOverIdleOutlivesHeaderTimeout: a keep-alive connection handed
// over while idle is served as idle, not as a new connection: it outlives
// ReadHeaderTimeout (which a predecessor that stands by through its
// canary window makes likely), and its next request is answered.
func TestHandedOverIdleOutlivesHeaderTimeout(t *testing.T) {
	u, ln := readyUpgrader(t, testConfig(t))
	srv := &HTTPServer{Upgrader: u, Server: &http.Server{ReadHeaderTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Server.Close()
		recvWithin(t, served, "Serve to return")
	})

	// A connection from elsewhere, handed to the listener as a
	// predecessor's would be.
	client, handed := connFromElsewhere(t)
	if !ln.(*listener).inject(handed) {
		t.Fatal("inject refused")
	}
	time.Sleep(600 * time.Millisecond) // idle past ReadHeaderTimeout: the test's subject
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatalf("request on the handed-over connection after %v idle: %v", 600*time.Millisecond, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestReloadWaitsForCanary: a reload request that waits for the canary
// window (`handoff reload -wait-canary`) is answered once the window
// ends: with the rollback's reason if the successor died within it, with
// success if it lasted it, and before Exit lets the program go.
func TestReloadWaitsForCanary(t *testing.T) {
	ask := func(t *testing.T, socket string) (progress []string, took time.Duration, err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t0 := time.Now()
		_, err = roundTrip(ctx, socket, hooks.ReloadProvenRequest, func(line string) { progress = append(progress, line) })
		return progress, time.Since(t0), err
	}
	t.Run("rolled back", func(t *testing.T) {
		old, _ := canaryOld(t, 10*time.Second, "ready-then-die", "300ms")
		progress, took, err := ask(t, old.cfg.Socket)
		var refused *RefusedError
		if !errors.As(err, &refused) || !strings.Contains(refused.Reason, "exit status 2") || !strings.Contains(refused.Reason, "rolled back") {
			t.Fatalf("reload = %v (progress %q); want a refusal saying the successor exited with status 2 and was rolled back", err, progress)
		}
		if took < 300*time.Millisecond {
			t.Fatalf("answered after %v, before the successor died (300ms after ready)", took)
		}
		if !slices.ContainsFunc(progress, func(l string) bool { return strings.Contains(l, "waiting out its canary window") }) {
			t.Errorf("progress %q does not say it waits for the window", progress)
		}
		if st := old.Status().State; st != "serving" {
			t.Fatalf("state after the rollback = %q, want serving", st)
		}
		t.Logf("answered after %v: %s", took, refused.Reason)
	})
	t.Run("proven", func(t *testing.T) {
		const window = 400 * time.Millisecond
		old, _ := canaryOld(t, window, "ready-then-stop", "0s")
		progress, took, err := ask(t, old.cfg.Socket)
		if err != nil {
			t.Fatalf("reload = %v (progress %q); want success once the window passed", err, progress)
		}
		if took < window {
			t.Fatalf("answered after %v, before the %v window passed", took, window)
		}
		if !slices.ContainsFunc(progress, func(l string) bool { return strings.Contains(l, "has proven itself") }) {
			t.Errorf("progress %q does not say the successor proved itself", progress)
		}
		recvWithin(t, old.Exit(), "Exit, once the window passed")
		stopSuccessors(t)
	})
}
