package handoff

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"
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
	State      string         `json:"state"` // starting, serving, upgrading, handed-over, closed
	Started    time.Time      `json:"started"`
	Sockets    []SocketStatus `json:"sockets"`
	LastReload *ReloadResult  `json:"last_reload,omitempty"`
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
}

func (s lifecycle) String() string {
	return [...]string{"starting", "serving", "upgrading", "handed-over", "closed"}[s]
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
	u.lastReload = r
	u.mu.Unlock()
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
	u.mu.Lock()
	if u.state == stateUpgrading {
		u.state = stateServing
	}
	u.mu.Unlock()
	u.recordUpgrade(start, 0, err)
	u.announceReloaded(err)
	return err
}

// Request names.
const (
	requestReload = "reload"
	requestStatus = "status"
)

// serveRequest answers a client's request: progress replies and a final
// one on success, a refusal with the reason on failure.
func (u *Upgrader) serveRequest(ctx context.Context, cc *ctlConn, req request) error {
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	_, uid, err := peerCred(cc.c)
	if err == nil && uid != os.Geteuid() && uid != 0 {
		err = &RefusedError{Code: RefusedPermission, Reason: fmt.Sprintf("client runs as uid %d, this service as uid %d", uid, os.Geteuid())}
	}
	if err == nil {
		switch req.Name {
		case requestStatus:
			var b []byte
			if b, err = json.Marshal(u.Status()); err == nil {
				return cc.send(reply{Final: true, Text: "ok", Data: b}, nil, step())
			}
		case requestReload:
			u.log.Info("reload requested on the control socket")
			progress := func(line string) { cc.send(reply{Text: line}, nil, step()) }
			if err = u.reload(ctx, progress); err == nil {
				return cc.send(reply{Final: true, Text: "reloaded"}, nil, step())
			}
		default:
			err = fmt.Errorf("%w: unknown request %q", ErrProtocol, req.Name)
		}
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

// roundTrip sends one request and returns the final reply. ctx bounds it
// all: a reload may take as long as the successor needs to get ready.
func roundTrip(ctx context.Context, path, name string, progress func(string)) (reply, error) {
	if err := platformSupported(); err != nil {
		return reply{}, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return reply{}, fmt.Errorf("handoff: connect to %s: %w", path, err)
	}
	cc := newCtlConn(c.(*net.UnixConn), maxMessageSize, 0)
	defer cc.Close()
	stop := cc.bind(ctx)
	defer stop()
	if err := cc.send(request{Name: name}, nil, time.Time{}); err != nil {
		return reply{}, fmt.Errorf("handoff: %s: %w", name, ctxErr(ctx, err))
	}
	for {
		m, err := cc.recvMsg(time.Time{})
		if err != nil {
			return reply{}, fmt.Errorf("handoff: %s: %w", name, ctxErr(ctx, err))
		}
		r, ok := m.(reply)
		if !ok {
			return reply{}, fmt.Errorf("handoff: %s: %w: unexpected %s message", name, ErrProtocol, m.msgType())
		}
		if r.Final {
			return r, nil
		}
		if progress != nil {
			progress(r.Text)
		}
	}
}
