//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/handoffd/handoff/internal/ctl"
	"golang.org/x/sys/unix"
)

// notifySocket is the NOTIFY_SOCKET the children get: a unix datagram
// socket in a private directory that receives sd_notify messages. The
// kernel attaches each sender's credentials (SO_PASSCRED), and a sender
// cannot claim another pid, so a message counts only for the child that
// sent it: the old child's READY=1 never makes a new child ready.
type notifySocket struct {
	path string
	dir  string
	conn *net.UnixConn
	log  *slog.Logger

	mu        sync.Mutex
	pids      map[int]notifyState
	readySeen bool          // some child has sent READY=1
	changes   chan struct{} // closed and replaced at every message
}

// notifyState is what one pid has said so far.
type notifyState struct {
	spoke bool // sent any message: it speaks sd_notify
	ready bool // sent READY=1
}

// listenNotify creates the socket. The caller must close it.
func listenNotify(log *slog.Logger) (*notifySocket, error) {
	dir, err := os.MkdirTemp("", "handoff-notify-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	rc, err := conn.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
		if err == nil && serr != nil {
			err = os.NewSyscallError("setsockopt(SO_PASSCRED)", serr)
		}
	}
	if err != nil {
		conn.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &notifySocket{path: path, dir: dir, conn: conn, log: log, pids: map[int]notifyState{}, changes: make(chan struct{})}, nil
}

// serve reads messages until close.
func (n *notifySocket) serve() error {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*253))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("notify socket: %w", err)
		}
		pid, ok := senderPID(oob[:noob])
		if !ok {
			n.log.Warn("ignored a notify message without credentials")
			continue
		}
		n.record(pid, buf[:nb])
	}
}

// senderPID returns the pid from the message's SCM_CREDENTIALS, and
// closes any descriptors it carried (FDSTORE=1: not supported here).
func senderPID(oob []byte) (int, bool) {
	fds, cred, _ := ctl.ParseControl(oob)
	ctl.CloseFDs(fds)
	if cred == nil {
		return 0, false
	}
	return int(cred.Pid), true
}

func (n *notifySocket) record(pid int, msg []byte) {
	n.mu.Lock()
	st := n.pids[pid]
	st.spoke = true
	for _, line := range bytes.Split(msg, []byte("\n")) {
		if string(line) == "READY=1" {
			st.ready, n.readySeen = true, true
		}
	}
	n.pids[pid] = st
	close(n.changes)
	n.changes = make(chan struct{})
	n.mu.Unlock()
	n.log.Debug("notify message", "from", pid, "message", string(bytes.ReplaceAll(msg, []byte("\n"), []byte(" "))))
}

// state is what pid has said.
func (n *notifySocket) state(pid int) notifyState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pids[pid]
}

// notifies reports whether any child has sent READY=1: the command speaks
// sd_notify, so its next children are expected to say when they are ready.
func (n *notifySocket) notifies() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.readySeen
}

// changed is closed at the next message.
func (n *notifySocket) changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changes
}

// forget drops what an exited child said, so that a new process with a
// reused pid starts from nothing.
func (n *notifySocket) forget(pid int) {
	n.mu.Lock()
	delete(n.pids, pid)
	n.mu.Unlock()
}

// close stops serve and removes the socket.
func (n *notifySocket) close() {
	n.conn.Close()
	os.RemoveAll(n.dir)
}
