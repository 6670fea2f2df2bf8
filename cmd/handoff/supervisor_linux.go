//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// starter starts a child process from the executable exe; spawner.start
// on Linux.
type starter interface {
	start(exe *os.File, argv, env []string, files []uintptr) (int, error)
}

// upgrader is what the supervisor needs of the wrapper's
// *handoff.Upgrader (wrappedUpgrader).
type upgrader interface {
	Ready() error
	Exit() <-chan struct{}
	Stop()
	SetStatus(string)
}

// readyChecker decides when a new child is ready: *readiness.
type readyChecker interface {
	wait(ctx context.Context, c *child) error
}

// supervisorDeps are what the supervisor runs children with. They exist
// only once the Upgrader does, which needs the supervisor's requestReload
// and detail first; so run takes them, and its loop is their only user.
type supervisorDeps struct {
	log     *slog.Logger
	upg     upgrader
	ready   readyChecker
	spawn   starter
	env     []string        // the children's environment
	sockets *wrapperSockets // the children's fds 3...
	forget  func(pid int)
}

// supervisor owns the children. Its run loop is the only goroutine that
// starts or stops them: reloads reach it over reloads, one at a time.
type supervisor struct {
	cfg runConfig
	supervisorDeps

	reloads chan reloadRequest
	quit    chan struct{} // closed when run returns

	mu       sync.Mutex
	current  *child   // serving
	starting *child   // started by a reload, not ready yet
	stopping []*child // draining after a reload
	number   int      // children started so far
	restarts int      // crash restarts
	last     *child   // the latest child that ended while serving
	// gen is the serving generation's sockets, where new connections
	// go: a child restarted after a crash (or rolled back to) gets them
	// again, with what queued meanwhile.
	gen *generation

	// The canary window: the executable of the child the latest reload
	// replaced stays open until fallbackUntil, so that a new child that
	// dies meanwhile is replaced by the previous build at once, even if
	// the file on disk is the new build by now.
	fallback      *os.File
	fallbackOf    int // the number of the child it ran
	fallbackUntil time.Time
	servingSince  time.Time // when the current child began to serve
	lastRollback  string    // under mu, with canaryUntil
	canaryUntil   time.Time // fallbackUntil, for status; zero without a fallback
	// provenWaits are the answers of reloads that wait for the window's
	// end (reloadRequest.proven): given when it ends, by the loop.
	provenWaits []chan error
}

// newSupervisor is a supervisor for cfg, ready to take reload requests
// (they wait for run) and status queries.
func newSupervisor(cfg runConfig) *supervisor {
	return &supervisor{cfg: cfg, reloads: make(chan reloadRequest), quit: make(chan struct{})}
}

// requestReload is the wrapper's reload (hooks.Wrapper.Reload): the
// upgrader calls it for SIGHUP (via hooks.Wrapped.Reload) and for
// `handoff reload`, one at a time. With proven the answer waits until the
// new child has lasted its canary window (`handoff reload -wait-canary`).
func (s *supervisor) requestReload(ctx context.Context, progress func(string), proven bool) error {
	return askReload(ctx, s.reloads, s.quit, progress, proven)
}

