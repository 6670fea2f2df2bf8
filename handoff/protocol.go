package handoff

import (
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/wire"
)

// What both sides of the control socket share: reading a message of the
// expected type, refusing a peer, and the words for a peer that is gone.

// recvMsg reads one message without descriptors. A refusal from the peer
// comes back as a *RefusedError.
func recvMsg(cc *ctl.Conn, deadline time.Time) (wire.Message, error) {
	m, err := cc.RecvMsg(deadline)
	if err != nil {
		return nil, err
	}
	if r, ok := m.(wire.Refusal); ok {
		return nil, &RefusedError{Code: RefusalCode(r.Code), Reason: r.Reason}
	}
	return m, nil
}

// expect reads the next message and requires it to be a T.
func expect[T wire.Message](cc *ctl.Conn, deadline time.Time) (T, error) {
	var zero T
	m, err := recvMsg(cc, deadline)
	if err != nil {
		return zero, err
	}
	t, ok := m.(T)
	if !ok {
		return zero, errorf("%w: expected %s message, got %s", ErrProtocol, zero.Type(), m.Type())
	}
	return t, nil
}

// refuse tells the peer why err ends the conversation. A refusal this
// process received is passed on in its own words, so that reasons never
// nest ("peer refused: peer refused: ...").
func refuse(cc *ctl.Conn, err error) {
	var refused *RefusedError
	if errors.As(err, &refused) {
		cc.Refuse(uint16(refused.Code), refused.Reason)
		return
	}
	cc.Refuse(uint16(refusalFor(err)), strings.TrimPrefix(err.Error(), "handoff: "))
}

// peerGone says in words that the peer closed the connection (it exited,
// most likely), when err says so in a read's terms.
func peerGone(who string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return errorf("%s closed the connection (exited?): %w", who, err)
	}
	return err
}

// ctxErr prefers ctx's own error over the I/O error that its cancellation
// caused, so callers can test errors.Is(err, context.Canceled).
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
