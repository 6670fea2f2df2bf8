// Package handoff restarts servers without a failed request.
//
// A process that serves on listening sockets hands them to its successor
// over a unix control socket (SCM_RIGHTS). The successor serves on the
// very same kernel sockets and says it is ready; only then does the old
// process stop accepting, drain its in-flight work and exit. The sockets
// never close, so no connection is refused and nothing in the accept
// queue is lost. If the successor fails before it is ready, the old
// process keeps serving.
//
// # Use
//
//	upg, err := handoff.New(ctx, handoff.Config{Name: "api", PIDFile: "/run/api.pid"})
//	...
//	defer upg.Close()
//	ln, err := upg.Listen("tcp", ":8080") // inherited from the predecessor, or new
//	srv := &handoff.HTTPServer{Server: &http.Server{Handler: h}, Upgrader: upg}
//	go srv.Serve(ln)
//	upg.Ready() // the predecessor, if any, stops accepting now
//	// on SIGHUP: upg.Upgrade(ctx) starts a fresh copy of the binary
//	<-upg.Exit() // a successor has taken over
//	srv.Shutdown(ctx)
//
// # Successors
//
// A successor is either a fresh copy of the program that Upgrade starts
// (typically on SIGHUP), or any process of the same service (same
// Config.Name) that calls New with the same control socket: a new
// version started by a deploy script, by a second unit, or in another
// container that shares the socket's directory. Only one upgrade is in
// flight at a time; a concurrent attempt gets ErrInProgress.
//
// A program run by the service's user (or root) can ask the serving process
// to upgrade (as `handoff reload` does) or for its Status: see package
// github.com/handoffd/handoff/handoff/control.
//
// # Security
//
// The control socket is created with mode 0600. A peer is accepted only if
// its credentials (SO_PEERCRED) show this process's user or root, and it
// names the same service; anything else is refused, with the reason,
// before a single descriptor is sent. Every step has a deadline and every
// message a size limit.
//
// # systemd
//
// Under Type=notify (or Type=notify-reload, systemd 253 and later) the
// Upgrader speaks the notify protocol with no code from the program:
// READY=1 once the first process is ready; on an upgrade RELOADING=1
// (with MONOTONIC_USEC=) before the successor starts; READY=1 once it is
// ready, while the old process stays the main process for the canary
// window (Config.CanaryWindow), so that the successor's death within it is
// a rollback and not the unit's failure; then MAINPID= of the successor,
// sent by the old process while it is still the main process, so
// NotifyAccess=main (the default) suffices; READY=1
// from the old process if the upgrade fails, which leaves it the main
// process; STOPPING=1 on Stop; and STATUS= lines naming generation, pid
// and sockets.
//
// Under a service manager Upgrade starts the successor as a child of the
// manager (CLONE_PARENT) rather than of this process, so that the
// manager supervises it as it does a process it started: systemd does
// not wait for a main process that is not its child, and would cut a
// later stop's drain short with SIGKILL.
//
// A successor outside the unit's control group (another service taking
// over) does not become the unit's main process: the unit is told
// STOPPING=1 instead, and the successor, if systemd started it, says
// READY=1 itself.
//
// Listen finds the sockets systemd passed (LISTEN_FDS) by name
// (FileDescriptorName=) or address; descriptors it cannot serve are
// logged and closed, and LISTEN_* is unset so that children do not
// inherit it.
//
// With $FDSTORE set (systemd 254 and later set it when
// FileDescriptorStoreMax= is not zero; with older versions add
// Environment=FDSTORE= with the same number), the serving process keeps
// its sockets in systemd's file descriptor store: after a crash and
// Restart=, the new process gets the very same sockets back, and serves
// the connections that queued while it was down.
//
// # Platforms
//
// The handoff needs Linux. Elsewhere (macOS, the BSDs, Windows) New
// returns an Upgrader that serves without it: Listen, Ready, Stop, Exit,
// Close, Status and HTTPServer work as for a process that is never
// upgraded, no control socket is bound, and Upgrade fails with an error
// matching ErrNotSupported; Status.NoHandoff says so. A server written for
// Linux runs unchanged on a developer's laptop, and restarts there by
// stopping and starting. docs/platforms.md says what works where.
//
// The wire protocol is specified in PROTOCOL.md.
package handoff
