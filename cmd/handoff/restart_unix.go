//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/exitstatus"
	"github.com/handoffd/handoff/internal/hooks"
	"golang.org/x/sys/unix"
)

// The restarting wrapper is `handoff run` where the handoff cannot be
// had (macOS, the BSDs): it holds the sockets for its whole life, as on
// Linux, but reloads by restarting its child: the stop signal to the old
// child, a wait bounded by -drain-timeout (then SIGKILL), and a new child
// on the same sockets. Connections that come meanwhile wait in the
// sockets' accept queues, which never close: none is refused, they are
// only late. It builds on every unix, Linux too, where the tests run it.

// Restart backoff for a child that dies on its own.
const (
	restartBackoffMin = 100 * time.Millisecond
	restartBackoffMax = 30 * time.Second
	// stableAfter: a child that ran this long resets the backoff.
	stableAfter = 10 * time.Second
)

// reloadRequest asks a wrapper's loop to reload.
type reloadRequest struct {
	ctx      context.Context
	progress func(string)
	proven   bool       // answer once the new child has lasted its canary window
	reply    chan error // room for the one answer, which the loop always gives
}

// askReload hands a reload to a wrapper's loop (reloads, which closes
// quit when it returns) and waits for its answer: the wrappers' reload
// (hooks.Wrapper.Reload).
func askReload(ctx context.Context, reloads chan<- reloadRequest, quit <-chan struct{}, progress func(string), proven bool) error {
	req := reloadRequest{ctx: ctx, progress: progress, proven: proven, reply: make(chan error, 1)}
	select {
	case reloads <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-quit:
		return errors.New("the wrapper is stopping")
	}
	return <-req.reply // the loop answers every request it took
}

// restartReason is what the restarting wrapper logs at each reload.
const restartReason = "reloading by restart: the handoff needs Linux"

// restartConfig is `handoff run`'s command line for the restarting
// wrapper, checked (parseRestartRun).
type restartConfig struct {
	listen       []listenSpec
	socket       string
	name         string
	pidfile      string
	readyDelay   time.Duration // -ready DURATION; 0: ready once started
	drainTimeout time.Duration
	stopSignal   syscall.Signal
	nonblocking  bool
	path         string   // COMMAND, found in PATH
	argv         []string // COMMAND and its ARGS
}

