//go:build unix

package handoff

import (
	"os"
	"syscall"
)

// checkPrivateDir verifies that dir is a directory owned by this user that
// nobody else can write to.
func checkPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return errorf("handoff: %s is not a directory", dir)
	}
	if int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return errorf("handoff: %s must be owned by uid %d and not writable by others (owner %d, mode %v)", dir, os.Geteuid(), st.Uid, fi.Mode().Perm())
	}
	return nil
}

// fileOwner returns the owner and mode of the file at path (not following
// a last symbolic link).
func fileOwner(path string) (uid int, mode os.FileMode, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, errorf("%s: no owner", path)
	}
	return int(st.Uid), fi.Mode(), nil
}
