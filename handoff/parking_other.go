//go:build !linux

package handoff

import (
	"errors"
	"time"
)

// Elsewhere handed-over connections are adopted as they arrive.

type parkedConn struct {
	fd    int
	at    time.Time
	state []byte
}

type parkingLot struct{}

func newParkingLot(time.Duration, func(parkedConn) bool) (*parkingLot, error) {
	return nil, errors.ErrUnsupported
}

func (*parkingLot) park(int, []byte) (ok, ended bool) { return false, false }
func (*parkingLot) stop() []parkedConn                { return nil }

func heldParked([]parkedConn) []heldConn { return nil }
func closeParked([]parkedConn)           {}

// holdFD reports false: nothing is handed over to be passed on.
func holdFD(int) (heldConn, bool) { return nil, false }
