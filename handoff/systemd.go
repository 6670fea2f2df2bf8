package handoff

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoffd/handoff/internal/ctl"
	"github.com/handoffd/handoff/internal/sdnotify"
	"github.com/handoffd/handoff/internal/wire"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// The systemd glue: sockets systemd passes (socket units and the file
// descriptor store), and what the Upgrader tells systemd over
// NOTIFY_SOCKET as the service starts, upgrades and stops.

// systemdState is what an Upgrader knows about its service manager.
type systemdState struct {
	// storeMax is the room in systemd's file descriptor store ($FDSTORE,
	// FileDescriptorStoreMax=); 0: the store is not used.
	storeMax int
	// unstore lists the fd store names to remove at Ready: stored
	// sockets no Listen call claimed, or duplicates.
	unstore []string
	// spawned: this process is a successor its predecessor started
	// (Upgrade), so it runs in the same unit, which learns its pid
	// from the predecessor.
	spawned bool
	// untilProven holds, for a successor whose predecessor says when the
	// handover is final, the sockets dropped at Ready, for the fd store.
	untilProven []inheritedFD
	// text is the wrapper's part of the STATUS= line (setStatus).
	text string
}

// inheritSystemd takes the sockets systemd passed (LISTEN_FDS, checked
// against LISTEN_PID, named by LISTEN_FDNAMES) into the registry, where
// Listen finds them by name or address, or, for the fd store's, by key.
// The LISTEN_* variables are unset so that they do not leak to children.
// A descriptor that is not a socket this package can serve is reported
// and closed, and so is the fd store's copy of a socket a socket unit
// passed as well; the store forgets both at Ready.
func (u *Upgrader) inheritSystemd() {
	u.sd.storeMax, _ = strconv.Atoi(os.Getenv("FDSTORE"))
	fromUnits := map[ctl.SocketID]bool{}
	for _, f := range activation.Files(true) {
		key, stored := sdnotify.StoredKey(f.Name())
		e, id, err := describeFile(f)
		switch {
		case err != nil:
			u.log.Warn("ignoring a descriptor passed by systemd", "name", f.Name(), "err", err)
		case stored && fromUnits[id]:
			err = errors.New("duplicate")
			u.log.Debug("dropping the fd store's copy of a socket a socket unit passed", "socket", describeKey(key))
		}
		if err != nil {
			f.Close()
			if stored {
				u.sd.unstore = append(u.sd.unstore, f.Name())
			}
			continue
		}
		source := fromSystemd
		e.Name = f.Name()
		if stored {
			source, e.Name = fromFDStore, key
		} else {
			fromUnits[id] = true
		}
		fd, err := ctl.DupFD(f)
		f.Close()
		if err != nil {
			u.log.Warn("ignoring a descriptor passed by systemd", "name", e.Name, "err", err)
			continue
		}
		u.log.Info("inherited socket from "+source, "name", e.Name, "network", e.Network, "address", e.Address)
		u.reg.inherit(e, fd, source)
	}
}

// describeFile is describeSocket for a passed file, with its identity.
func describeFile(f *os.File) (wire.Entry, ctl.SocketID, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return wire.Entry{}, ctl.SocketID{}, err
	}
	var e wire.Entry
	var id ctl.SocketID
	cerr := rc.Control(func(fd uintptr) {
		if e, err = ctl.DescribeSocket(int(fd)); err == nil {
			id, err = ctl.Identify(int(fd))
		}
	})
	if cerr != nil {
		return wire.Entry{}, ctl.SocketID{}, cerr
	}
	return e, id, err
}

