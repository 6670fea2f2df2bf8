package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// lifecycle is where an Upgrader stands.
type lifecycle int

const (
	stateStarting   lifecycle = iota // New returned; Ready not called yet
	stateServing                     // ready; an upgrade may start
	stateUpgrading                   // one successor is being handed the sockets
	stateHandedOver                  // a successor serves; this process drains
	stateClosed
)

// upgradeErr is why an upgrade cannot start in state s.
func (s lifecycle) upgradeErr() error {
	switch s {
	case stateStarting:
		return ErrNotReady
	case stateUpgrading:
		return ErrInProgress
	case stateHandedOver:
		return ErrHandedOver
	case stateClosed:
		return ErrClosed
	}
	return nil
}

// An Upgrader gives a server listening sockets that survive restarts.
//
// New either takes the sockets over from a running predecessor (a process
// of the same service on the same control socket) or starts fresh. The
// program then opens its sockets with Listen and ListenPacket, starts
// serving, and calls Ready. From then on it can hand everything over: to a
// fresh copy of itself with Upgrade, or to any new process that calls New
// with the same control socket. Once a successor is ready, Exit is closed:
// the program drains its in-flight work and exits.
//
// An Upgrader is safe for concurrent use.
type Upgrader struct {
	cfg   Config
	log   *slog.Logger
	pid   int
	image image

	reg   registry
	conns connQueue // connections handed over for AcceptConn
	sd    systemdState

	ctx    context.Context // canceled by Close; bounds every session
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines this Upgrader started
	ready  chan struct{}  // closed once Ready has succeeded
	exit   chan struct{}  // closed once a successor has taken over

	started time.Time

	mu         sync.Mutex
	state      lifecycle
	lastReload *ReloadResult
	generation uint32
	ctrl       *net.UnixListener // this process's copy of the control socket
	pred       *ctlConn          // link to the predecessor, until it exits
	succ       *successorLink    // link to the successor, after the handover
	sessions   map[*ctlConn]bool // control connections being served: true if Close interrupts it
}

// New returns an Upgrader for the service cfg describes. When a process
// of the same service serves on cfg.Socket, or started this one with
// Upgrade, New receives its sockets before it returns; Listen then finds
// them. Otherwise New binds the control socket and starts the first
// generation, with the sockets systemd passed, if any.
//
// A predecessor that is not ready yet, or busy with another upgrade,
// refuses: New then fails with an error matching ErrNotReady or
// ErrInProgress, and nothing changes for the predecessor.
func New(ctx context.Context, cfg Config) (*Upgrader, error) {
	if err := platformSupported(); err != nil {
		return nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	img, err := currentImage()
	if err != nil {
		return nil, fmt.Errorf("handoff: locate own executable: %w", err)
	}
	u := &Upgrader{
		cfg:      cfg,
		pid:      os.Getpid(),
		started:  time.Now(),
		image:    img,
		ready:    make(chan struct{}),
		exit:     make(chan struct{}),
		sessions: make(map[*ctlConn]bool),
	}
	u.log = cfg.Logger.With("pid", u.pid)
	u.ctx, u.cancel = context.WithCancel(context.Background())
	u.inheritSystemd()

	pred, ctrl, err := u.findPredecessor(ctx)
	if err != nil {
		u.Close()
		return nil, err
	}
	if pred == nil {
		u.ctrl, u.generation = ctrl, 1
		u.conns.finish() // nobody will hand connections over
		u.log = u.log.With("generation", u.generation)
		u.log.Info("starting fresh", "socket", cfg.Socket)
		u.wg.Add(1)
		go u.serveControl(ctrl) // refuses takeovers until Ready
		return u, nil
	}
	if err := u.takeOver(ctx, pred); err != nil {
		pred.Close()
		u.Close()
		return nil, err
	}
	u.pred = pred
	return u, nil
}

// Listen returns a listener for network ("tcp", "tcp4", "tcp6", "unix",
// "unixpacket") and address: the predecessor's socket for the same network
// and address when there is one, else a socket from systemd bound to that
// address, else a new one. The Upgrader owns it: it closes its copy when a
// successor takes over, and on Close. The listener also yields the
// connections a predecessor hands over (see HTTPServer), and implements
// syscall.Conn.
func (u *Upgrader) Listen(network, address string) (net.Listener, error) {
	return u.ListenNamed("", network, address)
}

// ListenNamed is Listen for a named socket. The name identifies the socket
// across generations and matches systemd's FileDescriptorName=: a socket
// from systemd with this name is used whatever its address.
func (u *Upgrader) ListenNamed(name, network, address string) (net.Listener, error) {
	s, err := u.open(entry{Kind: kindListener, Network: network, Address: address, Name: name})
	if err != nil {
		return nil, err
	}
	return s.ln, nil
}

// ListenPacket is Listen for datagram sockets: network is "udp", "udp4",
// "udp6" or "unixgram". Once a successor takes over, only it reads from
// the socket.
func (u *Upgrader) ListenPacket(network, address string) (net.PacketConn, error) {
	return u.ListenPacketNamed("", network, address)
}

// ListenPacketNamed is ListenPacket for a named socket (see ListenNamed).
func (u *Upgrader) ListenPacketNamed(name, network, address string) (net.PacketConn, error) {
	s, err := u.open(entry{Kind: kindPacket, Network: network, Address: address, Name: name})
	if err != nil {
		return nil, err
	}
	return s.pc, nil
}

func (u *Upgrader) open(e entry) (*socket, error) {
	if len(e.Name) > maxStringLen || len(e.Network) > maxStringLen || len(e.Address) > maxStringLen {
		return nil, fmt.Errorf("handoff: socket description longer than %d bytes", maxStringLen)
	}
	s, err := u.reg.open(u.ctx, e)
	if err != nil {
		return nil, err
	}
	if s.source != "" {
		u.log.Debug("using inherited socket", "key", s.key(), "from", s.source)
	}
	return s, nil
}

// Ready says that the program serves on its sockets. A predecessor stops
// accepting only now, and drains; this process then owns the control
// socket and can itself be upgraded. Inherited sockets that no Listen call
// claimed are closed and logged. Call it once Accept loops run (or are
// started, as with `go srv.Serve(ln)`): connections the predecessor hands
// over arrive from the moment it hears ready, and wait until accepted.
//
// If the predecessor gave up waiting (its ReadyTimeout passed), Ready
// fails: the predecessor still serves, and this process should exit.
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	state, pred := u.state, u.pred
	u.mu.Unlock()
	switch state {
	case stateStarting:
	case stateClosed:
		return ErrClosed
	default:
		return errors.New("handoff: Ready called twice")
	}
	dropped := u.reg.dropUnclaimed()
	for _, d := range dropped {
		u.log.Warn("closed inherited socket that no Listen call claimed", "key", d.key(), "network", d.Network, "address", d.Address, "from", d.source)
	}
	var ctrl *net.UnixListener
	if pred != nil {
		var err error
		if ctrl, err = u.completeTakeover(pred); err != nil {
			return err
		}
	}

	u.mu.Lock()
	if u.state != stateStarting {
		u.mu.Unlock()
		if ctrl != nil {
			ctrl.Close()
		}
		return ErrClosed
	}
	u.state = stateServing
	close(u.ready)
	if pred != nil {
		u.ctrl = ctrl
		u.wg.Add(2)
		go u.serveControl(ctrl)
		go u.receiveConns(pred)
	}
	u.mu.Unlock()

	u.writePIDFile(u.pid)
	u.announceReady(pred == nil, dropped)
	u.log.Info("ready", "sockets", len(u.reg.keys()))
	return nil
}

