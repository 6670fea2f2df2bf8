package handoff

import (
	"context"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/hooks"
	"github.com/handoffd/handoff/internal/wire"
)

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
// Following one upgrade: the old process's side is in serving.go (the
// control socket, Upgrade, the handover) and spawn.go (the successor it
// starts); the new process's side in succeeding.go; the state both move
// through in lifecycle.go, its only writer; connections that follow the
// handover in link.go.
//
// An Upgrader is safe for concurrent use.
type Upgrader struct {
	cfg     Config
	log     *slog.Logger
	pid     int
	image   image
	started time.Time
	// noHandoff says why this platform serves without the handoff (see
	// New); nil where it hands over. Set by New, then only read.
	noHandoff error

	reg   registry
	conns connQueue // connections handed over for AcceptConn
	sd    systemdState

	ctx    context.Context // canceled by Close; bounds every session
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines this Upgrader started
	// forwards is read-held by each connection being passed on to the
	// successor; Close takes it to let them finish before it closes the
	// link.
	forwards sync.RWMutex
	ready    chan struct{} // closed once Ready has succeeded
	exit     chan struct{} // closed once a successor has taken over

	mu sync.Mutex
	// Written only by the transitions in lifecycle.go.
	state       lifecycle
	readyCalled bool
	generation  uint32
	ctrl        *net.UnixListener      // this process's copy of the control socket
	pred        *ctl.Conn              // link to the predecessor, until it exits
	predPID     int                    // the predecessor's pid, as it said in welcome
	predCaps    uint64                 // what the predecessor said it supports, in welcome
	succ        *successorLink         // link to the successor, after the handover
	canary      *canary                // the window after a commit, while it runs
	queued      []queuedConn           // handed-over connections to forward, from the commit
	sessions    map[*ctl.Conn]struct{} // control connections Close interrupts
	// Written by Ready and by each upgrade, for Status.
	dropped    []SocketStatus
	lastReload *ReloadResult
	predBuild  *Build // written by the takeover
	// Set once, before Ready, by the wrapper (hooks.Wrap).
	wrapper hooks.Wrapper

	// testHookExit, set by tests before an upgrade, runs in handOver
	// just after Exit is closed, as a program that acts on Exit would.
	testHookExit func()
}

// New returns an Upgrader for the service cfg describes. When a process
// of the same service serves on cfg.Socket, or started this one with
// Upgrade, New receives its sockets before it returns; Listen then finds
// them. Otherwise New binds the control socket and starts the first
// generation, with the sockets systemd passed, if any.
//
// A predecessor that is not ready yet, or busy with another upgrade,
// refuses: New then fails with an error matching ErrNotReady or
// ErrInProgress, and nothing changes for the predecessor. A control
// socket served by a process of another user (not root) is not trusted:
// New fails before sending it anything. So does New when the control
// socket's directory can be written by other users (unless it is sticky,
// as /tmp is, and any socket file there is this user's), or when the pid
// file cannot be written.
//
// On a platform that cannot pass sockets between processes (all but
// Linux today), New returns an Upgrader that serves without the handoff:
// Listen binds (or takes systemd's sockets), Ready, Stop, Exit, Close,
// Status and HTTPServer work as for a first generation that is never
// upgraded; no control socket is bound, and Upgrade (and a reload
// request) fail with ErrNotSupported. A server written for Linux thus
// runs unchanged on a developer's Mac, and restarts there by stopping
// and starting. Status.NoHandoff says so.
func New(ctx context.Context, cfg Config) (*Upgrader, error) {
	noHandoff := handoffSupport()
	cfg, err := cfg.withDefaults(noHandoff == nil)
	if err != nil {
		return nil, err
	}
	if noHandoff == nil {
		if err := checkSocketDir(cfg.Socket); err != nil {
			return nil, err
		}
	}
	if err := checkPIDFile(cfg.PIDFile); err != nil {
		return nil, err
	}
	img, err := currentImage()
	if err != nil {
		return nil, errorf("handoff: locate own executable: %w", err)
	}
	u := &Upgrader{
		cfg:      cfg,
		pid:      os.Getpid(),
		started:  time.Now(),
		image:    img,
		ready:    make(chan struct{}),
		exit:     make(chan struct{}),
		sessions: make(map[*ctl.Conn]struct{}),
	}
	u.log = cfg.Logger.With("pid", u.pid)
	u.ctx, u.cancel = context.WithCancel(context.Background())
	u.inheritSystemd()
	if noHandoff != nil {
		u.noHandoff = noHandoff
		u.startFresh(nil)
		u.log.Info("serving without handoff: Upgrade and takeovers are not supported here; restart by stopping and starting", "reason", noHandoff)
		return u, nil
	}

	pred, ctrl, err := u.findPredecessor(ctx)
	if err != nil {
		u.Close()
		return nil, err
	}
	if pred == nil {
		u.startFresh(ctrl)
		u.log.Info("starting fresh", "socket", cfg.Socket)
		return u, nil
	}
	if err := u.takeOver(ctx, pred); err != nil {
		pred.Close()
		u.Close()
		return nil, err
	}
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
	s, err := u.open(wire.Entry{Kind: wire.KindListener, Network: network, Address: address, Name: name})
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
	s, err := u.open(wire.Entry{Kind: wire.KindPacket, Network: network, Address: address, Name: name})
	if err != nil {
		return nil, err
	}
	return s.pc, nil
}

