// The benchmark's peers: servers restarted the ways people restart them
// without handoff, and cloudflare/tableflip. A module of its own, so that
// the library's go.mod stays lean.
module github.com/handoffd/handoff/integration/bench

go 1.26.8

require (
	github.com/cloudflare/tableflip v1.2.3
	github.com/handoffd/handoff v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.49.0
)

replace github.com/handoffd/handoff => ../..
