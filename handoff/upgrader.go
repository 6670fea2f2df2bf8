package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
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

// stateErr is why an upgrade cannot start in state s.
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

	ctx    context.Context // canceled by Close; bounds every session
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines this Upgrader started
	exit   chan struct{}  // closed once a successor has taken over

	mu         sync.Mutex
	state      lifecycle
	generation uint32
	ctrl       *net.UnixListener      // this process's copy of the control socket
	pred       *ctlConn               // link to the predecessor, until it exits
	succ       *successorLink         // link to the successor, after the handover
	sessions   map[*ctlConn]struct{} // control connections being served
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
		image:    img,
		exit:     make(chan struct{}),
		sessions: make(map[*ctlConn]struct{}),
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

// findPredecessor returns the control connection to the process this one
// succeeds, or, when there is none, the newly bound control socket.
func (u *Upgrader) findPredecessor(ctx context.Context) (*ctlConn, *net.UnixListener, error) {
	if cc, err := inheritedControlConn(); cc != nil || err != nil {
		return cc, nil, err
	}
	path := u.cfg.Socket
	// The lock serialises processes starting at the same moment, so that
	// only a socket file proven stale under it is ever replaced.
	unlock, err := lockFile(ctx, path+".lock")
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: lock %s: %w", path, err)
	}
	defer unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err == nil {
		return newCtlConn(c.(*net.UnixConn), maxMessageSize, maxFDsPerMessage), nil, nil
	}
	switch {
	case isConnRefused(err):
		u.log.Info("replacing stale control socket", "socket", path)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, nil, fmt.Errorf("handoff: remove stale control socket: %w", err)
		}
	case !isNotExist(err):
		return nil, nil, fmt.Errorf("handoff: connect to control socket: %w", err)
	}
	ln, err := listenControlSocket(path)
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: control socket: %w", err)
	}
	return nil, ln, nil
}

