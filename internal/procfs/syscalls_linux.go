//go:build linux

package procfs

import "golang.org/x/sys/unix"

// syscallKinds are the blocking system calls in which a thread waits for
// connections or datagrams, on every Linux architecture. (epoll_wait is
// covered by the epoll sets themselves.)
var syscallKinds = map[int64]syscallKind{
	unix.SYS_ACCEPT4:  onFD,
	unix.SYS_RECVFROM: onFD,
	unix.SYS_RECVMSG:  onFD,
	unix.SYS_PPOLL:    onPollFDs,
	unix.SYS_PSELECT6: onFDSet,
}
