package handoff

import (
	"github.com/handoffd/handoff/internal/buildinfo"
	"github.com/handoffd/handoff/internal/wire"
)

// Build names the build of a program, as the Go toolchain stamped it into
// the binary (runtime/debug.ReadBuildInfo), so that an operator sees which
// build serves. A field is empty when the binary carries no such stamp,
// and both are for a peer that predates this field of the protocol.
type Build struct {
	// Version is the main module's version: a tag such as "v0.1.0", a
	// pseudo-version, or "(devel)" for a build in the module's own tree.
	Version string `json:"version,omitempty"`
	// Revision is the VCS revision the binary was built from, with
	// "+dirty" when its work tree had local changes.
	Revision string `json:"revision,omitempty"`
}

// ownBuild is this binary's build.
func ownBuild() Build {
	v, rev, dirty := buildinfo.Own()
	return Build{Version: v, Revision: buildinfo.Revision(rev, dirty)}
}

// offer is what a process says it speaks in hello and welcome.
type offer struct {
	minVersion, maxVersion uint16 // the protocol versions it speaks
	caps                   uint64 // wire.Cap*
	build                  Build
}

// speaks is this process's offer: everything this package implements.
// Only tests change it, so that a process plays an older or a newer build
// (compat_linux_test.go).
var speaks = offer{minVersion: wire.Version, maxVersion: wire.Version, caps: wire.SupportedCaps, build: ownBuild()}

// choose returns the highest protocol version that both o and a peer that
// speaks min to max understand; ok is false if there is none.
func (o offer) choose(peerMin, peerMax uint16) (version uint16, ok bool) {
	v := min(o.maxVersion, peerMax)
	return v, v >= max(o.minVersion, peerMin)
}

// wire is b for hello or welcome.
func (b Build) wire() wire.Build { return wire.Build(b) }