// takeOver runs the successor's half of the handoff up to ready: say
// hello, receive every socket, acknowledge each batch.
func (u *Upgrader) takeOver(ctx context.Context, cc *ctlConn) error {
	stop := cc.bind(ctx)
	defer stop()
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	h := hello{MinVersion: protocolVersion, MaxVersion: protocolVersion, Caps: supportedCaps, PID: uint32(u.pid), Name: u.cfg.Name}
	if err := cc.send(h, nil, step()); err != nil {
		return fmt.Errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	w, err := expect[welcome](cc, step())
	if err != nil {
		return fmt.Errorf("handoff: take over: %w", ctxErr(ctx, err))
	}
	if w.Version != protocolVersion {
		return fmt.Errorf("handoff: take over: %w: predecessor chose version %d", ErrProtocol, w.Version)
	}
	u.generation = w.Generation + 1
	u.log = u.log.With("generation", u.generation)
	for received, seq := uint32(0), uint32(0); received < w.Sockets; seq++ {
		m, fds, err := cc.recv(step())
		if err != nil {
			return fmt.Errorf("handoff: take over: receive sockets: %w", ctxErr(ctx, err))
		}
		batch, ok := m.(fdBatch)
		switch {
		case !ok:
			err = fmt.Errorf("%w: expected fds message, got %s", ErrProtocol, m.msgType())
		case batch.Seq != seq:
			err = fmt.Errorf("%w: fd batch %d, expected %d", ErrProtocol, batch.Seq, seq)
		case len(batch.Entries) == 0 || len(batch.Entries) != len(fds):
			err = fmt.Errorf("%w: fd batch of %d entries carries %d descriptors", ErrProtocol, len(batch.Entries), len(fds))
		case uint64(received)+uint64(len(fds)) > uint64(w.Sockets):
			err = fmt.Errorf("%w: more sockets than the %d announced", ErrProtocol, w.Sockets)
		}
		if err != nil {
			closeFDs(fds)
			return fmt.Errorf("handoff: take over: %w", err)
		}
		for i, e := range batch.Entries {
			u.reg.inherit(e, os.NewFile(uintptr(fds[i]), e.key()), fromPredecessor)
		}
		received += uint32(len(fds))
		if err := cc.send(ack{Seq: seq}, nil, step()); err != nil {
			return fmt.Errorf("handoff: take over: %w", ctxErr(ctx, err))
		}
	}
	u.log.Info("received sockets from predecessor", "predecessor", w.PID, "sockets", w.Sockets)
	return nil
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
// claimed are closed and logged.
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
	for _, d := range u.reg.dropUnclaimed() {
		u.log.Warn("closed inherited socket that no Listen call claimed", "key", d.key(), "network", d.Network, "address", d.Address, "from", d.source)
	}
	if pred != nil {
		ctrl, err := u.completeTakeover(pred)
		if err != nil {
			return err
		}
		u.mu.Lock()
		u.ctrl = ctrl
		u.mu.Unlock()
	}

	u.mu.Lock()
	if u.state != stateStarting {
		u.mu.Unlock()
		return ErrClosed
	}
	u.state = stateServing
	u.wg.Add(1)
	go u.serveControl(u.ctrl)
	if pred != nil {
		u.wg.Add(1)
		go u.receiveConns(pred)
	}
	u.mu.Unlock()

	if u.cfg.PIDFile != "" {
		if err := writePIDFile(u.cfg.PIDFile, u.pid); err != nil {
			u.log.Warn("cannot write pid file", "path", u.cfg.PIDFile, "err", err)
		}
	}
	if pred == nil {
		u.notify("READY=1", u.status("serving: generation %d, pid %d, %d sockets", u.generation, u.pid, len(u.reg.keys())))
	}
	u.log.Info("ready", "sockets", len(u.reg.keys()))
	return nil
}

// completeTakeover tells the predecessor this process is ready and waits
// for it to stop accepting. It returns the control socket, which this
// process serves from now on.
func (u *Upgrader) completeTakeover(pred *ctlConn) (*net.UnixListener, error) {
	f := u.reg.takeControl()
	if f == nil {
		return nil, fmt.Errorf("handoff: %w: predecessor sent no control socket", ErrProtocol)
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited control socket: %w", err)
	}
	ctrl, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("handoff: %w: control socket is %T", ErrProtocol, ln)
	}
	if err := pred.send(ready{PID: uint32(u.pid), Keys: u.reg.keys()}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
		ctrl.Close()
		return nil, fmt.Errorf("handoff: tell predecessor: %w", err)
	}
	// Once it has read ready the predecessor stops for good, so from here
	// on this process serves whatever the predecessor answers.
	_, err = expect[done](pred, time.Now().Add(u.cfg.StepTimeout))
	var refused *RefusedError
	switch {
	case err == nil:
		u.log.Info("predecessor stopped accepting; serving")
	case errors.As(err, &refused):
		ctrl.Close()
		return nil, fmt.Errorf("handoff: predecessor gave up: %w", err)
	default:
		u.log.Warn("predecessor did not confirm the handover; serving anyway", "err", err)
	}
	return ctrl, nil
}

// serveControl accepts connections on the control socket, each a process
// that wants to take over, until the socket is closed.
func (u *Upgrader) serveControl(ln *net.UnixListener) {
	defer u.wg.Done()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				u.log.Error("control socket failed", "err", err)
			}
			return
		}
		cc := newCtlConn(c, smallMessage, 0)
		if !u.track(cc) {
			cc.Close()
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer u.untrack(cc)
			if err := u.handOff(u.ctx, cc, nil); err != nil {
				u.log.Warn("takeover refused or failed; still serving", "err", err)
			}
		}()
	}
}

// track records a control connection so that Close can interrupt it.
func (u *Upgrader) track(cc *ctlConn) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state == stateClosed {
		return false
	}
	u.sessions[cc] = struct{}{}
	return true
}

// untrack closes cc unless the handover made it the successor link.
func (u *Upgrader) untrack(cc *ctlConn) {
	u.mu.Lock()
	_, ok := u.sessions[cc]
	delete(u.sessions, cc)
	u.mu.Unlock()
	if ok {
		cc.Close()
	}
}

