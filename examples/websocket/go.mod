// examples/websocket: WebSocket sessions that survive restarts, on
// github.com/gobwas/ws. A module of its own, so that the library's go.mod
// stays lean.
module github.com/handoffd/handoff/examples/websocket

go 1.26.8

replace github.com/handoffd/handoff => ../..

require (
	github.com/gobwas/ws v1.5.0
	github.com/handoffd/handoff v0.0.0-00010101000000-000000000000
	github.com/oklog/run v1.2.0
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/gobwas/httphead v0.1.0 // indirect
	golang.org/x/sys v0.36.0 // indirect
)
