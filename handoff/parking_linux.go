//go:build linux

package handoff

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A predecessor's HTTPServer hands over idle keep-alive connections by the
// thousand, and most of their clients send nothing for a while. Adopting
// each at once (a net.Conn, a net/http goroutine and its buffers) is most
// of what the move costs this process, paid while both processes share
// the CPUs. A listener that HTTPServer serves parks them instead: each
// received descriptor goes into an epoll set of its own (one system call,
// no goroutine), and is adopted and queued for Accept only once its
// client sends (or hangs up), or its idle timeout passes, when net/http
// closes it as it would have.
//
// Only a connection whose peer speaks next may wait for readability. Those
// HTTPServer hands over are: it lets go of a connection only while
// net/http waits for the next request with nothing read. So are those the
// program hands over with SendIdleConn, which AcceptConn's lot holds
// (acceptqueue.go) with their state; one handed over with SendConn (a
// WebSocket whose server may speak first) is never parked.

// parkRetry is how long a parked connection that could not be adopted
// (out of descriptors) waits before the next try.
const parkRetry = 10 * time.Millisecond

// parkedConn is a descriptor the lot holds, when it was parked, and the
// state it came with (SendIdleConn's).
type parkedConn struct {
	fd    int
	at    time.Time
	state []byte
	seq   uint64 // tells a descriptor number apart from its reuse
}

// parkingLot holds parked connections until they are ready. One goroutine
// (run) waits on the epoll set through the netpoller, with a deadline at
// the next idle timeout; stop ends and joins it.
type parkingLot struct {
	idle    time.Duration         // 0: no idle timeout
	deliver func(parkedConn) bool // adopt and queue it; false: try again later
	f       *os.File              // the epoll set, non-blocking, through the netpoller
	epfd    int
	done    chan struct{} // closed when run returns

	mu      sync.Mutex
	stopped bool
	seq     uint64
	parked  map[int]parkedConn
	order   []parkedConn // by parking time: the idle deadlines in order; stale entries are skipped
	retry   []parkedConn // could not be adopted; tried again at retryAt
	retryAt time.Time
}

func newParkingLot(idle time.Duration, deliver func(parkedConn) bool) (*parkingLot, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	p := &parkingLot{
		idle: idle, deliver: deliver, epfd: epfd, done: make(chan struct{}),
		f:      os.NewFile(uintptr(epfd), "parked-connections"),
		parked: make(map[int]parkedConn),
	}
	rc, err := p.f.SyscallConn()
	if err != nil {
		p.f.Close()
		return nil, err
	}
	go p.run(rc)
	return p, nil
}

// park takes fd, with its state, which the lot owns from then on, or
// reports false and leaves it to the caller; ended says the lot had
// emptied and ended (the caller joins it with stop, and parks in a new
// one: parkIn).
func (p *parkingLot) park(fd int, state []byte) (ok, ended bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false, true
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return false, false
	}
	p.seq++
	pc := parkedConn{fd: fd, at: time.Now(), state: state, seq: p.seq}
	p.parked[fd] = pc
	if p.idle > 0 {
		p.order = append(p.order, pc)
		if len(p.order) == 1 {
			p.setDeadlineLocked()
		}
	}
	return true, false
}

// run delivers the connections that become ready, and those whose idle
// timeout passes, until stop closes the epoll set.
func (p *parkingLot) run(rc syscall.RawConn) {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		var ready []int
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := unix.EpollWait(int(fd), events, 0)
				if err == unix.EINTR {
					continue
				}
				if n <= 0 {
					return false // nothing yet: the netpoller waits
				}
				for _, e := range events[:n] {
					ready = append(ready, int(e.Fd))
				}
				return true
			}
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return // stop closed the set
		}
		p.wake(ready, time.Now())
	}
}