// Upgrade starts a fresh copy of the program (the executable is read from
// disk again; same arguments, environment and working directory) and
// hands the sockets over to it. It returns nil once the successor is
// ready: Exit is closed and this process should drain and exit. On any
// failure (the successor exits, hangs past ReadyTimeout, breaks the
// protocol, or ctx ends) the successor is killed and this process keeps
// serving as before.
func (u *Upgrader) Upgrade(ctx context.Context) error {
	if err := u.reserve(); err != nil {
		return err
	}
	child, cc, err := u.startSuccessor()
	if err != nil {
		u.release(err)
		return fmt.Errorf("handoff: start successor: %w", err)
	}
	if !u.track(cc) {
		cc.Close()
		child.kill()
		return ErrClosed
	}
	defer u.untrack(cc)
	u.log.Info("started successor", "successor", child.pid())
	if err := u.handOff(ctx, cc, child); err != nil {
		return err
	}
	child.release()
	return nil
}

// reserve claims the single upgrade slot.
func (u *Upgrader) reserve() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.state.upgradeErr(); err != nil {
		return err
	}
	u.state = stateUpgrading
	return nil
}

// release gives the upgrade slot back after a failed upgrade.
func (u *Upgrader) release(cause error) {
	u.mu.Lock()
	released := u.state == stateUpgrading
	if released {
		u.state = stateServing
	}
	u.mu.Unlock()
	if released {
		u.notify("READY=1", u.status("serving: generation %d, pid %d; upgrade failed: %v", u.generation, u.pid, cause))
	}
}

