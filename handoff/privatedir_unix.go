//go:build unix

package handoff

import (
	"fmt"
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
		return fmt.Errorf("handoff: %s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("handoff: %s must be owned by uid %d and not writable by others (owner %d, mode %v)", dir, os.Getuid(), st.Uid, fi.Mode().Perm())
	}
	return nil
}
