// Package testbed runs real server processes for the integration tests,
// the demo and the benchmark. It builds binaries, starts processes and
// signals them only by the pids it knows, and reaps them: as a subreaper
// its process inherits the orphans of every server generation, so it can
// also tell that none is left behind.
//
// Its processes need a Unix system (signals, wait4); on others only the
// certificates (tls.go) are there.
package testbed
