// Package control is a client of a handoff control socket: it asks the
// process that serves a service, a program that uses package handoff or
// the wrapper (`handoff run`), to reload or for its status. `handoff
// reload` and `handoff status` are its command-line form.
//
// Like a successor, a client is checked by the serving process: it must
// run as the service's user or root. And it checks the serving process the
// same way before it sends a byte: a control socket served by another user
// (not root) fails with an error matching handoff.ErrPeerRejected.
package control

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/hooks"
)

// DefaultTimeout bounds Reload and Status when their context has no
// deadline.
const DefaultTimeout = 5 * time.Minute

// Reload asks the process serving the control socket at socket to
// reload: a program starts a fresh copy of itself (Upgrader.Upgrade), the
// wrapper a new child. It passes each progress line to progress (which may
// be nil), and returns nil once the reload has succeeded, or why it
// failed: the process then still serves as before. A refusal is a
// *handoff.RefusedError with the serving process's words;
// errors.Is(err, handoff.ErrInProgress) tells that another reload or
// upgrade was under way, handoff.ErrNotReady that the process is still
// starting.
func Reload(ctx context.Context, socket string, progress func(line string)) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	_, err := hooks.Request(ctx, socket, hooks.ReloadRequest, progress)
	return err
}

// ReloadProven is Reload, except that it returns only once the new
// version has proven itself: it has lasted its canary window
// (handoff.Config.CanaryWindow, `handoff run -canary-window`). A new
// version that dies within the window is rolled back, and ReloadProven
// returns the *handoff.RefusedError that says how it ended. Where the
// window is off it returns as Reload does.
func ReloadProven(ctx context.Context, socket string, progress func(line string)) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	_, err := hooks.Request(ctx, socket, hooks.ReloadProvenRequest, progress)
	return err
}

// Status asks the process serving the control socket at socket for its
// status (Upgrader.Status).
func Status(ctx context.Context, socket string) (handoff.Status, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var st handoff.Status
	b, err := hooks.Request(ctx, socket, hooks.StatusRequest, nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%w: status: %w", handoff.ErrProtocol, err)
	}
	return st, nil
}

// SocketPath returns the control socket that a handoff.Config with this
// Name and no Socket uses (in $RUNTIME_DIRECTORY, or in a private
// directory under os.TempDir()), so that a client finds the socket a
// service serves from its name alone (`handoff status -name NAME`).
func SocketPath(name string) (string, error) {
	return hooks.SocketPath(name)
}

// withDefaultTimeout bounds ctx by DefaultTimeout if it has no deadline.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}
