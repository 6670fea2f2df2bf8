package main

// helpText is `handoff help`.
const helpText = `handoff: zero-downtime reloads for servers that accept systemd socket activation

Usage:
  handoff run [flags] -- COMMAND [ARGS...]   run COMMAND with the sockets, reload it on SIGHUP
  handoff reload [-socket PATH | -name NAME] [-wait-canary]
                                             reload; exit 0 once the new child serves
                                             (-wait-canary: once it lasted its canary window)
  handoff status [-socket PATH | -name NAME] [-json]
  handoff version                            this build's version, revision and Go version
  handoff help                               this text; 'handoff run -h' details run

The wrapper opens the listening sockets (or takes them from systemd's LISTEN_FDS,
or from a running wrapper on the same control socket) and keeps them open for
its whole life. COMMAND gets them as fds 3.. with LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID set, as from systemd socket activation; for TCP and UDP each child
generation gets a socket of its own (SO_REUSEPORT), blocking unless -nonblocking.
A reload (SIGHUP, or 'handoff reload') starts a new child, waits until it is
ready, sends new connections to it, waits until the old child has taken what
was queued for it, and only then stops the old one: none is refused or
dropped by the switch. A child that exits or is not ready in time is killed
and the old one keeps serving. That is Linux; on macOS and the BSDs a reload
(SIGHUP only) restarts the child on the same sockets instead, where
connections wait meanwhile: see 'handoff run -h' there, and docs/platforms.md.

Exit codes: 0 success, 1 runtime error, 2 usage error. Stopped by SIGTERM or
SIGINT, 'handoff run' exits with its child's status.

Example:
  handoff run -listen web=tcp://127.0.0.1:8080 -ready accepting -pidfile /run/handoff-lighttpd.pid \
      -stop-signal SIGINT -- lighttpd -D -f /etc/lighttpd/lighttpd.conf
  kill -HUP $(cat /run/handoff-lighttpd.pid)   # or: handoff reload -name lighttpd
  (lighttpd.conf needs server.systemd-socket-activation = "enable")
`

// runHelpText is `handoff run -h`; the flag list follows it.
const runHelpText = `Usage: handoff run [flags] -- COMMAND [ARGS...]

Runs COMMAND with the listening sockets as fds 3.. (LISTEN_FDS, LISTEN_FDNAMES,
LISTEN_PID: systemd socket activation) and replaces it without dropping a
connection. Flags take one dash or two.

Sockets (-socket-mode auto): each child generation gets its own TCP/UDP socket,
bound beside the wrapper's with SO_REUSEPORT, blocking (-nonblocking: not); a
BPF program sends new connections only to the newest ready child. Unix sockets
and sockets from systemd or from a wrapper this one took over are shared by all
children (one open file description, one queue). 'handoff status' shows which.

Signals: SIGHUP reloads (start a new child, wait until ready, stop the old one;
rolled back if the new child exits or is not ready within -ready-timeout).
SIGTERM/SIGINT stop the child (-stop-signal, then SIGKILL after -drain-timeout)
and exit with its status. SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGTTIN, SIGTTOU
and SIGALRM are passed to the child. A child that dies on its own is restarted,
with a backoff; the sockets stay open, so clients wait instead of being refused.
A child dies with the wrapper (parent-death signal SIGKILL), and what a child
leaves in its process group when it exits (workers) is killed.

A second 'handoff run' with the same -socket takes the sockets over from the
running one, starts its own child, and once that is ready the old wrapper stops
its child and exits: this upgrades the wrapper itself.

Ready modes (-ready), best first:
  auto         (default) accepting; and when the child speaks sd_notify (this
               child or an earlier one sent a message to NOTIFY_SOCKET), also
               READY=1 from it.
  notify       the child sends READY=1 to NOTIFY_SOCKET (as under systemd
               Type=notify); only a message whose SCM_CREDENTIALS name the new
               child's pid counts, so the old child cannot answer for it.
  accepting    the new child (or a process it forked) waits for connections on
               every passed socket: the socket is in one of its epoll sets, or
               a thread is blocked in accept/poll/select on it (from /proc).
               For lighttpd, gunicorn, nginx and any server that never notifies.
  tcp://HOST:PORT, http://HOST:PORT/PATH
               a connection is accepted / a GET answers 2xx. Only for an address
               the child owns alone (an admin port): one of the shared sockets is
               refused, since the old child would answer for the new one.
  DURATION     (e.g. 5s) ready after a fixed delay if still running: last resort.

Example:
  handoff run -listen web=tcp://0.0.0.0:8080 -listen unix:///run/app.sock \
      -pidfile /run/app.pid -- /usr/bin/app --config /etc/app.conf
  kill -HUP $(cat /run/app.pid); handoff status -name app

Flags:
`
