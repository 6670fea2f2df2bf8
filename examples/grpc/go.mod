// A gRPC server on handoff listeners: restarts without a failed RPC. A
// module of its own, so that the library's go.mod stays lean.
module github.com/handoffd/handoff/examples/grpc

go 1.26.8

replace github.com/handoffd/handoff => ../..

require (
	github.com/handoffd/handoff v0.0.0-00010101000000-000000000000
	github.com/oklog/run v1.2.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