// handOff runs the serving side of the protocol on cc. For a takeover,
// the upgrade slot is reserved once the peer's hello checks out; Upgrade
// reserved it already and passes the child it started. On success the
// successor serves and cc has become the successor link; on failure this
// process keeps serving.
func (u *Upgrader) handOff(ctx context.Context, cc *ctlConn, child *successorProcess) (err error) {
	stop := cc.bind(ctx)
	defer stop()
	reserved := child != nil
	defer func() {
		if err == nil {
			return
		}
		err = ctxErr(ctx, err)
		code := refusalFor(err)
		var refused *RefusedError
		if errors.As(err, &refused) {
			code = refused.Code
		}
		cc.refuse(code, err.Error())
		if child != nil {
			child.kill()
		}
		if reserved {
			u.release(err)
			err = fmt.Errorf("%w: %w", ErrSuccessorFailed, err)
		}
	}()

	start := time.Now()
	step := func() time.Time { return time.Now().Add(u.cfg.StepTimeout) }
	h, err := expect[hello](cc, step())
	if err != nil {
		return fmt.Errorf("waiting for hello: %w", err)
	}
	succPID, err := u.checkPeer(cc, h, child)
	if err != nil {
		return err
	}
	if !reserved {
		if err := u.reserve(); err != nil {
			return err
		}
		reserved = true
	}
	log := u.log.With("successor", succPID)
	log.Info("handing over to successor")
	u.notify(reloading(), u.status("upgrading: generation %d, pid %d, handing over to pid %d", u.generation, u.pid, succPID))

	items := u.handoverItems()
	if err := cc.send(welcome{Version: protocolVersion, Caps: supportedCaps, PID: uint32(u.pid), Generation: u.generation, Sockets: uint32(len(items))}, nil, step()); err != nil {
		return err
	}
	if err := sendSockets(cc, items, u.cfg.StepTimeout); err != nil {
		return fmt.Errorf("sending sockets: %w", err)
	}
	r, err := expect[ready](cc, start.Add(u.cfg.ReadyTimeout))
	if err != nil {
		return fmt.Errorf("waiting for ready: %w", err)
	}
	if int(r.PID) != int(h.PID) {
		return fmt.Errorf("%w: ready from pid %d, hello from pid %d", ErrProtocol, r.PID, h.PID)
	}
	if peerClosed(cc.c) {
		return fmt.Errorf("successor exited right after saying it was ready")
	}
	if err := u.commit(cc, succPID, r, h.Caps); err != nil {
		return err
	}
	log.Info("successor is ready; stopped accepting", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// checkPeer accepts a successor only if it runs as this user (or root),
// speaks this protocol version and belongs to the same service. It returns
// the successor's pid as this process sees it.
func (u *Upgrader) checkPeer(cc *ctlConn, h hello, child *successorProcess) (int, error) {
	credPID, uid, err := peerCred(cc.c)
	if err != nil {
		return 0, err
	}
	if uid != os.Geteuid() && uid != 0 {
		return 0, &RefusedError{Code: RefusedPermission, Reason: fmt.Sprintf("peer runs as uid %d, this service as uid %d", uid, os.Geteuid())}
	}
	if h.MinVersion > protocolVersion || h.MaxVersion < protocolVersion {
		return 0, &RefusedError{Code: RefusedVersion, Reason: fmt.Sprintf("peer speaks protocol versions %d to %d, this process %d", h.MinVersion, h.MaxVersion, protocolVersion)}
	}
	if h.Name != u.cfg.Name {
		return 0, &RefusedError{Code: RefusedName, Reason: fmt.Sprintf("peer is service %q, this is %q", h.Name, u.cfg.Name)}
	}
	if child != nil {
		return child.pid(), nil // a socketpair's credentials are our own
	}
	return credPID, nil
}

// handoverItem is one socket to pass, with the description that goes with it.
type handoverItem struct {
	entry
	conn syscall.Conn
}

// handoverItems lists what a successor receives: every socket in use and
// the control socket itself.
func (u *Upgrader) handoverItems() []handoverItem {
	var items []handoverItem
	for _, s := range u.reg.inventory() {
		items = append(items, handoverItem{entry: s.entry, conn: s.conn()})
	}
	u.mu.Lock()
	ctrl := u.ctrl
	u.mu.Unlock()
	if ctrl != nil {
		items = append(items, handoverItem{entry: entry{Kind: kindControl, Network: "unixpacket", Address: u.cfg.Socket}, conn: ctrl})
	}
	return items
}

// sendSockets passes items in batches that respect the kernel's limit on
// descriptors per message, and waits for each batch's acknowledgement.
func sendSockets(cc *ctlConn, items []handoverItem, step time.Duration) error {
	for seq := uint32(0); len(items) > 0; seq++ {
		n, size := 0, 0
		for n < len(items) && n < maxFDsPerMessage && (n == 0 || size+items[n].encodedLen() <= maxBatchPayload) {
			size += items[n].encodedLen()
			n++
		}
		batch := fdBatch{Seq: seq}
		fds := make([]int, 0, n)
		for _, it := range items[:n] {
			fd, err := dupFD(it.conn)
			if err != nil {
				closeFDs(fds)
				return fmt.Errorf("duplicate %s: %w", it.key(), err)
			}
			fds = append(fds, fd)
			batch.Entries = append(batch.Entries, it.entry)
		}
		err := cc.send(batch, fds, time.Now().Add(step))
		closeFDs(fds)
		if err != nil {
			return err
		}
		a, err := expect[ack](cc, time.Now().Add(step))
		if err != nil {
			return err
		}
		if a.Seq != seq {
			return fmt.Errorf("%w: ack for batch %d, expected %d", ErrProtocol, a.Seq, seq)
		}
		items = items[n:]
	}
	return nil
}

// commit makes the successor the server: this process closes its copies
// of the sockets (the kernel sockets live on in the successor, so nothing
// queued is lost), tells the successor, and closes Exit.
func (u *Upgrader) commit(cc *ctlConn, succPID int, r ready, caps uint64) error {
	u.mu.Lock()
	if u.state != stateUpgrading {
		u.mu.Unlock()
		return ErrClosed
	}
	u.state = stateHandedOver
	ctrl := u.ctrl
	u.ctrl = nil
	delete(u.sessions, cc) // the link outlives the session
	u.succ = newSuccessorLink(cc, succPID, r.Keys, caps, u.cfg.StepTimeout)
	u.mu.Unlock()

	close(u.exit) // before the sockets close, so Serve can tell why they did
	u.reg.closeSockets(false)
	if ctrl != nil {
		ctrl.Close()
	}
	u.notify(fmt.Sprintf("MAINPID=%d", succPID), "READY=1", u.status("serving: generation %d, pid %d", u.generation+1, succPID))
	if err := cc.send(done{}, nil, time.Now().Add(u.cfg.StepTimeout)); err != nil {
		u.log.Warn("could not confirm the handover to the successor", "err", err)
	}
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
	u.reg.closeSockets(true)
	if wasServing {
		u.notify("STOPPING=1", u.status("stopping: generation %d, pid %d", u.generation, u.pid))
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
	for cc := range u.sessions {
		sessions = append(sessions, cc)
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