func (u *Upgrader) open(e wire.Entry) (*socket, error) {
	if len(e.Name) > wire.MaxStringLen || len(e.Network) > wire.MaxStringLen || len(e.Address) > wire.MaxStringLen {
		return nil, errorf("handoff: socket description longer than %d bytes", wire.MaxStringLen)
	}
	s, err := u.reg.open(u.ctx, e)
	if err != nil {
		return nil, err
	}
	if s.source != "" {
		u.log.Debug("using inherited socket", "socket", describe(s.Entry), "from", s.source)
	}
	return s, nil
}

// Ready says that the program serves on its sockets. A predecessor stops
// accepting only now, and drains; this process then owns the control
// socket and can itself be upgraded. Call it once Accept loops run (or
// are started, as with `go srv.Serve(ln)`): connections the predecessor
// hands over arrive from the moment it hears ready, and wait until
// accepted.
//
// What "the same service" means: a process that calls New with the same
// Config.Name and control socket as a running one, and claims (by Listen
// or ListenPacket) at least one of the sockets it serves. One that claims
// none is another instance of the program, not a successor: Ready refuses
// the takeover, says so in its error (with the other process's pid and
// how to run both side by side: a Name or Socket of its own), and the
// running process keeps serving. Inherited sockets that no Listen call
// claimed (a port a new config dropped) are closed once the predecessor
// has stopped accepting, logged, and listed in Status.Dropped.
//
// If the predecessor gave up waiting (its ReadyTimeout passed), Ready
// fails: the predecessor still serves, and this process should drain
// what it accepted and exit.
func (u *Upgrader) Ready() error {
	if err := u.beginReady(); err != nil {
		return err
	}
	u.mu.Lock()
	pred, predPID := u.pred, u.predPID
	u.mu.Unlock()
	var ctrl *net.UnixListener
	if pred != nil {
		if err := u.reg.claimsPredecessor(); err != nil {
			err = errorf("handoff: pid %d already serves service %q on control socket %s, and this process claimed none of its sockets (%w): "+
				"it is another instance, not a successor, and pid %d keeps serving; to run both, give each its own Config.Name or Config.Socket",
				predPID, u.cfg.Name, u.cfg.Socket, err, predPID)
			refuse(pred, deny(RefusedOther, "pid %d claimed none of the sockets: another instance of the program, not a successor", u.pid))
			return errorf("%w: %w", ErrPeerRejected, err)
		}
		var err error
		if ctrl, err = u.completeTakeover(pred); err != nil {
			return err
		}
	}
	// From here on this process serves: what the predecessor passed is
	// this process's to keep or to close, and its unix socket files too.
	dropped := u.reg.dropUnclaimed()
	for _, d := range dropped {
		u.log.Warn("closed an inherited socket that no Listen call claimed", "socket", d.describe(), "from", d.source)
	}
	if err := u.markReady(ctrl, dropped); err != nil {
		return err
	}
	u.log.Info("ready", "sockets", len(u.reg.keys()))
	return nil
}

// Exit returns a channel that is closed once a successor has taken over
// for good: when it is ready, or, with a canary window, once it has lasted
// the window (or stops, or hands over itself, within it). The program
// should then finish its in-flight work and exit. During the window the
// program's Accept calls wait; they take connections again after a
// rollback.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// Generation counts the processes that have served so far: 1 for a fresh
// start, one more for each successor.
func (u *Upgrader) Generation() int {
	_, gen := u.snapshot()
	return int(gen)
}

// Stop announces that this process is stopping with no successor: it
// refuses further upgrades, closes its listening sockets so that no new
// connection is accepted, and tells systemd STOPPING=1. The program then
// drains its in-flight work and calls Close. Stop does nothing once a
// successor has taken over.
func (u *Upgrader) Stop() {
	wasServing, stopped := u.stop()
	if !stopped {
		return
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
// the successor, and passes on to it first the connections this process
// still holds for it (handed over by its predecessor, never accepted):
// Close waits for those, a step at most each, rather than cut them. A
// process that never became ready removes no file it did not create.
// Close is idempotent.
func (u *Upgrader) Close() error {
	u.close()
	return nil
}