// syncFDStore brings systemd's fd store in line with the sockets in use,
// when the unit has one: names no longer used go (dropped lists the
// inherited sockets no Listen call claimed), then every socket that no
// socket unit holds is stored under its key. Storing a socket already
// there changes nothing: systemd drops duplicates. A process systemd
// restarts after a crash gets the stored sockets back, and with them the
// connections that waited in their queues meanwhile.
func (u *Upgrader) syncFDStore(dropped []inheritedFD) {
	if u.sd.storeMax <= 0 {
		return
	}
	remove := u.sd.unstore
	u.sd.unstore = nil
	for _, d := range dropped {
		if d.source != fromSystemd {
			if name, ok := sdnotify.StoreName(d.Key()); ok {
				remove = append(remove, name)
			}
		}
	}
	for _, name := range remove {
		if err := sdnotify.WithFDs("FDSTOREREMOVE=1\nFDNAME="+name, nil); err != nil {
			u.log.Warn("cannot remove a socket from the fd store", "name", name, "err", err)
		}
	}
	stored := 0
	for _, s := range u.reg.inventory() {
		if s.source == fromSystemd {
			continue // its socket unit holds it
		}
		name, ok := sdnotify.StoreName(s.Key())
		if !ok {
			u.log.Warn("not storing a socket whose name or address is too long for an fd store name", "socket", describe(s.Entry))
			continue
		}
		if stored == u.sd.storeMax {
			u.log.Warn("the fd store is full (FileDescriptorStoreMax=); the remaining sockets are not stored", "stored", stored)
			break
		}
		if err := storeSocket(name, s.conn()); err != nil {
			u.log.Warn("cannot store a socket in the fd store", "socket", describe(s.Entry), "err", err)
			continue
		}
		stored++
	}
	if stored > 0 {
		u.log.Debug("stored sockets in systemd's fd store", "sockets", stored)
	}
}

// storeSocket sends a duplicate of the socket behind conn to the fd store.
func storeSocket(name string, conn syscall.Conn) error {
	fd, err := ctl.DupFD(conn)
	if err != nil {
		return err
	}
	defer ctl.CloseFDs([]int{fd})
	return sdnotify.WithFDs("FDSTORE=1\nFDNAME="+name, []int{fd})
}