// stopped reports whether this process has stopped serving its sockets:
// handed over, stopped or closed.
func (u *Upgrader) stopped() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state == stateHandedOver || u.state == stateClosed
}

// Exit returns a channel that is closed once a successor has taken over.
// The program should then finish its in-flight work and exit.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// Generation counts the processes that have served so far: 1 for a fresh
// start, one more for each successor.
func (u *Upgrader) Generation() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return int(u.generation)
}

// Stop announces that this process is stopping with no successor: it
// refuses further upgrades, closes its listening sockets so that no new
// connection is accepted, and tells systemd STOPPING=1. The program then
// drains its in-flight work and calls Close. Stop does nothing once a
// successor has taken over.
func (u *Upgrader) Stop() {
	u.mu.Lock()
	if u.state == stateHandedOver || u.state == stateClosed {
		u.mu.Unlock()
		return
	}
	wasServing := u.state != stateStarting
	u.state = stateClosed // refuses upgrades from here on
	ctrl := u.ctrl
	u.ctrl = nil
	u.mu.Unlock()
	if ctrl != nil {
		ctrl.Close()
		os.Remove(u.cfg.Socket)
	}
	// Sockets in systemd's fd store live on for the next start: their
	// paths stay.
	closeConns(u.reg.closeSockets(u.sd.storeMax <= 0))
	if wasServing {
		u.notify("STOPPING=1", u.status("stopping", "draining"))
	}
}

// Close stops hard: it closes the control socket and every socket this
// process holds, interrupts an upgrade in flight (killing a successor
// Upgrade started), and waits for the Upgrader's goroutines. After a
// handover it leaves the sockets, the control socket and the pid file to
// the successor. Close is idempotent.
func (u *Upgrader) Close() error {
	u.mu.Lock()
	prev := u.state
	u.state = stateClosed
	ctrl, pred, succ := u.ctrl, u.pred, u.succ
	u.ctrl, u.pred, u.succ = nil, nil, nil
	sessions := make([]*ctlConn, 0, len(u.sessions))
	for cc, interrupt := range u.sessions {
		if interrupt {
			sessions = append(sessions, cc)
		}
	}
	u.mu.Unlock()

	u.cancel()
	handedOver := prev == stateHandedOver
	if ctrl != nil {
		ctrl.Close()
		if !handedOver {
			os.Remove(u.cfg.Socket)
		}
	}
	for _, cc := range sessions {
		cc.Close()
	}
	if pred != nil {
		pred.Close()
	}
	if succ != nil {
		succ.close()
	}
	u.wg.Wait()
	u.reg.close(!handedOver)
	u.conns.close()
	if !handedOver && u.cfg.PIDFile != "" {
		removePIDFile(u.cfg.PIDFile, u.pid)
	}
	return nil
}
