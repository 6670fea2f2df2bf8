//go:build !unix

package handoff

import (
	"os"

	"github.com/handoffd/handoff/internal/ctl"
)

func checkPrivateDir(string) error { return ctl.Supported() }

func fileOwner(string) (int, os.FileMode, error) { return 0, 0, ctl.Supported() }
