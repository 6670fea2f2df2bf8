package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// Besides successors, the control socket serves requests: a client sends
// one request message instead of a hello, and gets progress replies then
// a final one. `handoff reload` and `handoff status` are such clients;
// RequestReload and RequestStatus are their library form.

// Status describes a serving process, as `handoff status` shows it.
type Status struct {
	PID        int            `json:"pid"`
	Service    string         `json:"service"`
	Generation int            `json:"generation"`
	State      string         `json:"state"` // starting, serving, upgrading, canary, handed-over, closed
	Started    time.Time      `json:"started"`
	Sockets    []SocketStatus `json:"sockets"`
	LastReload *ReloadResult  `json:"last_reload,omitempty"`
	// Dropped lists the sockets the predecessor passed that this
	// process did not claim (a port its config no longer has): it closed
	// them once it served.
	Dropped []SocketStatus `json:"dropped,omitempty"`
	// Detail is what Config.StatusDetail adds (the wrapper: its children).
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
	Error     string        `json:"error,omitempty"`     // "" when it succeeded
	// RolledBack: the successor became ready, then died within the
	// canary window, and this process serves again (Error says how).
	RolledBack bool `json:"rolled_back,omitempty"`
}

// Status reports on this process.
func (u *Upgrader) Status() Status {
	u.mu.Lock()
	st := Status{
		PID:        u.pid,
		Service:    u.cfg.Name,
		Generation: int(u.generation),
		State:      u.state.String(),
		Started:    u.started,
		LastReload: u.lastReload,
		Dropped:    u.dropped,
	}
	u.mu.Unlock()
	for _, s := range u.reg.inventory() {
		st.Sockets = append(st.Sockets, SocketStatus{Name: s.Name, Network: s.Network, Address: s.boundAddress()})
	}
	if u.cfg.StatusDetail != nil {
		if b, err := json.Marshal(u.cfg.StatusDetail()); err == nil {
			st.Detail = b
		}
	}
	return st
}

// recordUpgrade keeps the outcome of a reload for Status.
func (u *Upgrader) recordUpgrade(start time.Time, successor int, err error) {
	r := &ReloadResult{At: start, Duration: time.Since(start), Successor: successor}
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

// Reload runs Config.Reload, or Upgrade when that is nil, and records the
// outcome for Status. A program's SIGHUP handler and the control socket's
// reload requests both end up here. As with Upgrade, one reload or
// upgrade runs at a time; another gets ErrInProgress.
func (u *Upgrader) Reload(ctx context.Context) error {
	return u.reload(ctx, func(string) {})
}

func (u *Upgrader) reload(ctx context.Context, progress func(string)) error {
	if u.cfg.Reload == nil {
		progress("starting a fresh copy of " + u.image.path)
		if err := u.Upgrade(ctx); err != nil {
			return err
		}
		if link := u.successor(); link != nil {
			progress(fmt.Sprintf("successor pid %d is serving", link.pid))
		}
		return nil
	}
	if err := u.waitReady(ctx); err != nil {
		return err
	}
	if err := u.reserve(); err != nil {
		return err
	}
	start := time.Now()
	u.notify(reloading(), u.status("reloading", ""))
	err := u.cfg.Reload(ctx, progress)
	u.recordUpgrade(start, 0, err)
	u.release(err)
	return err
}

// Request names.
const (
	requestReload = "reload"
	requestStatus = "status"
)

// serveRequest answers a client's request: progress replies and a final
// one on success, a refusal with the reason on failure.
func (u *Upgrader) serveRequest(ctx context.Context, cc *ctl.Conn, req wire.Request) error {
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	var err error
	switch req.Name {
	case requestStatus:
		var b []byte
		if b, err = json.Marshal(u.Status()); err == nil {
			return cc.Send(wire.Reply{Final: true, Text: "ok", Data: b}, nil, step())
		}
	case requestReload:
		// A process that is not ready cannot be upgraded yet, and a
		// client waiting for it would learn nothing: say so at once.
		if state, _ := u.snapshot(); state == stateStarting {
			err = u.notReadyErr()
			break
		}
		u.log.Info("reload requested on the control socket")
		progress := func(line string) { cc.Send(wire.Reply{Text: line}, nil, step()) }
		if err = u.reload(ctx, progress); err == nil {
			return cc.Send(wire.Reply{Final: true, Text: "reloaded"}, nil, step())
		}
	default:
		err = fmt.Errorf("%w: unknown request %q", ErrProtocol, req.Name)
	}
	refuse(cc, err)
	return err
}

// RequestReload asks the process serving the control socket at path to
// reload (see Upgrader.Reload). It passes each progress line to progress,
// and returns nil once the reload has succeeded, or why it failed: the
// process then still serves as before. errors.Is(err, ErrInProgress)
// tells that another reload was under way.
func RequestReload(ctx context.Context, path string, progress func(line string)) error {
	_, err := roundTrip(ctx, path, requestReload, progress)
	return err
}

// RequestStatus asks the process serving the control socket at path for
// its Status.
func RequestStatus(ctx context.Context, path string) (Status, error) {
	var st Status
	r, err := roundTrip(ctx, path, requestStatus, nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(r.Data, &st); err != nil {
		return st, fmt.Errorf("%w: status: %w", ErrProtocol, err)
	}
	return st, nil
}

// DefaultRequestTimeout bounds RequestReload and RequestStatus when their
// context has no deadline.
const DefaultRequestTimeout = 5 * time.Minute

// roundTrip sends one request and returns the final reply. ctx bounds it
// all (DefaultRequestTimeout when it has no deadline): a reload may take
// as long as the successor needs to get ready. A control socket served by
// another user is not trusted: nothing is sent to it.
func roundTrip(ctx context.Context, path, name string, progress func(string)) (reply wire.Reply, err error) {
	if err := ctl.Supported(); err != nil {
		return reply, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRequestTimeout)
		defer cancel()
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("handoff: %s: %w", name, ctxErr(ctx, err))
		}
	}()
	cc, err := ctl.Dial(ctx, path, wire.MaxMessageSize, 0)
	if err != nil {
		var peer *ctl.PeerError
		if errors.As(err, &peer) {
			return reply, fmt.Errorf("%w: control socket %s: %w", ErrPeerRejected, path, err)
		}
		return reply, fmt.Errorf("connect to %s: %w", path, err)
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
			return reply, fmt.Errorf("%w: unexpected %s message", ErrProtocol, m.Type())
		}
		if r.Final {
			return r, nil
		}
		if progress != nil {
			progress(r.Text)
		}
	}
}
