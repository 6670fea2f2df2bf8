package handoff

import (
	"errors"
	"fmt"
	"strings"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// Sentinel errors. Compare with errors.Is: the errors returned by this
// package wrap them with detail.
var (
	// ErrInProgress: an upgrade is already in flight; only one at a time.
	ErrInProgress = errors.New("handoff: upgrade in progress")
	// ErrNotReady: the serving process has not called Ready yet.
	ErrNotReady = errors.New("handoff: not ready")
	// ErrHandedOver: this process has already handed its sockets to a
	// successor and is draining.
	ErrHandedOver = errors.New("handoff: already handed over")
	// ErrClosed: the Upgrader was closed.
	ErrClosed = errors.New("handoff: closed")
	// ErrProtocol: the peer sent something the protocol does not allow.
	ErrProtocol = wire.ErrProtocol
	// ErrPeerRejected: the peer's credentials, service name or protocol
	// version are not acceptable.
	ErrPeerRejected = errors.New("handoff: peer rejected")
	// ErrNoSuccessor: a connection can only be sent once a successor has
	// taken over, while it is still connected.
	ErrNoSuccessor = errors.New("handoff: no successor")
	// ErrSuccessorFailed: the successor exited, timed out or broke the
	// protocol before it was ready; this process keeps serving.
	ErrSuccessorFailed = errors.New("handoff: successor failed")
	// ErrNotSupported: the platform cannot pass sockets between processes.
	ErrNotSupported = ctl.ErrNotSupported
	// ErrConnUnknown: SendConn sent the connection, but the successor
	// neither took nor refused it in time (it stalled, or the link
	// broke): it may be serving it. The connection is no longer the
	// caller's to write to; SendConn has closed the caller's descriptor,
	// which ends the connection only if the successor does not hold it.
	ErrConnUnknown = errors.New("handoff: connection's fate unknown")
)

// A RefusalCode says why one side of the control socket refused the other.
type RefusalCode uint16

// Refusal codes; the numbers are part of the wire protocol.
const (
	RefusedOther      RefusalCode = 0
	RefusedInProgress RefusalCode = 1 // another upgrade is in flight
	RefusedNotReady   RefusalCode = 2 // the serving process is not ready yet
	RefusedClosing    RefusalCode = 3 // the serving process is stopping or handed over
	RefusedVersion    RefusalCode = 4 // no common protocol version
	RefusedName       RefusalCode = 5 // the service names differ
	RefusedPermission RefusalCode = 6 // the peer runs as another user
	RefusedProtocol   RefusalCode = 7 // the peer broke the protocol
	RefusedTimeout    RefusalCode = 8 // the peer took too long
)

func (c RefusalCode) String() string {
	switch c {
	case RefusedInProgress:
		return "upgrade in progress"
	case RefusedNotReady:
		return "not ready"
	case RefusedClosing:
		return "closing"
	case RefusedVersion:
		return "version mismatch"
	case RefusedName:
		return "service name mismatch"
	case RefusedPermission:
		return "permission denied"
	case RefusedProtocol:
		return "protocol error"
	case RefusedTimeout:
		return "timeout"
	}
	return "refused"
}

// A RefusedError is a refusal received from the peer on the control
// socket: Reason is the peer's own words.
type RefusedError struct {
	Code   RefusalCode
	Reason string
}

// Error reads "handoff: peer refused (service name mismatch): REASON";
// a refusal without a particular code leaves the code out.
func (e *RefusedError) Error() string {
	if e.Code == RefusedOther {
		return "handoff: peer refused: " + e.Reason
	}
	return fmt.Sprintf("handoff: peer refused (%s): %s", e.Code, e.Reason)
}

// Unwrap maps the refusal onto the matching sentinel error, so that
// errors.Is(err, ErrInProgress) holds for a remote "in progress".
func (e *RefusedError) Unwrap() error {
	switch e.Code {
	case RefusedInProgress:
		return ErrInProgress
	case RefusedNotReady:
		return ErrNotReady
	case RefusedClosing:
		return ErrHandedOver
	case RefusedVersion, RefusedName, RefusedPermission:
		return ErrPeerRejected
	case RefusedProtocol:
		return ErrProtocol
	}
	return nil
}

var _ error = (*RefusedError)(nil)

// errorf is fmt.Errorf for this package's errors, which say "handoff:"
// once: the errors it wraps that begin with it too (sentinels, refusals)
// lose it in the message, "handoff: take over: peer refused (...)" and
// not "handoff: take over: handoff: peer refused (...)". errors.Is and
// errors.As see every wrapped error as before.
func errorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &stutterless{msg: strings.ReplaceAll(err.Error(), ": handoff: ", ": "), err: err}
}

// stutterless is an error with errorf's message.
type stutterless struct {
	msg string
	err error
}

func (e *stutterless) Error() string { return e.msg }

// Unwrap returns what fmt.Errorf made of the wrapped errors.
func (e *stutterless) Unwrap() error { return e.err }

// A denial is this process's own refusal of a peer, with the reason it
// sends; unlike a RefusedError it was not received.
type denial struct {
	code   RefusalCode
	reason string
}

func (d *denial) Error() string { return d.reason }

// Unwrap maps the denial onto the sentinel error it matches.
func (d *denial) Unwrap() error { return (&RefusedError{Code: d.code}).Unwrap() }

func deny(code RefusalCode, format string, args ...any) error {
	return &denial{code: code, reason: fmt.Sprintf(format, args...)}
}

// refusalFor picks the code that tells a peer why err stopped the handoff.
func refusalFor(err error) RefusalCode {
	var d *denial
	var peer *ctl.PeerError
	switch {
	case errors.As(err, &d):
		return d.code
	case errors.As(err, &peer):
		return RefusedPermission
	case errors.Is(err, ErrInProgress):
		return RefusedInProgress
	case errors.Is(err, ErrNotReady):
		return RefusedNotReady
	case errors.Is(err, ErrHandedOver), errors.Is(err, ErrClosed):
		return RefusedClosing
	case errors.Is(err, ErrProtocol):
		return RefusedProtocol
	case ctl.IsTimeout(err):
		return RefusedTimeout
	}
	return RefusedOther
}