// run starts the first child, says ready once it is, then restarts a
// child that dies and serves reloads until ctx ends (stop) or a new
// wrapper takes over. Every child is reaped before run returns. It is
// called once.
func (s *supervisor) run(ctx context.Context, deps supervisorDeps) error {
	defer close(s.quit)
	s.mu.Lock() // detail reads sockets
	s.supervisorDeps = deps
	s.mu.Unlock()
	first, err := s.start(nil)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.starting = first // for status, till it is ready
	s.mu.Unlock()
	err = s.waitReady(ctx, first)
	s.mu.Lock()
	s.starting = nil
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.setCurrent(first)
	if err := s.upg.Ready(); err != nil {
		s.stopChild(first, "the wrapper could not take over")
		return err
	}
	s.log.Info("serving", "child", first.pid, "ready", s.cfg.ready.String())

	defer s.dropFallback()
	defer s.answerProven(errors.New("the wrapper stopped within the new child's canary window"))
	backoff := restartBackoffMin
	var restart <-chan time.Time
	for {
		var exited <-chan struct{}
		cur := s.currentChild()
		if cur != nil {
			exited = cur.done
		}
		var canaryEnd <-chan time.Time
		if s.fallback != nil {
			canaryEnd = time.After(time.Until(s.fallbackUntil))
		}
		select {
		case <-ctx.Done():
			s.upg.Stop() // no takeover or reload from here on
			return s.stopCurrent("stopping")
		case <-s.upg.Exit():
			s.handOver()
			return s.stopCurrent("a new wrapper took over")
		case <-canaryEnd:
			s.log.Info("the new child lasted its canary window", "child", cur.pid, "window", s.cfg.canaryWindow)
			s.dropFallback()
			s.answerProven(nil)
		case <-exited:
			s.ended(cur)
			if s.rollBack(cur) {
				break
			}
			if time.Since(cur.started) >= stableAfter {
				backoff = restartBackoffMin
			}
			s.log.Error("child exited on its own; restarting", "child", cur.pid, "status", cur.describe(), "after", backoff)
			restart = time.After(backoff)
			backoff = min(2*backoff, restartBackoffMax)
		case <-restart:
			restart = nil
			if s.currentChild() != nil {
				break // a reload started one meanwhile
			}
			c, err := s.start(s.gen)
			if err != nil {
				s.log.Error("cannot restart the child", "err", err, "after", backoff)
				restart = time.After(backoff)
				backoff = min(2*backoff, restartBackoffMax)
				break
			}
			s.mu.Lock()
			s.restarts++
			s.mu.Unlock()
			s.setCurrent(c)
		case req := <-s.reloads:
			err := s.reload(ctx, req.ctx, req.progress)
			if err == nil && req.proven && s.fallback != nil {
				req.progress(fmt.Sprintf("waiting out its canary window (%v)", s.cfg.canaryWindow))
				s.provenWaits = append(s.provenWaits, req.reply)
				break
			}
			req.reply <- err
		}
	}
}

// start starts the next child from the executable at the command's path,
// with the sockets gen (nil: a new generation's).
func (s *supervisor) start(gen *generation) (*child, error) {
	exe, err := os.Open(s.cfg.path)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.cfg.path, err)
	}
	c, err := s.startFrom(exe, gen)
	if err != nil {
		exe.Close()
	}
	return c, err
}

// startFrom starts the next child from exe, which the child then owns,
// with the sockets gen (nil: a new generation's, beside the serving one).
func (s *supervisor) startFrom(exe *os.File, gen *generation) (*child, error) {
	if gen == nil {
		var err error
		if gen, err = s.sockets.newGeneration(s.gen); err != nil {
			return nil, err
		}
	}
	pid, err := s.spawnWith(exe, gen)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.cfg.path, err)
	}
	s.mu.Lock()
	s.number++
	n := s.number
	s.mu.Unlock()
	c, err := watchChild(pid, n)
	if err != nil {
		return nil, err
	}
	c.exe, c.gen = exe, gen
	c.exeInfo = describeExe(s.cfg.path, exe)
	s.log.Info("started child", "child", pid, "number", n, "sockets_of_generation", gen.number)
	return c, nil
}

// spawnWith starts exe with gen's sockets, made blocking or not first.
func (s *supervisor) spawnWith(exe *os.File, gen *generation) (int, error) {
	if err := s.sockets.prepare(gen); err != nil {
		return 0, err
	}
	return s.spawn.start(exe, s.cfg.argv, s.env, gen.files())
}

// rollBack replaces cur, the serving child that has just exited, by a
// child of the previous executable, if cur died within its canary window.
// It reports whether it did.
func (s *supervisor) rollBack(cur *child) bool {
	if s.fallback == nil || time.Now().After(s.fallbackUntil) {
		return false
	}
	exe, of := s.fallback, s.fallbackOf
	s.fallback = nil
	s.dropFallback() // the window is over: its executable is the new child's
	reason := fmt.Sprintf("child pid %d (number %d) ended (%s) %s after it began to serve, within the canary window (%v); started the executable of child %d again",
		cur.pid, cur.number, cur.describe(), time.Since(s.servingSince).Round(time.Millisecond), s.cfg.canaryWindow, of)
	c, err := s.startFrom(exe, s.gen)
	if err != nil {
		exe.Close()
		s.log.Error("cannot roll back to the previous executable", "err", err)
		s.answerProven(fmt.Errorf("child pid %d (number %d) ended (%s) within the canary window, and the previous executable could not be started again: %w", cur.pid, cur.number, cur.describe(), err))
		return false
	}
	s.answerProven(errors.New(reason))
	s.mu.Lock()
	s.lastRollback = reason
	s.mu.Unlock()
	s.setCurrent(c)
	s.log.Error("rolled back", "child", c.pid, "reason", reason)
	return true
}

// answerProven answers the reloads waiting for the canary window's end
// with err: nil once the new child has lasted it, or why not.
func (s *supervisor) answerProven(err error) {
	for _, reply := range s.provenWaits {
		reply <- err
	}
	s.provenWaits = nil
}

