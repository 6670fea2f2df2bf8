package handoff

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoffd/handoff/internal/wire"
)

// Defaults for the zero fields of Config.
const (
	// DefaultReadyTimeout is how long a successor may take from its hello
	// to saying it is ready before the serving process gives up on it.
	DefaultReadyTimeout = time.Minute
	// DefaultStepTimeout bounds every other protocol step: one message and
	// its answer. A peer that stalls longer is dropped.
	DefaultStepTimeout = 5 * time.Second
	// DefaultDrainTimeout is how long a process may take to drain: it
	// bounds HTTPServer.Shutdown when its context has no deadline, and
	// how long a successor whose upgrade failed gets between SIGTERM and
	// SIGKILL.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultCanaryWindow is how long a process that handed over stands
	// by to roll back should its successor die. Ten seconds covers a
	// build that crashes at start-up, on its first requests or in its
	// first background work, and is short enough that an old process
	// does not linger across a deploy.
	DefaultCanaryWindow = 10 * time.Second
)

// maxSocketPath is the room in sockaddr_un.sun_path, less the NUL.
const maxSocketPath = 107

// Config configures an Upgrader. The zero value works: every field
// documents what its zero value means.
type Config struct {
	// Name identifies the service. A process that wants to take over must
	// present the same name. Zero means the base name of os.Args[0].
	Name string

	// Socket is the path of the control socket. Zero means "NAME.sock" in
	// $RUNTIME_DIRECTORY (set by systemd's RuntimeDirectory=) or, when that
	// is unset, in the private directory "handoff-UID" under os.TempDir().
	// Whoever can write to its directory can stand in for the service's
	// control socket, so New refuses a directory that other users can
	// write to, unless it is sticky (as /tmp is) and any socket file
	// there is this user's; a lock file PATH.lock lives beside it.
	Socket string

	// PIDFile, when set, is rewritten atomically with the pid of whichever
	// process is serving, so `kill -HUP $(cat PIDFile)` always reaches it.
	// New fails if it cannot be written.
	PIDFile string

	// ReadyTimeout bounds how long a successor may take from its hello to
	// ready. Zero means DefaultReadyTimeout.
	ReadyTimeout time.Duration

	// StepTimeout bounds each other protocol step. Zero means
	// DefaultStepTimeout.
	StepTimeout time.Duration

	// DrainTimeout bounds a drain: HTTPServer.Shutdown's when its context
	// has no deadline, and a failed successor's after SIGTERM, before
	// SIGKILL. Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration

	// CanaryWindow is how long, after a successor said ready, this
	// process stands by to roll back: it stops accepting but keeps its
	// listening sockets and the link to the successor, and should the
	// successor exit (crash, panic, OOM kill) before the window passes,
	// it resumes accepting on the same kernel sockets and serves again;
	// nothing queued is lost. Exit is closed only once the window has
	// passed, or the successor has handed over itself or stopped (Stop).
	// Zero means DefaultCanaryWindow; a negative value turns the window
	// off: Exit is closed when the successor is ready. The window is
	// also off with a successor that predates it, and for a process with
	// datagram sockets (ListenPacket), whose reading cannot be paused.
	CanaryWindow time.Duration

	// Logger receives the package's log records. Nil means silence.
	Logger *slog.Logger
}

// socketPath returns the control socket that a Config with this Name and
// no Socket uses (control.SocketPath).
func socketPath(name string) (string, error) {
	c, err := Config{Name: name}.withDefaults(true)
	return c.Socket, err
}