// notify sends state assignments to the service manager. Without
// NOTIFY_SOCKET it does nothing.
func (u *Upgrader) notify(assignments ...string) {
	state := strings.Join(assignments, "\n")
	if _, err := daemon.SdNotify(false, state); err != nil {
		u.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// reloading is RELOADING=1 with the timestamp Type=notify-reload wants.
func reloading() string {
	return daemon.SdNotifyReloading + "\n" + strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n")
}

// announceReady tells systemd that this process serves: READY=1 for the
// process systemd started, the status line, and the sockets for the fd
// store. A successor that its predecessor started leaves READY=1 out:
// the predecessor has already made it the unit's main process (and an
// independent successor, the main process of another unit, says it).
func (u *Upgrader) announceReady(fresh bool, dropped []inheritedFD) {
	if u.sd.spawned && u.predecessorProves() {
		// The predecessor stays the main process until the handover is
		// final, and systemd (NotifyAccess=main) would drop what this
		// process said: it is said on proven instead.
		u.mu.Lock()
		u.sd.untilProven = dropped
		u.mu.Unlock()
		return
	}
	u.syncFDStore(dropped)
	if fresh || !u.sd.spawned {
		u.notify(daemon.SdNotifyReady, u.status("serving", ""))
		return
	}
	u.notify(u.status("serving", ""))
}

// announceProven is announceReady for a successor whose predecessor has
// just made it the main process: the fd store and the status line.
func (u *Upgrader) announceProven() {
	u.mu.Lock()
	dropped := u.sd.untilProven
	u.sd.untilProven = nil
	u.mu.Unlock()
	if !u.sd.spawned {
		return
	}
	u.syncFDStore(dropped)
	u.notify(u.status("serving", ""))
}

// announceUpgrade tells systemd that an upgrade has begun: Upgrade's,
// before it starts the successor (pid 0), or a takeover by successor pid.
// Within the unit it is a reload (RELOADING=1, which Type=notify-reload
// waits for before anything can fail); a successor outside the unit
// (another service taking over) is only reported.
func (u *Upgrader) announceUpgrade(pid int, inUnit bool) {
	switch {
	case pid == 0:
		u.notify(reloading(), u.status("upgrading", "starting a successor"))
	case inUnit:
		u.notify(reloading(), u.status("upgrading", fmt.Sprintf("handing over to pid %d", pid)))
	default:
		u.notify(u.status("upgrading", fmt.Sprintf("handing over to pid %d, outside this unit", pid)))
	}
}

// announceHandingOver reports that the successor Upgrade started, pid,
// has said hello.
func (u *Upgrader) announceHandingOver(pid int) {
	u.notify(u.status("upgrading", fmt.Sprintf("handing over to pid %d", pid)))
}

// announceHandover tells systemd that successor pid serves now. Within
// the unit it becomes the main process: this process sends MAINPID=
// while it is still the main process itself, so NotifyAccess=main
// suffices. A successor outside the unit leaves this unit stopping.
func (u *Upgrader) announceHandover(pid int, inUnit bool) {
	if inUnit {
		u.notify(fmt.Sprintf("MAINPID=%d", pid), daemon.SdNotifyReady,
			u.statusOf("serving", fmt.Sprintf("pid %d drains", u.pid), u.Generation()+1, pid))
		return
	}
	u.notify(daemon.SdNotifyStopping, u.status("stopping", fmt.Sprintf("handed over to pid %d outside this unit; draining", pid)))
}

// announceCanary tells systemd that successor pid serves and this
// process stands by for window. It stays the main process meanwhile: were
// the successor the main process, its death would stop the unit before a
// rollback could help. READY=1 ends what RELOADING=1 began.
func (u *Upgrader) announceCanary(pid int, window time.Duration) {
	u.notify(daemon.SdNotifyReady, u.statusOf("serving", fmt.Sprintf("pid %d stands by for %s to roll back", u.pid, window), u.Generation()+1, pid))
}

// announceRollback tells systemd that this process serves again.
func (u *Upgrader) announceRollback(reason string) {
	u.notify(daemon.SdNotifyReady, u.status("serving", reason))
}

// announceReloaded tells systemd that a reload this process ran itself
// (the wrapper's), or an upgrade that failed (err), is over and this
// process serves: READY=1 ends what RELOADING=1 began.
func (u *Upgrader) announceReloaded(err error) {
	note := ""
	if err != nil {
		note = "the last reload failed: " + err.Error()
	}
	u.notify(daemon.SdNotifyReady, u.status("serving", note))
}

// setStatus sets the wrapper's part of the status line the Upgrader keeps
// up to date with systemd (STATUS=, which `systemctl status` shows) and
// sends the line at once (hooks.Wrapped.SetStatus: the child's pid).
func (u *Upgrader) setStatus(text string) {
	u.mu.Lock()
	u.sd.text = text
	doing := u.state.String()
	if u.state == stateUpgrading && u.wrapper.Reload != nil {
		doing = "reloading" // the wrapper's, in this process
	}
	u.mu.Unlock()
	u.notify(u.status(doing, ""))
}

// status is a STATUS= line about this process: what it is doing, its
// generation and pid, the wrapper's words (setStatus), its sockets, and
// a note, if any.
func (u *Upgrader) status(doing, note string) string {
	return u.statusOf(doing, note, u.Generation(), u.pid)
}

// statusOf is status for generation gen served by pid.
func (u *Upgrader) statusOf(doing, note string, gen, pid int) string {
	u.mu.Lock()
	text := u.sd.text
	u.mu.Unlock()
	line := fmt.Sprintf("%s: generation %d, pid %d", doing, gen, pid)
	if text != "" {
		line += "; " + text
	}
	if s := u.socketsText(); s != "" {
		line += "; " + s
	}
	if note != "" {
		line += "; " + note
	}
	return "STATUS=" + strings.ReplaceAll(line, "\n", " ")
}

// maxStatusSockets is how many sockets a status line lists by name.
const maxStatusSockets = 4

// socketsText lists the sockets in use, and where systemd's came from:
// "web=tcp 127.0.0.1:8080 (fd store), udp [::]:53 (socket unit)".
func (u *Upgrader) socketsText() string {
	var parts []string
	inv := u.reg.inventory()
	for i, s := range inv {
		if i == maxStatusSockets {
			parts = append(parts, fmt.Sprintf("and %d more", len(inv)-i))
			break
		}
		p := s.Network + " " + s.boundAddress()
		if s.Name != "" {
			p = s.Name + "=" + p
		}
		switch s.source {
		case fromSystemd:
			p += " (socket unit)"
		case fromFDStore:
			p += " (fd store)"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}
