//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/handoffd/handoff/handoff"
	"github.com/handoffd/handoff/internal/ctl"
	"golang.org/x/sys/unix"
)

// sharedSocket is one socket the children get: a close-on-exec duplicate
// of the Upgrader's socket. Both share one open file description, so the
// socket's flags (O_NONBLOCK) are the same for every process holding it,
// and nothing here changes them.
type sharedSocket struct {
	spec  listenSpec
	fd    int
	inode uint64
	addr  net.Addr
}

// sharedSockets owns the duplicates: close closes them.
type sharedSockets []sharedSocket

// openShared opens (or inherits) every socket through upg and duplicates
// it for the children. On error, what was duplicated is closed; the
// sockets themselves belong to upg.
func openShared(upg *handoff.Upgrader, specs []listenSpec) (sharedSockets, error) {
	var shared sharedSockets
	for _, spec := range specs {
		var (
			sc   syscall.Conn
			addr net.Addr
		)
		if spec.stream() {
			ln, err := upg.ListenNamed(spec.name, spec.network, spec.address)
			if err != nil {
				shared.close()
				return nil, err
			}
			sc, addr = ln.(syscall.Conn), ln.Addr()
		} else {
			pc, err := upg.ListenPacketNamed(spec.name, spec.network, spec.address)
			if err != nil {
				shared.close()
				return nil, err
			}
			sc, addr = pc.(syscall.Conn), pc.LocalAddr()
		}
		fd, err := ctl.DupFD(sc)
		if err != nil {
			shared.close()
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			shared.close()
			return nil, os.NewSyscallError("fstat", err)
		}
		shared = append(shared, sharedSocket{spec: spec, fd: fd, inode: st.Ino, addr: addr})
	}
	return shared, nil
}

func (s sharedSockets) close() {
	for _, sock := range s {
		unix.Close(sock.fd)
	}
}

// fds are the descriptors a child gets as 3, 4, ...
func (s sharedSockets) fds() []uintptr {
	fds := make([]uintptr, len(s))
	for i, sock := range s {
		fds[i] = uintptr(sock.fd)
	}
	return fds
}

// fdNames is LISTEN_FDNAMES: "unknown" for a socket without a name, as
// systemd does.
func (s sharedSockets) fdNames() string {
	names := make([]string, len(s))
	for i, sock := range s {
		names[i] = sock.spec.name
		if names[i] == "" {
			names[i] = "unknown"
		}
	}
	return strings.Join(names, ":")
}

// inodes identifies the sockets in /proc.
func (s sharedSockets) inodes() map[uint64]bool {
	m := make(map[uint64]bool, len(s))
	for _, sock := range s {
		m[sock.inode] = true
	}
	return m
}
