//go:build linux

package main

import "fmt"

// Under systemd (Type=notify) the wrapper is the main process for its
// whole life, and its Upgrader speaks the notify protocol: READY=1 once
// the first child is ready, RELOADING=1 and READY=1 around each reload,
// STOPPING=1 on the way out, and STATUS= lines, to which announce adds
// the child that serves.

// announce tells systemd which child serves now (STATUS=, which
// `systemctl status` shows): its number (1 for the wrapper's first child,
// one more per start) and its pid.
func (s *supervisor) announce(c *child) {
	s.upg.SetStatus(fmt.Sprintf("child %d (pid %d)", c.number, c.pid))
}
