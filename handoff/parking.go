package handoff

import "time"

// parkIn parks fd, with its state, in *lot, which the caller's lock
// guards, starting a lot when there is none or the last one emptied and
// ended. It reports false, and leaves fd to the caller, when it cannot
// (parking_linux.go; elsewhere it never can).
func parkIn(lot **parkingLot, idle time.Duration, deliver func(parkedConn) bool, fd int, state []byte) bool {
	if *lot != nil {
		ok, ended := (*lot).park(fd, state)
		if !ended {
			return ok
		}
		// It emptied and ended: past its last delivery, so joining it
		// under the caller's lock is safe.
		(*lot).stop()
		*lot = nil
	}
	l, err := newParkingLot(idle, deliver)
	if err != nil {
		return false
	}
	*lot = l
	ok, _ := l.park(fd, state)
	return ok
}
