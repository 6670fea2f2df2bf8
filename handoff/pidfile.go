package handoff

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// writePIDFile atomically replaces path with pid: readers see the old
// content or the new, never a partial file.
func writePIDFile(path string, pid int) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// removePIDFile removes path if it still names pid; a successor may have
// written its own pid there meanwhile.
func removePIDFile(path string, pid int) {
	if namesPID(path, pid) {
		os.Remove(path)
	}
}

// namesPID reports whether the pid file at path names pid.
func namesPID(path string, pid int) bool {
	b, err := os.ReadFile(path)
	return err == nil && string(bytes.TrimSpace(b)) == strconv.Itoa(pid)
}

// writePIDFile points the configured pid file, if any, at pid.
func (u *Upgrader) writePIDFile(pid int) {
	if u.cfg.PIDFile == "" {
		return
	}
	if err := writePIDFile(u.cfg.PIDFile, pid); err != nil {
		u.log.Warn("cannot write pid file", "path", u.cfg.PIDFile, "err", err)
	}
}

// passPIDFile points the pid file at the successor, which has heard done,
// unless it did so itself already: then the file may even name the
// successor's own successor by now.
func (u *Upgrader) passPIDFile(succPID int) {
	if u.cfg.PIDFile != "" && namesPID(u.cfg.PIDFile, u.pid) {
		u.writePIDFile(succPID)
	}
}
