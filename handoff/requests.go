package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/hooks"
	"github.com/handoffd/handoff/internal/wire"
)

// Besides successors, the control socket serves requests: a client sends
// one request message instead of a hello, and gets progress replies then
// a final one. `handoff reload` and `handoff status` are such clients;
// package handoff/control is their library form, which reaches roundTrip
// through internal/hooks (hooks.go).

// Status describes a serving process, as `handoff status` shows it.
type Status struct {
	PID        int       `json:"pid"`
	Service    string    `json:"service"`
	Generation int       `json:"generation"`
	State      string    `json:"state"` // starting, serving, upgrading, canary, handed-over, closed
	Started    time.Time `json:"started"`
	// Build is the build this process runs.
	Build Build `json:"build"`
	// PredecessorBuild is the build of the process this one took over
	// from, as it said in its welcome (nil for a fresh start; empty
	// fields: a predecessor that predates them).
	PredecessorBuild *Build         `json:"predecessor_build,omitempty"`
	Sockets          []SocketStatus `json:"sockets"`
	LastReload       *ReloadResult  `json:"last_reload,omitempty"`
	// Dropped lists the sockets the predecessor passed that this
	// process did not claim (a port its config no longer has): it closed
	// them once it served.
	Dropped []SocketStatus `json:"dropped,omitempty"`
	// NoHandoff says why this process serves without the handoff (the
	// platform cannot pass sockets; see New): it can be restarted, not
	// upgraded. Empty where it hands over.
	NoHandoff string `json:"no_handoff,omitempty"`
	// Detail is what the wrapper (`handoff run`) adds: its command and
	// children. It is empty for a program's own Upgrader.
	Detail json.RawMessage `json:"detail,omitempty"`
}

// SocketStatus describes one socket in use.
type SocketStatus struct {
	Name    string `json:"name,omitempty"`
	Network string `json:"network"`
	Address string `json:"address"` // where it is bound
}

// ReloadResult is the outcome of the latest reload or upgrade attempt.
type ReloadResult struct {
	At        time.Time     `json:"at"`
	Duration  time.Duration `json:"duration_ns"`
	Successor int           `json:"successor,omitempty"` // pid, for an upgrade
	// SuccessorBuild is the successor's build, as it said in its hello
	// (empty fields: a successor that predates them).
	SuccessorBuild *Build `json:"successor_build,omitempty"`
	Error          string `json:"error,omitempty"` // "" when it succeeded
	// RolledBack: the successor became ready, then died within the
	// canary window, and this process serves again (Error says how).
	RolledBack bool `json:"rolled_back,omitempty"`
}

// Status reports on this process.
func (u *Upgrader) Status() Status {
	u.mu.Lock()
	st := Status{
		PID:              u.pid,
		Service:          u.cfg.Name,
		Generation:       int(u.generation),
		State:            u.state.String(),
		Started:          u.started,
		Build:            speaks.build,
		PredecessorBuild: u.predBuild,
		LastReload:       u.lastReload,
		Dropped:          u.dropped,
	}
	detail := u.wrapper.StatusDetail
	u.mu.Unlock()
	if u.noHandoff != nil {
		st.NoHandoff = u.noHandoff.Error()
	}
	for _, s := range u.reg.inventory() {
		st.Sockets = append(st.Sockets, SocketStatus{Name: s.Name, Network: s.Network, Address: s.boundAddress()})
	}
	if detail != nil {
		if b, err := json.Marshal(detail()); err == nil {
			st.Detail = b
		}
	}
	return st
}