// wake delivers the ready descriptors, the expired ones and, when their
// time has come, those to retry; then it sets the next deadline.
func (p *parkingLot) wake(ready []int, now time.Time) {
	p.mu.Lock()
	var out []parkedConn
	for _, fd := range ready {
		if pc, ok := p.parked[fd]; ok {
			out = append(out, p.unparkLocked(pc))
		}
	}
	for len(p.order) > 0 {
		pc := p.order[0]
		if cur, ok := p.parked[pc.fd]; ok && cur.seq == pc.seq {
			if now.Before(pc.at.Add(p.idle)) {
				break
			}
			out = append(out, p.unparkLocked(pc))
		}
		p.order = p.order[1:]
	}
	if len(p.retry) > 0 && !now.Before(p.retryAt) {
		out = append(out, p.retry...)
		p.retry = nil
	}
	p.mu.Unlock()
	var failed []parkedConn
	for _, pc := range out {
		if !p.deliver(pc) {
			failed = append(failed, pc)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(failed) > 0 {
		p.retry = append(p.retry, failed...)
		p.retryAt = now.Add(parkRetry)
	}
	if len(p.parked) == 0 && len(p.retry) == 0 {
		// Empty: end, so that a process holds no epoll set (and no
		// goroutine) once the move is over. run returns at its next
		// wait, having delivered everything.
		p.stopped = true
		p.f.Close()
		return
	}
	p.setDeadlineLocked()
}

// unparkLocked removes pc from the epoll set and the lot; its descriptor
// is the caller's.
func (p *parkingLot) unparkLocked(pc parkedConn) parkedConn {
	if !p.stopped { // after stop, epfd's number may be another file's
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, pc.fd, nil)
	}
	delete(p.parked, pc.fd)
	return pc
}

// setDeadlineLocked sets run's deadline to the next idle timeout or retry.
func (p *parkingLot) setDeadlineLocked() {
	if p.stopped {
		return
	}
	var next time.Time
	for len(p.order) > 0 {
		pc := p.order[0]
		if cur, ok := p.parked[pc.fd]; ok && cur.seq == pc.seq {
			next = pc.at.Add(p.idle)
			break
		}
		p.order = p.order[1:]
	}
	if len(p.retry) > 0 && (next.IsZero() || p.retryAt.Before(next)) {
		next = p.retryAt
	}
	p.f.SetReadDeadline(next)
}

// stop closes the epoll set (unless the lot ended, empty), joins run, and
// returns the connections still parked: the caller owns their
// descriptors.
func (p *parkingLot) stop() []parkedConn {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.f.Close() // wakes run, which returns
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.retry
	for _, pc := range p.parked {
		out = append(out, pc)
	}
	p.parked, p.order, p.retry = nil, nil, nil
	return out
}

// heldFD is the descriptor of a parked connection that goes on to the
// successor without being adopted: unlike a net.Conn it needs no
// descriptor of its own (net.FileConn duplicates), so a process at its
// open-file limit still passes every one on, and costs no system call
// but the close. It is a syscall.Conn for the link; Close waits for a
// Control under way, so that the number is never another file's while
// the link sends it.
type heldFD struct {
	mu     sync.RWMutex
	fd     int
	closed bool
}

func (h *heldFD) SyscallConn() (syscall.RawConn, error) { return h, nil }

func (h *heldFD) Control(f func(fd uintptr)) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return os.ErrClosed
	}
	f(uintptr(h.fd))
	return nil
}

func (h *heldFD) Read(func(fd uintptr) bool) error  { return errors.ErrUnsupported }
func (h *heldFD) Write(func(fd uintptr) bool) error { return errors.ErrUnsupported }

func (h *heldFD) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	h.closed = true
	return unix.Close(h.fd)
}

// holdFD holds fd, a received connection, for passing on.
func holdFD(fd int) (heldConn, bool) { return &heldFD{fd: fd}, true }

// closeParked closes parked connections' descriptors: nobody will serve
// them.
func closeParked(parked []parkedConn) {
	for _, pc := range parked {
		unix.Close(pc.fd)
	}
}

// heldParked holds parked connections' descriptors for passing on; the
// caller owns them.
func heldParked(parked []parkedConn) []heldConn {
	out := make([]heldConn, len(parked))
	for i, pc := range parked {
		out[i] = &heldFD{fd: pc.fd}
	}
	return out
}
