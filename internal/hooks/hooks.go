// Package hooks gives the rest of this module what it needs of package
// handoff beyond handoff's exported API, so that the API a program uses
// holds only what a program needs: handoff/control (the control-socket
// client) sends requests through Request and finds sockets with
// SocketPath; cmd/handoff (the wrapper) gives its Upgrader its own
// reload and status with Wrap.
//
// Package handoff sets every variable in its init; whoever imports
// package handoff (directly or, as handoff/control, through its own
// imports) may call them. Being internal, none of it is part of the
// module's compatibility promise.
package hooks

import (
	"context"
	"syscall"
)

// Wrapper is what the wrapper adds to an Upgrader.
type Wrapper struct {
	// Reload is what a reload runs instead of Upgrade: SIGHUP (through
	// Wrapped.Reload) and a reload request on the control socket
	// (`handoff reload`). The wrapper restarts its child. It reports its
	// steps through progress. With proven it returns only once the new
	// child has lasted its canary window, or with why it was rolled back
	// if it died within it.
	Reload func(ctx context.Context, progress func(line string), proven bool) error
	// StatusDetail's result, marshaled as JSON, is the Upgrader's
	// Status.Detail (the wrapper's children).
	StatusDetail func() any
	// SocketControl, when not nil, is called on every socket the
	// Upgrader creates itself (not one it inherits from a predecessor or
	// from systemd) before it is bound, as net.ListenConfig.Control is:
	// the wrapper sets SO_REUSEPORT there, so that it can bind a socket
	// per child generation beside it. An error fails the Listen call.
	// Such a TCP socket is plain TCP, not MPTCP (which Go's ListenConfig
	// would choose, and whose SOL_SOCKET options exclude
	// SO_ATTACH_REUSEPORT_CBPF).
	SocketControl func(network, address string, c syscall.RawConn) error
}

// Wrapped is what the wrapper calls on its Upgrader once Wrap has given it
// the Wrapper.
type Wrapped struct {
	// Reload runs Wrapper.Reload as a reload of the Upgrader: one reload
	// or upgrade at a time (another gets handoff.ErrInProgress),
	// RELOADING=1 and READY=1 to systemd around it, the outcome in
	// Status.LastReload.
	Reload func(ctx context.Context) error
	// SetStatus sets the wrapper's part of the STATUS= line the Upgrader
	// keeps up to date with systemd (its child's pid) and sends the line
	// at once.
	SetStatus func(text string)
}

// The requests a client of the control socket can send, for Request.
const (
	ReloadRequest = "reload"
	// ReloadProvenRequest is a reload whose final reply waits until the
	// new version has lasted its canary window, and is a refusal saying
	// why if it was rolled back.
	ReloadProvenRequest = "reload-proven"
	StatusRequest       = "status"
)

// Set by package handoff.
var (
	// Wrap gives upg, a *handoff.Upgrader fresh from handoff.New and not
	// ready yet, the wrapper's reload and status detail.
	Wrap func(upg any, w Wrapper) Wrapped

	// Request sends the request name (ReloadRequest, ReloadProvenRequest,
	// StatusRequest) to the control socket at socket, passes each progress reply to progress
	// (when not nil), and returns the final reply's data. A refusal is a
	// *handoff.RefusedError. ctx bounds it all.
	Request func(ctx context.Context, socket, name string, progress func(line string)) ([]byte, error)

	// SocketPath is the control socket of a handoff.Config with this
	// Name and no Socket.
	SocketPath func(name string) (string, error)
)