// restartWrapper runs the restarting wrapper, its signals from sigs,
// until a stop signal, and returns its exit code: the child's, as on
// Linux.
func restartWrapper(cfg restartConfig, sigs <-chan os.Signal, stderr io.Writer) (int, error) {
	self, err := os.Executable() // the shim: this binary
	if err != nil {
		return 0, err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", cfg.name)
	r := &restarter{cfg: cfg, log: log, self: self, reloads: make(chan reloadRequest), quit: make(chan struct{})}
	upg, err := handoff.New(context.Background(), handoff.Config{Name: cfg.name, Socket: cfg.socket, PIDFile: cfg.pidfile, Logger: log})
	if err != nil {
		return 0, err
	}
	defer upg.Close()
	wrapped := hooks.Wrap(upg, hooks.Wrapper{Reload: r.requestReload, StatusDetail: r.detail})
	if err := r.open(upg); err != nil {
		return 0, err
	}
	defer ctl.CloseFDs(r.fds)
	r.env = append(ctl.EnvironWithout(os.Environ(), wrapperOnlyEnv...),
		"LISTEN_FDS="+strconv.Itoa(len(r.fds)), "LISTEN_FDNAMES="+listenFDNames(cfg.listen))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reloads sync.WaitGroup
	defer reloads.Wait() // the signal goroutine and the reloads it started: run has returned, which ends them
	stopped := make(chan os.Signal, 1)
	reloads.Add(1)
	go func() { // signals: the loop below owns the children
		defer reloads.Done()
		for {
			select {
			case <-r.quit:
				return
			case sig := <-sigs:
				switch sig {
				case syscall.SIGHUP:
					reloadOnHUP(ctx, log, &reloads, wrapped.Reload)
				case syscall.SIGTERM, syscall.SIGINT:
					log.Info("stopping", "signal", exitstatus.Signal(sig))
					stopped <- sig
					cancel()
					return
				default:
					r.forward(sig)
				}
			}
		}
	}()
	err = r.run(ctx, upg)
	cancel() // ends a reload that waits for the first child to be ready
	if err != nil {
		return 0, err
	}
	if c := r.last; c != nil && len(stopped) > 0 {
		return exitCodeOf(c.status, cfg.stopSignal), nil
	}
	return exitOK, nil
}

// restarter owns the restarting wrapper's sockets and children. Its run
// loop is the only goroutine that starts or stops a child; reloads reach
// it over reloads.
type restarter struct {
	cfg  restartConfig
	log  *slog.Logger
	self string   // the executable the shim runs from
	env  []string // the children's
	fds  []int    // the sockets, close-on-exec duplicates: fds 3... of every child

	reloads chan reloadRequest
	quit    chan struct{} // closed when run returns

	mu       sync.Mutex
	current  *restartChild // running; nil between a crash and its restart
	last     *restartChild // the latest that ended
	number   int
	restarts int
}

// restartChild is one running COMMAND; its wait goroutine reaps it and
// closes done.
type restartChild struct {
	pid     int
	number  int
	started time.Time
	proc    *os.Process
	done    chan struct{}
	status  syscall.WaitStatus // valid once done is closed
}

// open binds every -listen through upg (which owns the sockets) and
// keeps a duplicate of each for the children.
func (r *restarter) open(upg *handoff.Upgrader) error {
	for _, spec := range r.cfg.listen {
		var sc syscall.Conn
		if spec.stream() {
			ln, err := upg.ListenNamed(spec.name, spec.network, spec.address)
			if err != nil {
				ctl.CloseFDs(r.fds)
				return err
			}
			sc = ln.(syscall.Conn)
			r.log.Info("listening", "socket", spec.String(), "address", ln.Addr().String())
		} else {
			pc, err := upg.ListenPacketNamed(spec.name, spec.network, spec.address)
			if err != nil {
				ctl.CloseFDs(r.fds)
				return err
			}
			sc = pc.(syscall.Conn)
			r.log.Info("listening", "socket", spec.String(), "address", pc.LocalAddr().String())
		}
		fd, err := ctl.DupFD(sc)
		if err != nil {
			ctl.CloseFDs(r.fds)
			return fmt.Errorf("%s: %w", spec, err)
		}
		r.fds = append(r.fds, fd)
	}
	return nil
}

// requestReload is the Upgrader's reload (hooks.Wrapper.Reload). A
// restart has no canary window: proven changes nothing.
func (r *restarter) requestReload(ctx context.Context, progress func(string), proven bool) error {
	return askReload(ctx, r.reloads, r.quit, progress, proven)
}

// run starts the first child, says ready once it is, then restarts a
// child that dies (with backoff) and serves reloads until ctx ends, when
// it stops the child. Every child is reaped before it returns.
func (r *restarter) run(ctx context.Context, upg *handoff.Upgrader) error {
	defer close(r.quit)
	c, err := r.start()
	if err != nil {
		return err
	}
	if err := r.waitReady(ctx, c); err != nil {
		r.stopChild(c, "not ready")
		return err
	}
	if err := upg.Ready(); err != nil {
		r.stopChild(c, "the wrapper could not say ready")
		return err
	}
	r.log.Info("serving", "child", c.pid)
	backoff := restartBackoffMin
	var restart <-chan time.Time
	for {
		var exited <-chan struct{}
		if cur := r.currentChild(); cur != nil {
			exited = cur.done
		}
		select {
		case <-ctx.Done():
			upg.Stop()
			if cur := r.currentChild(); cur != nil {
				r.stopChild(cur, "stopping")
			}
			return nil
		case <-exited:
			cur := r.currentChild()
			r.ended(cur)
			if time.Since(cur.started) >= stableAfter {
				backoff = restartBackoffMin
			}
			r.log.Error("child exited on its own; restarting", "child", cur.pid, "status", exitstatus.Wait(cur.status), "after", backoff)
			restart = time.After(backoff)
			backoff = min(2*backoff, restartBackoffMax)
		case <-restart:
			restart = nil
			if r.currentChild() != nil {
				break // a reload started one meanwhile
			}
			if _, err := r.start(); err != nil {
				r.log.Error("cannot restart the child", "err", err, "after", backoff)
				restart = time.After(backoff)
				backoff = min(2*backoff, restartBackoffMax)
				break
			}
			r.mu.Lock()
			r.restarts++
			r.mu.Unlock()
		case req := <-r.reloads:
			req.reply <- r.restart(ctx, req.ctx, req.progress)
		}
	}
}

// restart stops the running child, if any, and starts a new one on the
// same sockets.
func (r *restarter) restart(ctx, reqCtx context.Context, progress func(string)) error {
	old := r.currentChild()
	r.log.Warn(restartReason)
	progress(restartReason)
	if old != nil {
		progress(fmt.Sprintf("stopping pid %d with %s (up to %v)", old.pid, unix.SignalName(r.cfg.stopSignal), r.cfg.drainTimeout))
		r.stopChild(old, "reload")
	}
	c, err := r.start()
	if err != nil {
		return err // the crash restart's backoff takes over: nothing runs
	}
	progress(fmt.Sprintf("started child pid %d", c.pid))
	rctx, cancel := context.WithCancel(reqCtx)
	defer context.AfterFunc(ctx, cancel)()
	if err := r.waitReady(rctx, c); err != nil {
		return err
	}
	progress(fmt.Sprintf("child pid %d serves", c.pid))
	return nil
}

// start starts the next child through the shim, with the sockets as fds
// 3..., made blocking (or, with -nonblocking, not) first: a child may
// have changed that, and the next one gets the same sockets.
func (r *restarter) start() (*restartChild, error) {
	for _, fd := range r.fds {
		if err := unix.SetNonblock(fd, r.cfg.nonblocking); err != nil {
			return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
		}
	}
	null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("open "+os.DevNull, err)
	}
	defer unix.Close(null)
	files := []uintptr{uintptr(null), 1, 2}
	for _, fd := range r.fds {
		files = append(files, uintptr(fd))
	}
	argv := append([]string{"handoff", shimCommand, r.cfg.path}, r.cfg.argv...)
	pid, err := syscall.ForkExec(r.self, argv, &syscall.ProcAttr{
		Env: r.env, Files: files,
		// Its own process group: a terminal's ^C reaches only the
		// wrapper, which stops the child in order.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", r.cfg.path, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.number++
	c := &restartChild{pid: pid, number: r.number, started: time.Now(), proc: proc, done: make(chan struct{})}
	r.current = c
	r.mu.Unlock()
	go func() {
		defer close(c.done)
		if st, err := proc.Wait(); err == nil {
			c.status = st.Sys().(syscall.WaitStatus)
		}
	}()
	r.log.Info("started child", "child", pid, "number", c.number)
	return c, nil
}

// waitReady waits -ready's delay, unless c exits first.
func (r *restarter) waitReady(ctx context.Context, c *restartChild) error {
	t := time.NewTimer(r.cfg.readyDelay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.done:
		return fmt.Errorf("child pid %d exited before it was ready (%s)", c.pid, exitstatus.Wait(c.status))
	case <-ctx.Done():
		return fmt.Errorf("child pid %d not ready yet: %w", c.pid, ctx.Err())
	}
}

// stopChild sends c the stop signal, waits up to -drain-timeout, then
// kills it; it returns once c is reaped.
func (r *restarter) stopChild(c *restartChild, why string) {
	r.log.Info("stopping child", "child", c.pid, "why", why, "signal", unix.SignalName(r.cfg.stopSignal))
	t0 := time.Now()
	c.proc.Signal(r.cfg.stopSignal) // an error: it has exited, done says so
	t := time.NewTimer(r.cfg.drainTimeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		r.log.Warn("child did not stop within the drain timeout; killed", "child", c.pid, "drain_timeout", r.cfg.drainTimeout)
		c.proc.Kill()
		<-c.done
	}
	r.ended(c)
	r.log.Info("child stopped", "child", c.pid, "status", exitstatus.Wait(c.status), "took", time.Since(t0).Round(time.Millisecond))
}

// forward sends sig to the running child.
func (r *restarter) forward(sig os.Signal) {
	c := r.currentChild()
	if c == nil {
		return
	}
	if err := c.proc.Signal(sig); err != nil {
		r.log.Warn("cannot forward signal", "signal", exitstatus.Signal(sig), "child", c.pid, "err", err)
		return
	}
	r.log.Info("forwarded signal", "signal", exitstatus.Signal(sig), "child", c.pid)
}

// ended records that c has exited.
func (r *restarter) ended(c *restartChild) {
	r.mu.Lock()
	if r.current == c {
		r.current = nil
	}
	r.last = c
	r.mu.Unlock()
}

func (r *restarter) currentChild() *restartChild {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// detail is hooks.Wrapper.StatusDetail.
func (r *restarter) detail() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	ready := "started"
	if r.cfg.readyDelay > 0 {
		ready = r.cfg.readyDelay.String()
	}
	d := statusDetail{Version: versionLine(), Command: r.cfg.argv, Ready: ready, Restarts: r.restarts, Children: []childStatus{}}
	if c := r.current; c != nil {
		d.Children = append(d.Children, childStatus{PID: c.pid, Number: c.number, Role: "serving", Started: c.started})
	}
	return d
}
