//go:build unix && !linux

package testbed

import (
	"fmt"
	"runtime"
)

// BecomeSubreaper makes this process inherit its orphaned descendants;
// only Linux has child subreapers.
func BecomeSubreaper() error {
	return fmt.Errorf("child subreaper: not supported on %s", runtime.GOOS)
}
