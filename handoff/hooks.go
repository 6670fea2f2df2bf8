package handoff

import (
	"context"

	"github.com/handoffd/handoff/internal/hooks"
)

// What the rest of this module needs beyond the exported API (see package
// internal/hooks): the control-socket client for handoff/control, and the
// wrapper's own reload and status for cmd/handoff.
func init() {
	hooks.Request = func(ctx context.Context, socket, name string, progress func(string)) ([]byte, error) {
		r, err := roundTrip(ctx, socket, name, progress)
		return r.Data, err
	}
	hooks.SocketPath = socketPath
	hooks.Wrap = func(upg any, w hooks.Wrapper) hooks.Wrapped {
		return upg.(*Upgrader).wrap(w)
	}
}

// wrap gives u the wrapper's reload and status detail, and returns what
// the wrapper calls on u.
func (u *Upgrader) wrap(w hooks.Wrapper) hooks.Wrapped {
	u.mu.Lock()
	u.wrapper = w
	u.mu.Unlock()
	u.reg.mu.Lock()
	u.reg.control = w.SocketControl
	u.reg.mu.Unlock()
	return hooks.Wrapped{
		Reload: func(ctx context.Context) error {
			answered, err := u.reload(ctx, func(string) {}, false)
			answered()
			return err
		},
		SetStatus: u.setStatus,
	}
}