// withDefaults returns c with every zero field filled in and paths made
// absolute, so that a later chdir changes nothing. Without control (a
// platform without the handoff) the control socket is left as it is:
// nothing binds it.
func (c Config) withDefaults(control bool) (Config, error) {
	if c.Name == "" {
		c.Name = filepath.Base(os.Args[0])
	}
	if strings.ContainsAny(c.Name, "/\x00") || len(c.Name) > wire.MaxStringLen {
		return c, errorf("handoff: invalid service name %q", c.Name)
	}
	var err error
	if control {
		if c.Socket, err = controlSocket(c.Socket, c.Name); err != nil {
			return c, err
		}
	}
	if c.PIDFile != "" {
		if c.PIDFile, err = filepath.Abs(c.PIDFile); err != nil {
			return c, err
		}
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.StepTimeout <= 0 {
		c.StepTimeout = DefaultStepTimeout
	}
	if c.CanaryWindow == 0 {
		c.CanaryWindow = DefaultCanaryWindow
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// controlSocket is the control socket path for socket as Config.Socket
// has it (empty: the default for the service name), made absolute.
func controlSocket(socket, name string) (string, error) {
	if socket == "" {
		dir, err := defaultSocketDir()
		if err != nil {
			return "", err
		}
		socket = filepath.Join(dir, name+".sock")
	}
	socket, err := filepath.Abs(socket)
	if err != nil {
		return "", err
	}
	if len(socket) > maxSocketPath {
		return "", errorf("handoff: control socket path %q is longer than %d bytes", socket, maxSocketPath)
	}
	return socket, nil
}

// defaultSocketDir is $RUNTIME_DIRECTORY (its first entry), or a directory
// under os.TempDir() that only this user can enter. An existing directory
// of that name must belong to us and be private, or someone else could
// place a socket there for us to connect to.
func defaultSocketDir() (string, error) {
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		return strings.Split(rd, ":")[0], nil
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("handoff-%d", os.Geteuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", err
	}
	if err := checkPrivateDir(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// checkSocketDir refuses a control socket whose directory others could
// use to stand in for the service: see checkPlace.
func checkSocketDir(path string) error {
	return checkPlace("control socket", path, "the default, or systemd's RuntimeDirectory=")
}

// checkPlace refuses a file of the service (what: its control socket,
// its pid file) at path whose directory others could use to stand in for
// it: a directory another user owns (not root), or one others can write
// to, unless it is sticky and the file, if there is one, is this user's;
// or one inside a directory others could change.
// In a directory others could write to, another user could plant the
// file: a socket to connect to, a pid file naming a process of theirs
// for an operator's kill. hint says where the file belongs instead.
func checkPlace(what, path, hint string) error {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return errorf("handoff: %s directory: %w", what, err)
	}
	owner, mode, err := fileOwner(dir)
	if err != nil {
		return errorf("handoff: %s directory: %w", what, err)
	}
	uid := os.Geteuid()
	if owner != uid && owner != 0 {
		return errorf("handoff: %s directory %s belongs to uid %d: only the service's user (uid %d) or root may own it", what, dir, owner, uid)
	}
	// Whoever can rename an ancestor can put a directory of their own in
	// its place: every ancestor must be as safe, or sticky (where others
	// cannot rename what is not theirs).
	for a := filepath.Dir(dir); ; a = filepath.Dir(a) {
		aOwner, aMode, err := fileOwner(a)
		if err != nil {
			return errorf("handoff: %s directory: %w", what, err)
		}
		if aOwner != uid && aOwner != 0 || aMode&0o022 != 0 && aMode&os.ModeSticky == 0 {
			return errorf("handoff: %s directory %s is inside %s (uid %d, mode %v), which other users can change, and so stand in for the service: use a directory whose every parent only the service's user or root can write to (%s)", what, dir, a, aOwner, aMode.Perm(), hint)
		}
		if a == filepath.Dir(a) {
			break
		}
	}
	if mode&0o022 == 0 {
		return nil
	}
	if mode&os.ModeSticky == 0 {
		return errorf("handoff: %s directory %s (mode %v) can be written by other users, who could stand in for the service: use a directory only the service's user can write to (%s)", what, dir, mode.Perm(), hint)
	}
	if fileUID, _, err := fileOwner(path); err == nil && fileUID != uid {
		return errorf("handoff: %s %s belongs to uid %d, not to this user (uid %d): remove it, or use a directory only the service's user can write to (%s)", what, path, fileUID, uid, hint)
	}
	return nil
}

// checkPIDFile fails unless the pid file at path (if set) is in a place
// only the service controls (checkPlace) and can be written: a file
// created beside it, as writePIDFile does, and removed.
func checkPIDFile(path string) error {
	if path == "" {
		return nil
	}
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return errorf("handoff: pid file %s is not a regular file", path)
	}
	if err := checkPlace("pid file", path, "such as systemd's RuntimeDirectory=, /run/NAME"); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return errorf("handoff: pid file %s cannot be written: %w", path, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
