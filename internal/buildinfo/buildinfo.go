// Package buildinfo reads what the Go toolchain stamped into a binary
// about its build (runtime/debug.ReadBuildInfo): `handoff version` prints
// it, and package handoff tells it to its peers and in Status; the wrapper
// reads its child's from the executable.
package buildinfo

import (
	gobuildinfo "debug/buildinfo"
	"io"
	"runtime/debug"
)

// Of returns the main module's version in bi ("(devel)" for a build in the
// module's own tree without a tag, "" without build information), its VCS
// revision ("" when Go stamped none: a build outside a checkout, or with
// -buildvcs=false), and whether the work tree had local changes (only
// with a revision).
func Of(bi *debug.BuildInfo) (version, revision string, modified bool) {
	if bi == nil {
		return "", "", false
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return bi.Main.Version, revision, modified && revision != ""
}

// Own is Of for the running binary.
func Own() (version, revision string, modified bool) {
	bi, _ := debug.ReadBuildInfo()
	return Of(bi)
}

// File is Of for the executable r: for a wrapped child, whose build the
// wrapper reads from the file it runs. ok is false when r is not a Go
// binary, or carries no build information.
func File(r io.ReaderAt) (version, revision string, modified, ok bool) {
	bi, err := gobuildinfo.Read(r)
	if err != nil {
		return "", "", false, false
	}
	version, revision, modified = Of(bi)
	return version, revision, modified, true
}

// Revision is revision as Status shows it: with "+dirty" when the work
// tree had local changes.
func Revision(revision string, modified bool) string {
	if modified {
		return revision + "+dirty"
	}
	return revision
}
