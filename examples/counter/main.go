// Command counter is a line-based TCP server whose sessions survive
// restarts: each connection keeps a counter, and an upgrade hands every
// open connection, with its counter and any bytes already read, to the
// successor. The client never reconnects and never notices.
//
//	counter -addr HOST:PORT -socket PATH [-pidfile PATH]
//
// The protocol, one command per line:
//
//	incr    adds one to this session's counter; answers "N PID"
//	get     answers "N PID"
//	quit    closes the session
//
// SIGHUP upgrades to a fresh copy of the binary; SIGTERM or SIGINT stops.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoffd/handoff/handoff"
	"github.com/oklog/run"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7070", "address to serve on")
	socket := flag.String("socket", "", "control socket path (default: derived from the service name)")
	pidfile := flag.String("pidfile", "", "file to keep the serving process's pid in")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := serve(log, *addr, *socket, *pidfile); err != nil {
		log.Error("counter failed", "err", err)
		os.Exit(1)
	}
}

func serve(log *slog.Logger, addr, socket, pidfile string) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	upg, err := handoff.New(context.Background(), handoff.Config{Name: "counter", Socket: socket, PIDFile: pidfile, Logger: log})
	if err != nil {
		return err
	}
	defer upg.Close()
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &server{upg: upg, log: log, pid: os.Getpid(), sessions: map[*session]struct{}{},
		handover: make(chan struct{}), predGone: make(chan struct{})}

	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	g.Add(func() error { return srv.accept(ln) }, func(error) { ln.Close() })
	g.Add(func() error { // sessions the predecessor handed over
		return srv.resume(ctx)
	}, func(error) { cancel() })
	g.Add(func() error { // ready once serving (sessions handed over are resumed at once), then upgrade on SIGHUP
		if err := upg.Ready(); err != nil {
			return err
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				if err := upg.Upgrade(ctx); err != nil {
					log.Warn("upgrade failed; still serving", "err", err)
				}
			}
		}
	}, func(error) { cancel() })
	g.Add(func() error {
		select {
		case <-upg.Exit():
			return srv.handOver()
		case sig := <-stop:
			log.Info("stopping", "signal", sig.String())
			upg.Stop()
			srv.stop()
			return nil
		case <-ctx.Done():
			return nil
		}
	}, func(error) { cancel() })
	return g.Run()
}

// server tracks the open sessions, so that it can hand them over.
type server struct {
	upg *handoff.Upgrader
	log *slog.Logger
	pid int

	mu       sync.Mutex
	sessions map[*session]struct{}
	mode     mode
	wg       sync.WaitGroup // session goroutines
	handover chan struct{}  // closed when the sessions must move
	predGone chan struct{}  // closed once the predecessor sends no more sessions
}

type mode int

const (
	serving mode = iota
	handingOver
	stopped
)

type session struct {
	conn  net.Conn
	count uint64
}

func (s *server) accept(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil // handed over or stopped
			}
			return err
		}
		s.start(&session{conn: c}, nil)
	}
}

// resume serves the sessions a predecessor handed over, until it is gone.
func (s *server) resume(ctx context.Context) error {
	for {
		c, state, err := s.upg.AcceptConn(ctx)
		if errors.Is(err, io.EOF) {
			close(s.predGone)
			<-ctx.Done()
			return nil
		}
		if err != nil {
			return nil // ctx ended
		}
		if len(state) < 8 {
			s.log.Warn("dropping a session with bad state", "len", len(state))
			c.Close()
			continue
		}
		s.start(&session{conn: c, count: binary.BigEndian.Uint64(state)}, state[8:])
	}
}

// start serves sess in its own goroutine; pending is input already read
// from the connection by the predecessor. While this process hands over,
// a session the predecessor sent only now goes straight on.
func (s *server) start(sess *session, pending []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.mode {
	case serving:
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		go s.serve(sess, pending)
	case handingOver:
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.send(sess, pending)
		}()
	case stopped:
		sess.conn.Close()
	}
}

// serve runs one session until the client quits or the session is handed
// over.
func (s *server) serve(sess *session, pending []byte) {
	defer s.wg.Done()
	in := bufio.NewReader(io.MultiReader(strings.NewReader(string(pending)), sess.conn))
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			if s.handingOver() && errors.Is(err, os.ErrDeadlineExceeded) {
				// The deadline set by handOver ended the read: pass on the
				// counter and everything read but not yet answered.
				unread := append([]byte(line), peekAll(in)...)
				s.send(sess, unread)
				return
			}
			s.finish(sess)
			return
		}
		switch strings.TrimSpace(line) {
		case "incr":
			sess.count++
			fmt.Fprintf(sess.conn, "%d %d\n", sess.count, s.pid)
		case "get":
			fmt.Fprintf(sess.conn, "%d %d\n", sess.count, s.pid)
		case "quit":
			s.finish(sess)
			return
		default:
			fmt.Fprintf(sess.conn, "error: unknown command\n")
		}
	}
}

// peekAll returns what r has buffered.
func peekAll(r *bufio.Reader) []byte {
	b, _ := r.Peek(r.Buffered())
	return b
}

// send hands sess to the successor with its state: the counter, then the
// unread input.
func (s *server) send(sess *session, unread []byte) {
	state := binary.BigEndian.AppendUint64(nil, sess.count)
	state = append(state, unread...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.upg.SendConn(ctx, sess.conn, state); err != nil {
		s.log.Warn("could not hand a session over; closing it", "err", err)
		sess.conn.Close()
	}
	s.forget(sess)
}

func (s *server) finish(sess *session) {
	sess.conn.Close()
	s.forget(sess)
}

func (s *server) forget(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

func (s *server) handingOver() bool {
	select {
	case <-s.handover:
		return true
	default:
		return false
	}
}

// handOver moves every open session to the successor: a read deadline in
// the past wakes each session's blocked read, and the session sends
// itself over from there, between two commands. Sessions the predecessor
// is still sending go straight on.
func (s *server) handOver() error {
	s.mu.Lock()
	s.mode = handingOver
	close(s.handover)
	for sess := range s.sessions {
		sess.conn.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	select {
	case <-s.predGone:
	case <-time.After(time.Minute):
		s.log.Warn("predecessor still sending sessions after a minute; exiting anyway")
	}
	s.wg.Wait()
	s.log.Info("handed every session over")
	return nil
}

// stop closes every session: a plain stop, with no successor.
func (s *server) stop() {
	s.mu.Lock()
	s.mode = stopped
	for sess := range s.sessions {
		sess.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
