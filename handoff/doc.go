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
// Sockets passed by systemd (LISTEN_FDS) are found by Listen by name or by
// address. With NOTIFY_SOCKET set, the Upgrader sends READY=1 when the
// first process is ready, RELOADING=1 when an upgrade starts, MAINPID= and
// READY=1 when the successor takes over (from the old main process, so
// NotifyAccess=main suffices), and STOPPING=1 on Stop.
//
// # Platforms
//
// Linux. Elsewhere New returns an error matching ErrNotSupported.
//
// The wire protocol is specified in PROTOCOL.md.
package handoff
