module github.com/handoffd/handoff

go 1.24.0

// Binaries built in this module keep Go 1.26's GODEBUG defaults (among
// them GOMAXPROCS from the cgroup's CPU limit, new in 1.25) although the go
// line is older; a program that imports the library gets its own go line's.
godebug default=go1.26

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/oklog/run v1.2.0
	golang.org/x/sys v0.36.0
)
