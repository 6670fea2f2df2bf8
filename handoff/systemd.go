package handoff

import (
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// inheritSystemd takes the sockets systemd passed (LISTEN_FDS, checked
// against LISTEN_PID, named by LISTEN_FDNAMES) into the registry, where
// Listen finds them by name or address. The LISTEN_* variables are unset
// so that they do not leak to children. A descriptor that is not a socket
// this package can serve is reported and closed.
func (u *Upgrader) inheritSystemd() {
	for _, f := range activation.Files(true) {
		rc, err := f.SyscallConn()
		var e entry
		if err == nil {
			rc.Control(func(fd uintptr) { e, err = describeSocket(int(fd)) })
		}
		if err != nil {
			u.log.Warn("ignoring a descriptor passed by systemd", "name", f.Name(), "err", err)
			f.Close()
			continue
		}
		e.Name = f.Name()
		u.log.Info("inherited socket from systemd", "name", e.Name, "network", e.Network, "address", e.Address)
		u.reg.inherit(e, f, fromSystemd)
	}
}

// notify sends state assignments to the service manager. Without
// NOTIFY_SOCKET it does nothing.
func (u *Upgrader) notify(assignments ...string) {
	state := strings.Join(assignments, "\n")
	if _, err := daemon.SdNotify(false, state); err != nil {
		u.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// status is a STATUS= line a human can read in `systemctl status`.
func (u *Upgrader) status(format string, args ...any) string {
	return "STATUS=" + fmt.Sprintf(format, args...)
}

// reloading is RELOADING=1 with the timestamp Type=notify-reload wants.
func reloading() string {
	return daemon.SdNotifyReloading + "\n" + strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n")
}