// keepFallback keeps old's executable for the canary window of the
// child that replaced it. A reload waiting for the window of the child
// it replaces hears that it lasted until this reload.
func (s *supervisor) keepFallback(old *child) {
	s.answerProven(nil)
	s.dropFallback()
	if s.cfg.canaryWindow <= 0 || old == nil || old.exe == nil {
		return
	}
	s.fallback, s.fallbackOf, old.exe = old.exe, old.number, nil
	s.extendFallback()
}

// extendFallback starts the canary window now.
func (s *supervisor) extendFallback() {
	s.fallbackUntil = time.Now().Add(s.cfg.canaryWindow)
	s.mu.Lock()
	s.canaryUntil = s.fallbackUntil
	s.mu.Unlock()
}

// dropFallback closes the kept executable, if any.
func (s *supervisor) dropFallback() {
	if s.fallback != nil {
		s.fallback.Close()
		s.fallback = nil
	}
	s.mu.Lock()
	s.canaryUntil = time.Time{}
	s.mu.Unlock()
}

// waitReady waits until c is ready, up to the ready timeout; a child that
// is not is killed, and the error says why.
func (s *supervisor) waitReady(ctx context.Context, c *child) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.readyTimeout)
	defer cancel()
	err := s.ready.wait(rctx, c)
	if err == nil {
		s.log.Info("child is ready", "child", c.pid, "took", time.Since(c.started).Round(time.Millisecond))
		return nil
	}
	c.kill()
	c.closeExe()
	s.forget(c.pid)
	switch {
	case errors.Is(err, errExited):
		return fmt.Errorf("child pid %d exited before it was ready (%s)", c.pid, c.describe())
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("child pid %d was not ready within %v (-ready %s); killed", c.pid, s.cfg.readyTimeout, s.cfg.ready)
	case ctx.Err() != nil:
		return fmt.Errorf("child pid %d killed before it was ready: %w", c.pid, ctx.Err())
	}
	return fmt.Errorf("child pid %d: %w; killed", c.pid, err)
}

