// Package procfs reads other processes from Linux's /proc, without their
// help: which processes a process forked, and whether it waits for
// connections on given sockets (the wrapper's -ready accepting), and the
// CPU time and memory it uses (the scale tests' figures). On other
// systems it is empty.
package procfs
