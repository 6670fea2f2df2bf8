module github.com/handoffd/handoff

go 1.26.8

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/oklog/run v1.2.0
	golang.org/x/sys v0.49.0
)
