//go:build linux

package procfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Accepting reports whether the process pid, or a process it forked, is
// waiting for connections on every socket in want (inode numbers). It
// reads /proc, without the child's help, so it tells the new child from
// the old one, which holds the same sockets:
//
//   - the socket is in one of the process's epoll sets, with events
//     (/proc/PID/fdinfo/N of an epoll descriptor lists its targets'
//     inodes): lighttpd, nginx, Go servers (the runtime registers a
//     listener when it is created), gunicorn's threaded workers;
//   - or a thread is blocked in accept, or in poll or select with the
//     socket among its descriptors (/proc/PID/task/TID/syscall, and the
//     descriptor sets read from the process's memory): gunicorn's sync
//     workers, servers that block in accept.
func Accepting(pid int, want map[uint64]bool) (bool, error) {
	found := map[uint64]bool{}
	for _, p := range Tree(pid) {
		if err := watchedSockets(p, want, found); err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				continue // exited meanwhile
			}
			return false, err
		}
	}
	return len(found) == len(want), nil
}

// watchedSockets adds to found the sockets of want that process pid waits on.
func watchedSockets(pid int, want, found map[uint64]bool) error {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return err
	}
	sockets := map[int]uint64{} // fd → inode, for the sockets in want
	var epolls []int
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		switch {
		case target == "anon_inode:[eventpoll]":
			epolls = append(epolls, fd)
		case strings.HasPrefix(target, "socket:["):
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err == nil && want[ino] {
				sockets[fd] = ino
			}
		}
	}
	if len(sockets) == 0 {
		return nil // holds none of them: a fork that closed them, or nothing yet
	}
	for _, ep := range epolls {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, ep))
		if err != nil {
			continue
		}
		for _, ino := range epollTargets(b) {
			if want[ino] {
				found[ino] = true
			}
		}
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, t.Name()))
		if err != nil {
			continue // exited, or no permission to look
		}
		for _, fd := range blockedOn(pid, b) {
			if ino, ok := sockets[fd]; ok {
				found[ino] = true
			}
		}
	}
	return nil
}

// epollTargets parses an epoll descriptor's fdinfo: one line per target,
// "tfd: 5 events: 19 data: ... pos:0 ino:61af sdev:8". Targets with no
// events are disabled, not watched.
func epollTargets(fdinfo []byte) []uint64 {
	var inos []uint64
	sc := bufio.NewScanner(bytes.NewReader(fdinfo))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "tfd:" {
			continue
		}
		var events, ino uint64
		hasIno := false
		for i := 1; i+1 < len(fields); i++ {
			switch fields[i] {
			case "events:":
				events, _ = strconv.ParseUint(fields[i+1], 16, 32)
			}
		}
		for _, f := range fields {
			if v, ok := strings.CutPrefix(f, "ino:"); ok {
				ino, _ = strconv.ParseUint(v, 16, 64)
				hasIno = true
			}
		}
		if hasIno && events != 0 {
			inos = append(inos, ino)
		}
	}
	return inos
}

// blockedOn returns the descriptors a thread waits on for input, from its
// /proc/PID/task/TID/syscall line ("NR arg0 arg1 ... sp pc", hexadecimal
// arguments; "running" when it is not in a system call).
func blockedOn(pid int, line []byte) []int {
	fields := strings.Fields(string(line))
	if len(fields) < 7 {
		return nil
	}
	nr, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return nil
	}
	var args [6]uint64
	for i := range args {
		args[i], _ = strconv.ParseUint(strings.TrimPrefix(fields[i+1], "0x"), 16, 64)
	}
	switch syscallKinds[nr] {
	case onFD: // accept(fd, ...), recvfrom(fd, ...)
		return []int{int(args[0])}
	case onPollFDs: // poll(fds, nfds, ...)
		return pollFDs(pid, uintptr(args[0]), int(args[1]))
	case onFDSet: // select(nfds, readfds, ...)
		return selectFDs(pid, int(args[0]), uintptr(args[1]))
	}
	return nil
}

// syscallKind says where a blocking system call keeps its descriptors.
type syscallKind int

const (
	onNothing syscallKind = iota
	onFD                  // the first argument
	onPollFDs             // an array of struct pollfd
	onFDSet               // an fd_set of readable descriptors
)

// maxWatched bounds what is read of another process's memory.
const maxWatched = 4096

// pollFDs reads the struct pollfd array of a thread blocked in poll.
func pollFDs(pid int, addr uintptr, n int) []int {
	if n <= 0 || n > maxWatched {
		return nil
	}
	b := make([]byte, 8*n) // struct pollfd { int fd; short events, revents; }
	if !readMemory(pid, addr, b) {
		return nil
	}
	var fds []int
	for i := range n {
		fd := int32(binary.NativeEndian.Uint32(b[8*i:]))
		events := binary.NativeEndian.Uint16(b[8*i+4:])
		if fd >= 0 && events&unix.POLLIN != 0 {
			fds = append(fds, int(fd))
		}
	}
	return fds
}

// selectFDs reads the readable set of a thread blocked in select.
func selectFDs(pid, nfds int, addr uintptr) []int {
	if addr == 0 || nfds <= 0 || nfds > maxWatched {
		return nil
	}
	b := make([]byte, (nfds+63)/64*8)
	if !readMemory(pid, addr, b) {
		return nil
	}
	var fds []int
	for fd := range nfds {
		if binary.NativeEndian.Uint64(b[fd/64*8:])&(1<<(fd%64)) != 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

// readMemory fills b from address addr of process pid. It needs the
// right to trace pid, which a parent has over its children.
func readMemory(pid int, addr uintptr, b []byte) bool {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: addr, Len: len(b)}}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	return err == nil && n == len(b)
}
