// Package buildinfo reads what the Go toolchain stamped into a binary
// about its build (runtime/debug.ReadBuildInfo): `handoff version` prints
// it, and package handoff tells it to its peers and in Status.
package buildinfo

import "runtime/debug"

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