// recordUpgrade keeps the outcome of a reload for Status: successor is
// the pid of the successor, if there was one, and build its build.
func (u *Upgrader) recordUpgrade(start time.Time, successor int, build *Build, err error) {
	r := &ReloadResult{At: start, Duration: time.Since(start), Successor: successor, SuccessorBuild: build}
	if err != nil {
		r.Error = err.Error()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if last := u.lastReload; err == nil && successor != 0 && last != nil && last.RolledBack && last.Successor == successor {
		// The successor died in its canary window before the upgrade
		// that made it serve got here: the rollback is the outcome.
		rb := *last // Status callers may hold last
		rb.At, rb.Duration = r.At, r.Duration
		u.lastReload = &rb
		return
	}
	u.lastReload = r
}

// reload is what a reload request on the control socket runs: Upgrade,
// or, in the wrapper, its own reload (hooks.Wrapper.Reload), whose
// outcome it records for Status. As with Upgrade, one reload or upgrade
// runs at a time; another gets ErrInProgress.
//
// With proven it returns only once the new version has lasted its canary
// window, or why it was rolled back. Then the caller must call answered
// (never nil) once it has sent its final reply: until then the window's
// end waits (bounded) before it lets the program exit.
func (u *Upgrader) reload(ctx context.Context, progress func(string), proven bool) (answered func(), err error) {
	answered = func() {}
	u.mu.Lock()
	own := u.wrapper.Reload
	u.mu.Unlock()
	if own == nil {
		progress("starting a fresh copy of " + u.image.path)
		if err := u.Upgrade(ctx); err != nil {
			return answered, err
		}
		link := u.successor()
		if link == nil {
			return answered, nil
		}
		progress(fmt.Sprintf("successor pid %d is serving", link.pid))
		if !proven {
			return answered, nil
		}
		return u.waitProven(ctx, link.pid, progress)
	}
	if err := u.waitReady(ctx); err != nil {
		return answered, err
	}
	if err := u.reserve(); err != nil {
		return answered, err
	}
	start := time.Now()
	u.notify(reloading(), u.status("reloading", ""))
	err = own(ctx, progress, proven)
	u.recordUpgrade(start, 0, nil, err)
	u.release(err)
	return answered, err
}

// serveRequest answers a client's request: progress replies and a final
// one on success, a refusal with the reason on failure.
func (u *Upgrader) serveRequest(ctx context.Context, cc *ctl.Conn, req wire.Request) error {
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	var err error
	switch req.Name {
	case hooks.StatusRequest:
		var b []byte
		if b, err = json.Marshal(u.Status()); err == nil {
			return cc.Send(wire.Reply{Final: true, Text: "ok", Data: b}, nil, step())
		}
	case hooks.ReloadRequest, hooks.ReloadProvenRequest:
		// A process that is not ready cannot be upgraded yet, and a
		// client waiting for it would learn nothing: say so at once.
		if state, _ := u.snapshot(); state == stateStarting {
			err = u.notReadyErr()
			break
		}
		u.log.Info("reload requested on the control socket", "wait_for_canary_window", req.Name == hooks.ReloadProvenRequest)
		progress := func(line string) { cc.Send(wire.Reply{Text: line}, nil, step()) }
		var answered func()
		answered, err = u.reload(ctx, progress, req.Name == hooks.ReloadProvenRequest)
		defer answered()
		if err == nil {
			return cc.Send(wire.Reply{Final: true, Text: "reloaded"}, nil, step())
		}
	default:
		err = errorf("%w: unknown request %q", ErrProtocol, req.Name)
	}
	refuse(cc, err)
	return err
}

// roundTrip sends one request and returns the final reply. ctx bounds it
// all: a reload may take as long as the successor needs to get ready. A
// control socket served by another user is not trusted: nothing is sent
// to it.
func roundTrip(ctx context.Context, path, name string, progress func(string)) (reply wire.Reply, err error) {
	if err := ctl.Supported(); err != nil {
		return reply, err
	}
	defer func() {
		if err != nil {
			err = errorf("handoff: %s: %w", name, ctxErr(ctx, err))
		}
	}()
	cc, err := ctl.Dial(ctx, path, wire.MaxMessageSize, 0)
	if err != nil {
		var peer *ctl.PeerError
		if errors.As(err, &peer) {
			return reply, errorf("%w: control socket %s: %w", ErrPeerRejected, path, err)
		}
		return reply, errorf("connect to %s: %w", path, err)
	}
	defer cc.Close()
	stop := cc.Bind(ctx)
	defer stop()
	if err := cc.Send(wire.Request{Name: name}, nil, time.Time{}); err != nil {
		return reply, err
	}
	for {
		m, err := recvMsg(cc, time.Time{})
		if err != nil {
			return reply, err
		}
		r, ok := m.(wire.Reply)
		if !ok {
			return reply, errorf("%w: unexpected %s message", ErrProtocol, m.Type())
		}
		if r.Final {
			return r, nil
		}
		if progress != nil {
			progress(r.Text)
		}
	}
}
