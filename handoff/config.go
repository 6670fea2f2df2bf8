package handoff

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults for the zero fields of Config.
const (
	// DefaultReadyTimeout is how long a successor may take from its hello
	// to saying it is ready before the serving process gives up on it.
	DefaultReadyTimeout = time.Minute
	// DefaultStepTimeout bounds every other protocol step: one message and
	// its answer. A peer that stalls longer is dropped.
	DefaultStepTimeout = 5 * time.Second
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
	Socket string

	// PIDFile, when set, is rewritten atomically with the pid of whichever
	// process is serving, so `kill -HUP $(cat PIDFile)` always reaches it.
	PIDFile string

	// ReadyTimeout bounds how long a successor may take from its hello to
	// ready. Zero means DefaultReadyTimeout.
	ReadyTimeout time.Duration

	// StepTimeout bounds each other protocol step. Zero means
	// DefaultStepTimeout.
	StepTimeout time.Duration

	// Logger receives the package's log records. Nil means silence.
	Logger *slog.Logger

	// Reload is what Upgrader.Reload runs, and with it a reload request
	// on the control socket (`handoff reload`). It reports steps through
	// progress. Nil means Upgrade. (The wrapper sets it to restart its
	// child.)
	Reload func(ctx context.Context, progress func(line string)) error

	// StatusDetail, when set, adds to Status (and `handoff status`)
	// whatever it returns, marshaled as JSON.
	StatusDetail func() any
}

// SocketPath returns the control socket that a Config with this Name and
// no Socket uses, so that a client (`handoff reload -name NAME`) finds the
// socket the service serves without being told its path.
func SocketPath(name string) (string, error) {
	c, err := Config{Name: name}.withDefaults()
	return c.Socket, err
}

// withDefaults returns c with every zero field filled in and paths made
// absolute, so that a later chdir changes nothing.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = filepath.Base(os.Args[0])
	}
	if strings.ContainsAny(c.Name, "/\x00") || len(c.Name) > maxStringLen {
		return c, fmt.Errorf("handoff: invalid service name %q", c.Name)
	}
	if c.Socket == "" {
		dir, err := defaultSocketDir()
		if err != nil {
			return c, err
		}
		c.Socket = filepath.Join(dir, c.Name+".sock")
	}
	var err error
	if c.Socket, err = filepath.Abs(c.Socket); err != nil {
		return c, err
	}
	if len(c.Socket) > maxSocketPath {
		return c, fmt.Errorf("handoff: control socket path %q is longer than %d bytes", c.Socket, maxSocketPath)
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
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// defaultSocketDir is $RUNTIME_DIRECTORY (its first entry), or a directory
// under os.TempDir() that only this user can enter. An existing directory
// of that name must belong to us and be private, or someone else could
// place a socket there for us to connect to.
func defaultSocketDir() (string, error) {
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		return strings.Split(rd, ":")[0], nil
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("handoff-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", err
	}
	if err := checkPrivateDir(dir); err != nil {
		return "", err
	}
	return dir, nil
}