// reload starts a new child, waits until it is ready, then stops the old
// one. A new child that exits or is not ready in time is killed and the
// old one keeps serving: the reload is rolled back.
// It is abandoned when either ctx (the wrapper stops) or reqCtx (the
// request's) ends.
func (s *supervisor) reload(ctx, reqCtx context.Context, progress func(string)) error {
	old := s.currentChild()
	var gen *generation // a new generation's, beside old's
	if old == nil {
		// The serving child crashed, its restart pending: the new one
		// takes its sockets, and what queued there meanwhile.
		gen = s.gen
	}
	c, err := s.start(gen)
	if err != nil {
		return s.rolledBack(old, err)
	}
	s.mu.Lock()
	s.starting = c
	s.mu.Unlock()
	progress(fmt.Sprintf("started child pid %d; waiting until it is ready (-ready %s)", c.pid, s.cfg.ready))
	rctx, cancel := context.WithCancel(reqCtx)
	defer context.AfterFunc(ctx, cancel)()
	err = s.waitReady(rctx, c)
	cancel()
	if err == nil {
		err = s.steerTo(c)
	}
	s.mu.Lock()
	s.starting = nil
	if err == nil {
		s.current, s.gen = c, c.gen
		if old != nil {
			s.stopping = append(s.stopping, old)
		}
	}
	s.mu.Unlock()
	if err != nil {
		return s.rolledBack(old, err)
	}
	s.servingSince = time.Now()
	s.announce(c)
	s.keepFallback(old)
	if old == nil {
		progress(fmt.Sprintf("child pid %d is ready and serving", c.pid))
		return nil
	}
	s.drainOld(ctx, old, progress)
	progress(fmt.Sprintf("child pid %d is ready; stopping pid %d with %s", c.pid, old.pid, unix.SignalName(s.cfg.stopSignal)))
	s.stopChild(old, "replaced by pid "+fmt.Sprint(c.pid))
	if s.fallback != nil { // the window counts from when the new child serves alone
		s.extendFallback()
	}
	s.mu.Lock()
	for i, o := range s.stopping {
		if o == old {
			s.stopping = append(s.stopping[:i], s.stopping[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	progress(fmt.Sprintf("pid %d stopped (%s); pid %d serves", old.pid, old.describe(), c.pid))
	return nil
}

// steerTo sends new connections to c, ready, from now on; on error
// (the kernel refused the program) c is stopped.
func (s *supervisor) steerTo(c *child) error {
	err := s.sockets.steer(c.gen)
	if err == nil {
		return nil
	}
	s.stopChild(c, "new connections cannot be steered to it")
	if serr := s.sockets.steer(s.gen); serr != nil {
		s.log.Error("cannot steer back to the serving child", "err", serr)
	}
	return err
}

// drainOld waits, up to -drain-timeout, until old's own sockets, which
// no longer get new connections, hold nothing old has not accepted or
// read: only then may its stop signal come, since a server that is
// stopping may drop what it takes from its queue (Go's http.Server does:
// golang/go#75591).
func (s *supervisor) drainOld(ctx context.Context, old *child, progress func(string)) {
	if !s.sockets.perGeneration() {
		return
	}
	t0 := time.Now()
	dctx, cancel := context.WithTimeout(ctx, s.cfg.drainTimeout)
	defer cancel()
	if err := s.sockets.drain(dctx, old.gen); err != nil {
		s.log.Warn("the old child's sockets did not drain; stopping it anyway", "child", old.pid, "err", err)
		return
	}
	progress(fmt.Sprintf("pid %d has taken everything queued for it (%v)", old.pid, time.Since(t0).Round(time.Millisecond)))
}

// handOver is the end of a takeover by a new wrapper, whose children
// accept on the anchors (the sockets the Upgrader passed it): new
// connections go there from now on, and the serving child gets to take
// what is queued for it before it is stopped.
func (s *supervisor) handOver() {
	cur := s.currentChild()
	if !s.sockets.perGeneration() || cur == nil {
		return
	}
	if err := s.sockets.steer(nil); err != nil {
		s.log.Error("cannot steer new connections to the new wrapper's children", "err", err)
		return
	}
	s.drainOld(context.Background(), cur, func(string) {})
}

// rolledBack logs and returns the error of a reload that failed with err
// and left old (if any) serving.
func (s *supervisor) rolledBack(old *child, err error) error {
	if old != nil && !old.exited() {
		err = fmt.Errorf("rolled back: %w; pid %d keeps serving", err, old.pid)
	} else {
		err = fmt.Errorf("rolled back: %w", err)
	}
	s.log.Warn("reload failed", "err", err)
	return err
}

// stopChild stops c: stop signal, drain timeout, SIGKILL, reap.
func (s *supervisor) stopChild(c *child, why string) {
	s.log.Info("stopping child", "child", c.pid, "why", why, "signal", unix.SignalName(s.cfg.stopSignal))
	t0 := time.Now()
	killed := c.stop(s.cfg.stopSignal, s.cfg.drainTimeout)
	s.forget(c.pid)
	if killed {
		s.log.Warn("child did not stop within the drain timeout; killed", "child", c.pid, "drain_timeout", s.cfg.drainTimeout)
	}
	c.closeExe()
	s.log.Info("child stopped", "child", c.pid, "status", c.describe(), "took", time.Since(t0).Round(time.Millisecond))
}

// stopCurrent stops the serving child, if any, for good.
func (s *supervisor) stopCurrent(why string) error {
	if c := s.currentChild(); c != nil {
		s.stopChild(c, why)
		s.ended(c)
	}
	return nil
}

// ended records that the serving child c has exited.
func (s *supervisor) ended(c *child) {
	c.closeExe()
	s.forget(c.pid)
	s.mu.Lock()
	if s.current == c {
		s.current = nil
	}
	s.last = c
	s.mu.Unlock()
}

func (s *supervisor) setCurrent(c *child) {
	s.mu.Lock()
	s.current, s.gen = c, c.gen
	s.mu.Unlock()
	s.announce(c)
}

func (s *supervisor) currentChild() *child {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// detail is hooks.Wrapper.StatusDetail.
func (s *supervisor) detail() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := statusDetail{Version: versionLine(), Command: s.cfg.argv, Ready: s.cfg.ready.String(), Restarts: s.restarts, Children: []childStatus{}, LastRollback: s.lastRollback, CanaryUntil: s.canaryUntil}
	if s.sockets != nil {
		d.Sockets = s.sockets.modes()
	}
	add := func(c *child, role string) {
		if c != nil {
			d.Children = append(d.Children, childStatus{PID: c.pid, Number: c.number, Role: role, Started: c.started, Exe: c.exeInfo})
		}
	}
	add(s.current, "serving")
	add(s.starting, "starting")
	for _, c := range s.stopping {
		add(c, "stopping")
	}
	return d
}

// lastChild is the child that last ended while serving, for the exit code.
func (s *supervisor) lastChild() *child {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}
