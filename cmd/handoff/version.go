package main

import (
	"runtime"
	"runtime/debug"

	"github.com/handoffd/handoff/internal/buildinfo"
)

// version is the release this binary was built as, set at release time by
// -ldflags "-X main.version=v0.1.0" (scripts/release.sh, `make release`).
// It is empty in any other build, and versionLine then reports the module
// version Go recorded.
var version = ""

// versionLine says which build this is, as `handoff version` prints it:
// "handoff v0.1.0 (rev 380d2cc1a2b3, go1.26.8, linux/amd64)". The version
// is the one set at release, else the module's ("(devel)" for a local
// build); the revision, with "+dirty" for a modified work tree, is there
// when Go stamped it (a build in a git checkout).
func versionLine() string {
	bi, _ := debug.ReadBuildInfo()
	return versionLineOf(version, bi)
}

// versionLineOf is versionLine for release version v (empty: none) and
// build information bi (nil: none).
func versionLineOf(v string, bi *debug.BuildInfo) string {
	mv, rev, dirty := buildinfo.Of(bi)
	if v == "" {
		v = mv
	}
	if v == "" {
		v = "(unknown)"
	}
	details := ""
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		details = "rev " + rev
		if dirty {
			details += "+dirty"
		}
		details += ", "
	}
	details += runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH
	return "handoff " + v + " (" + details + ")"
}
